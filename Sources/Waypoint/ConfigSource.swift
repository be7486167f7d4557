#if canImport(Glibc)
    import Glibc
#endif
import Kubernetes
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
    /// What changed in the Kubernetes API's objects since the last call, per kind, when that source is on.
    var apiChanges: (() -> [(kind: WatchedKind, changes: KindChanges)])?
    /// The API objects as specs, per kind.
    private var apiSpecs = APISpecs()
    /// With the API source: the files' spec as of `fingerprint` (nil: read them at the next load).
    private var fileSpec: ConfigSpec?
    /// With the API source: the last compilation, which endpoint changes update.
    private var compiled: CompiledConfig?
    /// Compilations of everything, and endpoint updates.
    private(set) var compiles = (full: 0, endpoints: 0)
    private var fingerprint: [String] = []
    private(set) var generation: UInt64 = 0
    /// The `jwksUri`s of the last loaded config's RequestAuthentications: the key sets to fetch.
    private(set) var jwksURIs: Set<String> = []
    /// The host names of the last loaded config's ServiceEntries with DNS resolution: the names to resolve.
    private(set) var dnsNames: Set<String> = []
    /// With the API source: every object read (kind, namespace, name, resourceVersion), for `/config_dump`.
    var apiObjects: [(kind: String, namespace: String, name: String, resourceVersion: String)] { apiSpecs.objects }
    /// With the API source: the Services in other namespaces that the last loaded config's routes name.
    private(set) var foreignReferences = ForeignReferences()

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
        if let apiChanges {
            compiled?.releaseSpec()
            var errors: [ConfigError] = []
            let files = Self.fingerprint(paths ?? [])
            let filesChanged = files != fingerprint || fileSpec == nil
            if filesChanged {
                fingerprint = files
                do { fileSpec = try ManifestLoader.load(paths: paths ?? [], defaultNamespace: namespace) } catch {
                    errors += error.errors
                    fileSpec = nil
                }
            }
            do {
                endpointChanges = try apiSpecs.refresh(from: apiChanges(), namespace: namespace)
            } catch {
                errors += error.errors
            }
            guard errors.isEmpty, let fileSpec else {
                compiled = nil  // what failed was taken: the next load compiles everything
                throw ConfigErrors(errors: errors)
            }
            if filesChanged { endpointChanges = nil }
            spec = apiSpecs.merged(after: fileSpec)
            foreignReferences = spec.foreignReferences(clusterDomain: compiler.clusterDomain)
        } else if let paths {
            fingerprint = Self.fingerprint(paths)
            spec = try ManifestLoader.load(paths: paths, defaultNamespace: namespace)
        } else {
            spec = try ManifestLoader.load(text: DemoConfig.manifests, file: "<embedded demo config>", defaultNamespace: namespace)
        }
        jwksURIs = Set(
            spec.requestAuthentications.flatMap(\.rules).compactMap { rule in
                if case .uri(let uri) = rule.jwks { return uri } else { return nil }
            })
        dnsNames = Set(spec.serviceEntries.flatMap(\.namesToResolve))
        generation += 1
        let parsed = clock.now
        let result: CompiledConfig
        // Taken, not copied: the update then changes the tables only it holds in place.
        if let endpointChanges, let taken = compiled.take(),
            let updated = compiler.update(taken, spec: spec, changes: endpointChanges, generation: generation)
        {
            result = updated
            compiles.endpoints += 1
        } else {
            result = compiler.compileKeepingState(spec, generation: generation, previous: previous)
            compiles.full += 1
        }
        if apiChanges != nil { compiled = result }
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

/// The Kubernetes API's objects as specs, per kind, patched with each load's changes.
private struct APISpecs {
    private var kinds: [WatchedKind: ParsedKind] = [:]

    /// Applies `changes`. Returns the changed objects (old and new versions) when only EndpointSlices and Pods
    /// changed, else nil; throws every error found in any kind (a broken object fails every load until it is
    /// fixed or deleted).
    mutating func refresh(from changes: [(kind: WatchedKind, changes: KindChanges)], namespace: String) throws(ConfigErrors)
        -> ConfigSpec?
    {
        var endpointChanges: ConfigSpec? = ConfigSpec()
        for (kind, change) in changes {
            var parsed = kinds.removeValue(forKey: kind) ?? ParsedKind(source: "kubernetes", defaultNamespace: namespace)
            switch change {
            case .all(let objects): parsed.replace(with: objects)
            case .some(let objects): parsed.apply(objects)
            }
            if let more = parsed.takeEndpointChanges(), endpointChanges != nil {
                endpointChanges?.append(more)
            } else {
                endpointChanges = nil
            }
            if !parsed.isEmpty { kinds[kind] = parsed }
        }
        let errors = ordered.flatMap(\.parsed.errors)
        if !errors.isEmpty { throw ConfigErrors(errors: errors) }
        return endpointChanges
    }

    /// `files` and then every kind's objects, in a stable order (by kind, then namespace/name).
    func merged(after files: ConfigSpec) -> ConfigSpec {
        var spec = files
        for (_, parsed) in ordered { spec.append(parsed.spec) }
        return spec
    }

    /// Every object read: kind, namespace, name and resourceVersion, in the order of `merged`.
    var objects: [(kind: String, namespace: String, name: String, resourceVersion: String)] {
        ordered.flatMap { kind, parsed in
            parsed.versions.map { key, version in
                let parts = key.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
                return (kind.kind, String(parts[0]), parts.count > 1 ? String(parts[1]) : "", version)
            }
        }
    }

    /// The kinds by path.
    private var ordered: [(kind: WatchedKind, parsed: ParsedKind)] {
        kinds.sorted { $0.key.path < $1.key.path }.map { ($0.key, $0.value) }
    }
}
