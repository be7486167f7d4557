import WaypointCore
import YAML

/// A YAML node with the path that led to it, so every read can fail with an error naming the field.
struct ManifestNode {
    let node: YAMLNode
    let path: String
    let location: Location

    /// Which document is being read, for error messages.
    struct Location {
        let file: String
        let document: Int
        var object: String?
    }

    func error(_ message: String, field: String? = nil) -> ConfigError {
        ConfigError(
            file: location.file, document: location.document, object: location.object,
            field: field ?? (path.isEmpty ? nil : path), message: message)
    }

    /// The same node, with errors naming the object it belongs to (`Kind namespace/name`).
    func describing(_ object: String) -> ManifestNode {
        var location = self.location
        location.object = object
        return ManifestNode(node: node, path: path, location: location)
    }

    private func child(_ key: String) -> String { path.isEmpty ? key : "\(path).\(key)" }

    /// The value at `key` (its first entry), or nil when absent or YAML null.
    func optional(_ key: String) throws(ConfigError) -> ManifestNode? {
        guard case .mapping(let mapping) = node else { throw error("expected a mapping") }
        guard
            let value = mapping.first(where: { entry in
                if case .scalar(let name) = entry.key { return name.text == key }
                return false
            })?.value
        else { return nil }
        if case .scalar(let s) = value, s.isNull { return nil }
        return ManifestNode(node: value, path: child(key), location: location)
    }

    func required(_ key: String) throws(ConfigError) -> ManifestNode {
        guard let value = try optional(key) else { throw error("required field is missing", field: child(key)) }
        return value
    }

    func string() throws(ConfigError) -> String {
        guard case .scalar(let s) = node else { throw error("expected a string") }
        return s.text
    }

    func int(in range: ClosedRange<Int>) throws(ConfigError) -> Int {
        guard case .scalar(let s) = node, s.isPlain, let value = Int(s.text) else {
            throw error("expected an integer, got \(describe())")
        }
        guard range.contains(value) else { throw error("\(value) is out of range \(range.lowerBound)...\(range.upperBound)") }
        return value
    }

    func number(in range: ClosedRange<Double>) throws(ConfigError) -> Double {
        guard case .scalar(let s) = node, s.isPlain, let value = Double(s.text), value.isFinite else {
            throw error("expected a number, got \(describe())")
        }
        guard range.contains(value) else { throw error("\(value) is out of range \(range.lowerBound)...\(range.upperBound)") }
        return value
    }

    /// A mapping's entries in document order, each value named by its key in errors.
    func entries() throws(ConfigError) -> [(key: String, value: ManifestNode)] {
        guard case .mapping(let mapping) = node else { throw error("expected a mapping") }
        var result: [(String, ManifestNode)] = []
        for (key, value) in mapping {
            guard case .scalar(let k) = key else { throw error("expected string keys") }
            result.append((k.text, ManifestNode(node: value, path: child(k.text), location: location)))
        }
        return result
    }

    func bool() throws(ConfigError) -> Bool {
        guard case .scalar(let s) = node, s.isPlain else { throw error("expected true or false, got \(describe())") }
        switch s.text {
        case "true", "True", "TRUE": return true
        case "false", "False", "FALSE": return false
        default: throw error("expected true or false, got \(describe())")
        }
    }

    func array() throws(ConfigError) -> [ManifestNode] {
        guard case .sequence(let seq) = node else { throw error("expected a list") }
        return seq.enumerated().map { ManifestNode(node: $1, path: "\(path)[\($0)]", location: location) }
    }

    /// A string-to-string mapping (labels, annotations).
    func stringMap() throws(ConfigError) -> [String: String] {
        guard case .mapping(let mapping) = node else { throw error("expected a mapping") }
        var result: [String: String] = [:]
        for (key, value) in mapping {
            guard case .scalar(let k) = key, case .scalar(let v) = value else { throw error("expected string keys and values") }
            if result[k.text] == nil { result[k.text] = v.text }
        }
        return result
    }

    // Conveniences for optional fields.
    func optionalString(_ key: String) throws(ConfigError) -> String? { try optional(key)?.string() }

    /// A Kubernetes/Go duration (`10s`, `500ms`); an error naming the field when malformed. `zeroIsNil`:
    /// Gateway API's "0s" means no timeout; elsewhere a zero duration is invalid.
    func optionalDuration(_ key: String, zeroIsNil: Bool = false) throws(ConfigError) -> Duration? {
        guard let value = try optional(key) else { return nil }
        let text = try value.string()
        guard let parsed = GoDuration.parse(text), parsed > .zero || (zeroIsNil && parsed == .zero) else {
            throw value.error("invalid duration \"\(text)\"")
        }
        return parsed == .zero ? nil : parsed
    }
    func optionalArray(_ key: String) throws(ConfigError) -> [ManifestNode] { try optional(key)?.array() ?? [] }

    private func describe() -> String {
        switch node {
        case .scalar(let s): return "\"\(s.text)\""
        case .mapping: return "a mapping"
        case .sequence: return "a list"
        }
    }
}
