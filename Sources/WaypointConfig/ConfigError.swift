/// A problem in the user's manifests, located precisely enough to fix: file, document index, object, field.
public struct ConfigError: Error, Sendable, Equatable, CustomStringConvertible {
    public var file: String
    /// 0-based index of the YAML document in the file (`---` separated); nil for whole-file problems.
    public var document: Int?
    /// `Kind namespace/name`, when known.
    public var object: String?
    /// Dotted path of the field, e.g. `spec.ports[0].port`.
    public var field: String?
    public var message: String

    public init(file: String, document: Int? = nil, object: String? = nil, field: String? = nil, message: String) {
        self.file = file
        self.document = document
        self.object = object
        self.field = field
        self.message = message
    }

    public var description: String {
        var text = file
        if let document { text += ": document \(document)" }
        if let object { text += " (\(object))" }
        if let field { text += ": \(field)" }
        return text + ": " + message
    }
}

/// Every error found in one load, so `waypoint check` can print them all at once.
public struct ConfigErrors: Error, Sendable, CustomStringConvertible {
    public var errors: [ConfigError]
    public var description: String { errors.map(\.description).joined(separator: "\n") }

    public init(errors: [ConfigError]) { self.errors = errors }
}
