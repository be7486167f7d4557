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
