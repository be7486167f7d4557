#if canImport(Glibc)
    import Glibc
#endif

/// The process's environment variables (the first of a name given twice).
public func processEnvironment() -> [String: String] {
    var result: [String: String] = [:]
    var entry = environ
    while let pointer = entry.pointee {
        let text = String(cString: pointer)
        if let equals = text.firstIndex(of: "="), result[String(text[..<equals])] == nil {
            result[String(text[..<equals])] = String(text[text.index(after: equals)...])
        }
        entry += 1
    }
    return result
}

/// The CPUs this process may use: those online, fewer when a cgroup v2 quota (`cpu.max`, a container's CPU
/// limit) allows less, rounded up; at least 1.
public func availableCPUs() -> Int {
    var cpus = Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))
    if let quota = readTextFile("/sys/fs/cgroup/cpu.max")?.split(separator: " "), quota.count == 2,
        let limit = Double(quota[0]), let period = Double(quota[1].trimmingWhitespace()), period > 0
    {
        cpus = min(cpus, Int((limit / period).rounded(.up)))
    }
    return max(cpus, 1)
}

/// Caps glibc's malloc arenas at `count` (threads beyond share them). glibc gives each new thread an arena of
/// its own up to 8 per core; a thread that only parses now and then (a Kubernetes watcher) keeps its arena's
/// freed memory resident.
public func limitMallocArenas(_ count: Int) {
    _ = glibcMallopt(mallocArenaMaxParameter, Int32(count))
}

/// `M_ARENA_MAX` of glibc's `<malloc.h>`, which the Glibc module does not import.
private let mallocArenaMaxParameter: Int32 = -8

/// glibc's `int mallopt(int param, int value)` (declared in `<malloc.h>`, not in the Glibc module).
@_silgen_name("mallopt")
private func glibcMallopt(_ parameter: Int32, _ value: Int32) -> Int32

/// Gives the free memory inside malloc's arenas back to the system (glibc's `malloc_trim(0)`): after a config
/// swap freed the previous snapshot, its pages would otherwise stay resident between live allocations.
public func releaseFreeMemory() {
    _ = glibcMallocTrim(0)
}

/// glibc's `int malloc_trim(size_t pad)` (declared in `<malloc.h>`).
@_silgen_name("malloc_trim")
private func glibcMallocTrim(_ pad: Int) -> Int32
