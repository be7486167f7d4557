import JSON
import WaypointCore
import YAML

/// A node of a manifest with the path that led to it, so every read can fail with an error naming the field.
/// Files give YAML; the API gives JSON, read as it came (converting it to YAML first was a fifth of the main
/// thread's time under endpoint churn).
struct ManifestNode {
    private let tree: Tree
    let path: FieldPath
    let location: Location

    private enum Tree {
        case yaml(YAMLNode)
        case json(JSONNode)
    }

    /// Which document is being read, for error messages: shared by its nodes (one reference to copy).
    final class Location {
        let file: String
        let document: Int
        let object: String?

        init(file: String, document: Int, object: String?) { (self.file, self.document, self.object) = (file, document, object) }
    }

    init(node: YAMLNode, path: FieldPath, location: Location) { (tree, self.path, self.location) = (.yaml(node), path, location) }

    init(json: JSONNode, path: FieldPath, location: Location) { (tree, self.path, self.location) = (.json(json), path, location) }

    private init(_ tree: Tree, path: FieldPath, location: Location) { (self.tree, self.path, self.location) = (tree, path, location) }

    func error(_ message: String, field: String? = nil) -> ConfigError {
        ConfigError(
            file: location.file, document: location.document, object: location.object,
            field: field ?? path.text, message: message)
    }

    /// An error about the field `key` of this node (which may be missing).
    func error(_ message: String, at key: String) -> ConfigError { error(message, field: path.key(key).text) }

    /// The same node, with errors naming the object it belongs to (`Kind namespace/name`).
    func describing(_ object: String) -> ManifestNode {
        ManifestNode(tree, path: path, location: Location(file: location.file, document: location.document, object: object))
    }

    var isMapping: Bool {
        switch tree {
        case .yaml(.mapping): return true
        case .json(let node): return node.kind == .object
        default: return false
        }
    }

    /// The value at `key` (its first entry), or nil when absent or null.
    func optional(_ key: String) throws(ConfigError) -> ManifestNode? {
        let value: Tree?
        switch tree {
        case .yaml(.mapping(let mapping)):
            value = mapping.first { entry in
                if case .scalar(let name) = entry.key { return name.text == key }
                return false
            }.map { .yaml($0.value) }
        case .json(let node) where node.kind == .object:
            value = node[key].map { .json($0) }
        default:
            throw error("expected a mapping")
        }
        guard let value else { return nil }
        switch value {
        case .yaml(.scalar(let s)) where s.isNull: return nil
        case .json(let node) where node.kind == .null: return nil
        default: return ManifestNode(value, path: path.key(key), location: location)
        }
    }

    func required(_ key: String) throws(ConfigError) -> ManifestNode {
        guard let value = try optional(key) else { throw error("required field is missing", at: key) }
        return value
    }

    /// The node as a YAML scalar would read it (a JSON string is quoted; numbers, booleans and null are plain);
    /// nil for a mapping or a list.
    private var scalar: YAMLScalar? {
        switch tree {
        case .yaml(.scalar(let s)): return s
        case .json(let node):
            switch node.kind {
            case .string: return YAMLScalar(text: node.text!, isPlain: false)
            case .number: return YAMLScalar(text: node.text!, isPlain: true)
            case .true: return YAMLScalar(text: "true", isPlain: true)
            case .false: return YAMLScalar(text: "false", isPlain: true)
            case .null: return YAMLScalar(text: "null", isPlain: true, isNull: true)
            case .key, .array, .object: return nil
            }
        default: return nil
        }
    }

    func string() throws(ConfigError) -> String {
        guard let s = scalar else { throw error("expected a string") }
        return s.text
    }

    func int(in range: ClosedRange<Int>) throws(ConfigError) -> Int {
        guard let s = scalar, s.isPlain, let value = Int(s.text) else {
            throw error("expected an integer, got \(describe())")
        }
        guard range.contains(value) else { throw error("\(value) is out of range \(range.lowerBound)...\(range.upperBound)") }
        return value
    }

    func number(in range: ClosedRange<Double>) throws(ConfigError) -> Double {
        guard let s = scalar, s.isPlain, let value = Double(s.text), value.isFinite else {
            throw error("expected a number, got \(describe())")
        }
        guard range.contains(value) else { throw error("\(value) is out of range \(range.lowerBound)...\(range.upperBound)") }
        return value
    }

    /// A mapping's entries in document order, each value named by its key in errors.
    func entries() throws(ConfigError) -> [(key: String, value: ManifestNode)] {
        var result: [(String, ManifestNode)] = []
        switch tree {
        case .yaml(.mapping(let mapping)):
            for (key, value) in mapping {
                guard case .scalar(let k) = key else { throw error("expected string keys") }
                result.append((k.text, ManifestNode(node: value, path: path.key(k.text), location: location)))
            }
        case .json(let node) where node.kind == .object:
            for (key, value) in node.entries {
                let name = key.text!
                result.append((name, ManifestNode(json: value, path: path.key(name), location: location)))
            }
        default:
            throw error("expected a mapping")
        }
        return result
    }

    func bool() throws(ConfigError) -> Bool {
        guard let s = scalar, s.isPlain else { throw error("expected true or false, got \(describe())") }
        switch s.text {
        case "true", "True", "TRUE": return true
        case "false", "False", "FALSE": return false
        default: throw error("expected true or false, got \(describe())")
        }
    }

    func array() throws(ConfigError) -> [ManifestNode] {
        switch tree {
        case .yaml(.sequence(let items)):
            return items.enumerated().map { ManifestNode(node: $1, path: path.index($0), location: location) }
        case .json(let node) where node.kind == .array:
            return node.elements.enumerated().map { ManifestNode(json: $1, path: path.index($0), location: location) }
        default:
            throw error("expected a list")
        }
    }

    /// A string-to-string mapping (labels, annotations).
    func stringMap() throws(ConfigError) -> [String: String] {
        var result: [String: String] = [:]
        for (key, value) in try entries() {
            guard let v = value.scalar else { throw error("expected string keys and values") }
            if result[key] == nil { result[key] = v.text }
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
        if let s = scalar { return "\"\(s.text)\"" }
        return isMapping ? "a mapping" : "a list"
    }
}

/// Where a node sits in its document (`spec.rules[0].matches`), kept as links and spelled out only when an error
/// names it: building the text for every field read was a sixth of the main thread's time under endpoint churn.
///
/// Thread: any (a value).
indirect enum FieldPath {
    case root
    case key(FieldPath, String)
    case index(FieldPath, Int)

    func key(_ name: String) -> FieldPath { .key(self, name) }
    func index(_ i: Int) -> FieldPath { .index(self, i) }

    /// The path as error messages give it; nil at the document's root.
    var text: String? {
        switch self {
        case .root: return nil
        case .key(let parent, let name): return parent.text.map { "\($0).\(name)" } ?? name
        case .index(let parent, let i): return "\(parent.text ?? "")[\(i)]"
        }
    }
}
