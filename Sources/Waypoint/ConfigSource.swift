#if canImport(Glibc)
    import Glibc
#endif
import JSON
import WaypointCore
import WaypointConfig

/// The user's manifests: loads and compiles them, and tells when the files changed.
///
/// Change detection compares a fingerprint (inode, size, mtime of every config file, following symlinks),
/// which also catches a Kubernetes ConfigMap's atomic `..data` symlink swap, where no watched file is written.
/// Thread: main thread only. Ownership: the `Runtime`.
struct ConfigSource {
    /// nil: the embedded demo config.
    let paths: [String]?
    let namespace: String
    /// The compiler with its options (root namespace, layered authorization, locality).
    var compiler: SnapshotCompiler
    /// The Kubernetes API's objects (read at each load), when that source is on.
    var apiObjects: (() -> [JSON])?
    /// The API objects' parses, kept across loads.
    private let parsedObjects = ParsedObjects()
    /// With the API source: the last compilation, which endpoint changes update.
    private var compiled: CompiledConfig?
    /// Compilations of everything, and endpoint updates.
    private(set) var compiles = (full: 0, endpoints: 0)
    private var fingerprint: [String] = []
    private(set) var generation: UInt64 = 0

    init(paths: [String]?, namespace: String) {
        self.paths = paths
        self.namespace = namespace
        compiler = SnapshotCompiler(namespace: namespace)
    }

    /// Loads and compiles the current files. Throws every error found; nothing changes on failure. Backends
    /// whose connection-pool settings `previous` already had keep counting into the same limits.
    mutating func load(previous: Snapshot? = nil) throws(ConfigErrors) -> Snapshot {
        let clock = ContinuousClock()
        let started = clock.now
        let spec: ConfigSpec
        var endpointChanges: ConfigSpec? = nil
        if let apiObjects {
            let files = Self.fingerprint(paths ?? [])
            let filesSame = files == fingerprint
            fingerprint = files
            spec = try ManifestLoader.load(
                paths: paths ?? [], objects: apiObjects(), source: "kubernetes", defaultNamespace: namespace, cache: parsedObjects)
            endpointChanges = parsedObjects.takeEndpointChanges().flatMap { filesSame ? $0 : nil }
        } else if let paths {
            fingerprint = Self.fingerprint(paths)
            spec = try ManifestLoader.load(paths: paths, defaultNamespace: namespace)
        } else {
            spec = try ManifestLoader.load(text: DemoConfig.manifests, file: "<embedded demo config>", defaultNamespace: namespace)
        }
        generation += 1
        let parsed = clock.now
        let result: CompiledConfig
        if let compiled, let endpointChanges,
            let updated = compiler.update(compiled, spec: spec, changes: endpointChanges, generation: generation)
        {
            result = updated
            compiles.endpoints += 1
        } else {
            result = compiler.compileKeepingState(spec, generation: generation, previous: previous)
            compiles.full += 1
        }
        if apiObjects != nil { compiled = result }
        timings = (parsed - started, clock.now - parsed)
        return result.snapshot
    }

    /// How long the last load took to read and parse the manifests, and to compile them.
    private(set) var timings = (parse: Duration.zero, compile: Duration.zero)

    /// True when the files differ from what the last `load()` read.
    func changed() -> Bool {
        guard let paths else { return false }
        return Self.fingerprint(paths) != fingerprint
    }

    /// inode, size and mtime of each path (and of the entries of directories), following symlinks.
    static func fingerprint(_ paths: [String]) -> [String] {
        var result: [String] = []
        for path in paths {
            var entries = [path]
            if let names = directoryEntries(path) {
                entries += names.filter { !$0.hasPrefix(".") }.sorted().map { "\(path)/\($0)" }
            }
            for entry in entries {
                var info = stat()
                if stat(entry, &info) == 0 {
                    result.append("\(entry):\(info.st_ino):\(info.st_size):\(info.st_mtim.tv_sec).\(info.st_mtim.tv_nsec)")
                } else {
                    result.append("\(entry):missing")
                }
            }
        }
        return result
    }
}
