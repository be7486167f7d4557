import JSON

/// One watched kind's API objects as parsed specs, in key order, patched change by change: under churn only the
/// objects that changed are parsed again (parsing 2,000 objects costs ~500 ms, compiling their specs ~60 ms,
/// measured), and no change walks the objects it did not touch.
///
/// Thread: the one that loads the config. Ownership: its `ConfigSource`.
public struct ParsedKind {
    private struct Entry {
        /// `namespace/name`.
        let key: String
        let resourceVersion: String
        let result: Result<ConfigSpec, ConfigError>
    }
    /// By key, in byte order.
    private var entries: [Entry] = []
    /// Every object's spec in key order; rebuilt after a change.
    public private(set) var spec = ConfigSpec()
    /// Why objects could not be read; the load fails while there are any.
    public private(set) var errors: [ConfigError] = []
    /// The old and new versions of the objects changed since `takeEndpointChanges`, while all of them are
    /// EndpointSlices and Pods; nil once anything else changed.
    private var endpointChanges: ConfigSpec? = ConfigSpec()
    /// Names API objects in errors.
    private let source: String
    private let defaultNamespace: String

    public init(source: String, defaultNamespace: String) {
        self.source = source
        self.defaultNamespace = defaultNamespace
    }

    public var isEmpty: Bool { entries.isEmpty }

    /// Each object's key (`namespace/name`) and the resourceVersion read, in key order.
    public var versions: [(key: String, resourceVersion: String)] { entries.map { ($0.key, $0.resourceVersion) } }

    /// The kind now holds exactly `objects` (by key), as a list says; those whose resourceVersion is the one
    /// already read are not parsed again.
    public mutating func replace(with objects: [String: JSONDocument]) {
        var next: [Entry] = []
        next.reserveCapacity(objects.count)
        var old = entries.makeIterator()
        var current = old.next()
        for key in objects.keys.sorted(by: Self.precedes) {
            while let entry = current, Self.precedes(entry.key, key) {
                note(entry.result)  // gone
                current = old.next()
            }
            let previous = current?.key == key ? current : nil
            if previous != nil { current = old.next() }
            next.append(parse(key, objects[key]!, replacing: previous))
        }
        while let entry = current {
            note(entry.result)
            current = old.next()
        }
        entries = next
        rebuild()
    }

    /// Applies a watch's changes: each object's new version, or nil when it was deleted (by key). New versions of
    /// EndpointSlices and Pods (what churns) go into `spec` in place; anything else rebuilds it.
    public mutating func apply(_ changes: [String: JSONDocument?]) {
        var patched = errors.isEmpty
        for (key, object) in changes {
            let (i, found) = position(of: key)
            if let object {
                let entry = parse(key, object, replacing: found ? entries[i] : nil)
                if found {
                    if patched { patched = patch(i, with: entry.result) }
                    entries[i] = entry
                } else {
                    entries.insert(entry, at: i)
                    patched = false
                }
            } else if found {
                note(entries.remove(at: i).result)
                patched = false
            }
        }
        if !patched { rebuild() }
    }

    /// Puts entry `i`'s new version into `spec` in place when every entry is one EndpointSlice (or one Pod) and so
    /// is this one; false: `spec` must be rebuilt.
    private mutating func patch(_ i: Int, with result: Result<ConfigSpec, ConfigError>) -> Bool {
        guard case .success(let fragment) = result, fragment.onlyEndpoints else { return false }
        if fragment.endpointSlices.count == 1 && fragment.pods.isEmpty && spec.endpointSlices.count == entries.count {
            spec.endpointSlices[i] = fragment.endpointSlices[0]
            return true
        }
        if fragment.pods.count == 1 && fragment.endpointSlices.isEmpty && spec.pods.count == entries.count {
            spec.pods[i] = fragment.pods[0]
            return true
        }
        return false
    }

    /// What changed since the last call if only EndpointSlices and Pods did (their old and new versions), else nil.
    public mutating func takeEndpointChanges() -> ConfigSpec? {
        defer { endpointChanges = ConfigSpec() }
        return endpointChanges
    }

    /// `object` read as the entry `key`: `previous` when it has the same resourceVersion, else parsed.
    private mutating func parse(_ key: String, _ object: JSONDocument, replacing previous: Entry?) -> Entry {
        let version = object.root["metadata"]?["resourceVersion"]?.string ?? ""
        if let previous, previous.resourceVersion == version, !version.isEmpty { return previous }
        let entry = Entry(
            key: key, resourceVersion: version,
            result: ManifestLoader.load(object: object, source: source, defaultNamespace: defaultNamespace))
        note(previous?.result)
        note(entry.result)
        return entry
    }

    /// Where `key` is, or would be inserted.
    private func position(of key: String) -> (index: Int, found: Bool) {
        var low = 0
        var high = entries.count
        while low < high {
            let middle = (low + high) / 2
            if Self.precedes(entries[middle].key, key) { low = middle + 1 } else { high = middle }
        }
        return (low, low < entries.count && entries[low].key == key)
    }

    private mutating func rebuild() {
        spec = ConfigSpec()
        errors = []
        for entry in entries {
            switch entry.result {
            case .success(let fragment): spec.append(fragment)
            case .failure(let error): errors.append(error)
            }
        }
    }

    private mutating func note(_ version: Result<ConfigSpec, ConfigError>?) {
        guard let version else { return }
        guard case .success(let fragment) = version, fragment.onlyEndpoints, endpointChanges != nil else {
            endpointChanges = nil
            return
        }
        endpointChanges?.append(fragment)
    }

    /// Byte order (the same as String's for these ASCII names, without its Unicode rules: ~7 % of a compile's
    /// time under endpoint churn once went to comparing names), over the strings' contiguous bytes (the generic
    /// `lexicographicallyPrecedes` of their views was still ~2.5 %).
    private static func precedes(_ a: String, _ b: String) -> Bool {
        var (a, b) = (a, b)
        return a.withUTF8 { x in
            b.withUTF8 { y in
                for i in 0..<min(x.count, y.count) where x[i] != y[i] { return x[i] < y[i] }
                return x.count < y.count
            }
        }
    }
}
