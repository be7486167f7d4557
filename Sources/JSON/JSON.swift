internal import CSimdJSON

/// A JSON value, parsed by simdjson (Debian's libsimdjson-dev, behind the C interface of `CSimdJSON`): what the
/// Kubernetes API sends. Objects keep their keys in the order they came.
///
/// Why simdjson: it is maintained, small (a 200 KiB library), checks UTF-8, and parses a watch event about ten
/// times faster than json-c did, with no allocation per value (json-c built a hash table per object and freed it
/// at once: most of a watcher's time under endpoint churn). A watch stream is parsed one event (one line) at a
/// time and never held whole; Foundation's parser would link Foundation on this path.
/// Thread: any (a value).
public indirect enum JSON: Sendable, Equatable {
    case null
    case bool(Bool)
    /// A number as text, so that integers stay exact and the config reader decides what it needs: an integer as
    /// its digits (`80`), any other number in the shortest form that reads back as the same double (`1.5`, `-3e2`
    /// as `-300.0`).
    case number(String)
    case string(String)
    case array([JSON])
    case object([(String, JSON)])

    public static func == (a: JSON, b: JSON) -> Bool {
        switch (a, b) {
        case (.null, .null): return true
        case (.bool(let x), .bool(let y)): return x == y
        case (.number(let x), .number(let y)), (.string(let x), .string(let y)): return x == y
        case (.array(let x), .array(let y)): return x == y
        case (.object(let x), .object(let y)): return x.count == y.count && zip(x, y).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 }
        default: return false
        }
    }

    /// The value at `key` of an object (nil for anything else, or when absent).
    public subscript(key: String) -> JSON? {
        guard case .object(let entries) = self else { return nil }
        return entries.first { $0.0 == key }?.1
    }

    /// The text of a string value.
    public var string: String? {
        guard case .string(let text) = self else { return nil }
        return text
    }

    /// An integer value.
    public var int: Int? {
        guard case .number(let text) = self else { return nil }
        return Int(text)
    }

    /// Parses one complete JSON text; throws where it is malformed or incomplete.
    public static func parse(_ bytes: UnsafeRawBufferPointer) throws(JSONError) -> JSON { try JSONParser().parse(bytes) }

    public static func parse(_ text: String) throws(JSONError) -> JSON {
        let result: Result<JSON, JSONError> = Array(text.utf8).withUnsafeBytes { bytes in
            do throws(JSONError) { return .success(try parse(bytes)) } catch { return .failure(error) }
        }
        return try result.get()
    }

    /// Nesting deeper than this is refused (Kubernetes objects are far shallower; a hostile one is not).
    public static let maxDepth = 64
}

/// Parses JSON texts one after another with one simdjson parser, whose buffers are kept (a watch parses an event
/// per line). simdjson parses into its own table and then walks it here, value by value: no allocation per
/// value but ours.
///
/// Thread: one at a time. Ownership: its user (a watch, for the life of its stream).
public final class JSONParser {
    private let parser: OpaquePointer

    public init() {
        guard let parser = wp_json_parser_new(JSON.maxDepth) else { fatalError("simdjson: out of memory") }
        self.parser = parser
    }

    deinit { wp_json_parser_free(parser) }

    /// Parses one complete JSON text; throws where it is malformed or incomplete.
    public func parse(_ bytes: UnsafeRawBufferPointer) throws(JSONError) -> JSON {
        var builder = JSONBuilder()
        let failure = withUnsafeMutablePointer(to: &builder) { context in
            withUnsafePointer(to: JSONBuilder.visitor) { visitor in
                bytes.withMemoryRebound(to: CChar.self) { wp_json_parse(parser, $0.baseAddress, $0.count, visitor, context) }
            }
        }
        if let failure { throw JSONError(String(cString: failure)) }
        return builder.result
    }
}

/// Builds a `JSON` value from a simdjson walk: the open containers, innermost last. A key an object already has
/// replaces its value in place (as json-c did, and as Go's encoding/json, the API server's, keeps the last).
fileprivate struct JSONBuilder {
    /// A container being filled: an array's values, or an object's entries and the key of the value to come.
    private struct Open {
        let isObject: Bool
        var values: [JSON] = []
        var entries: [(String, JSON)] = []
        var key = ""
        /// Where the next value goes when its key was seen before in this object.
        var replacing: Int? = nil
    }
    private var open: [Open] = []
    fileprivate var result = JSON.null

    private mutating func add(_ value: JSON) {
        guard !open.isEmpty else { return result = value }
        let last = open.count - 1
        if !open[last].isObject {
            open[last].values.append(value)
        } else if let i = open[last].replacing {
            open[last].entries[i].1 = value
            open[last].replacing = nil
        } else {
            open[last].entries.append((open[last].key, value))
        }
    }

    private mutating func key(_ key: String) {
        let last = open.count - 1
        open[last].replacing = open[last].entries.firstIndex { $0.0 == key }
        open[last].key = key
    }

    private mutating func begin(object: Bool, count: Int) {
        var container = Open(isObject: object)
        if object { container.entries.reserveCapacity(count) } else { container.values.reserveCapacity(count) }
        open.append(container)
    }

    private mutating func end() {
        let container = open.removeLast()
        add(container.isObject ? .object(container.entries) : .array(container.values))
    }

    private static func text(_ bytes: UnsafePointer<CChar>?, _ length: Int) -> String {
        String(decoding: UnsafeRawBufferPointer(start: bytes, count: length), as: UTF8.self)
    }

    /// The builder is the walk's context.
    private static func on(_ context: UnsafeMutableRawPointer?, _ body: (inout JSONBuilder) -> Void) {
        body(&context!.assumingMemoryBound(to: JSONBuilder.self).pointee)
    }

    fileprivate static let visitor = wp_json_visitor(
        null_value: { context in on(context) { $0.add(.null) } },
        bool_value: { context, value in on(context) { $0.add(.bool(value)) } },
        int_value: { context, value in on(context) { $0.add(.number(String(value))) } },
        uint_value: { context, value in on(context) { $0.add(.number(String(value))) } },
        double_value: { context, value in on(context) { $0.add(.number(String(value))) } },
        string_value: { context, bytes, length in on(context) { $0.add(.string(text(bytes, length))) } },
        key: { context, bytes, length in on(context) { $0.key(text(bytes, length)) } },
        begin: { context, object, count in on(context) { $0.begin(object: object, count: count) } },
        end: { context in on(context) { $0.end() } })
}

/// Why a JSON text was refused.
public struct JSONError: Error, CustomStringConvertible, Sendable {
    public let description: String
    init(_ description: String) { self.description = description }
}
