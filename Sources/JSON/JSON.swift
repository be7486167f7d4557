internal import CSimdJSON

/// A JSON value, parsed by simdjson (Debian's libsimdjson-dev, behind the C interface of `CSimdJSON`): tokens,
/// keys, small documents read in code. (The Kubernetes watch path keeps `JSONDocument`s, held flat.) Objects keep
/// their keys in the order they came; a key repeated in one object is refused.
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

    /// Parses one complete JSON text; throws where it is malformed or incomplete, or an object repeats a key.
    public static func parse(_ bytes: UnsafeRawBufferPointer) throws(JSONError) -> JSON { try JSONParser().parse(bytes).root.json }

    public static func parse(_ text: String) throws(JSONError) -> JSON { try JSONDocument.parse(text).root.json }

    /// Nesting deeper than this is refused (Kubernetes objects are far shallower; a hostile one is not).
    public static let maxDepth = 64
}

/// Parses JSON texts one after another with one simdjson parser, whose buffers are kept (a watch parses an event
/// per line). simdjson parses into its own table and walks it here, value by value, into a `JSONDocument`.
///
/// Thread: one at a time. Ownership: its user (a watch, for the life of its stream).
public final class JSONParser {
    private let parser: OpaquePointer

    public init() {
        guard let parser = wp_json_parser_new(JSON.maxDepth) else { fatalError("simdjson: out of memory") }
        self.parser = parser
    }

    deinit { wp_json_parser_free(parser) }

    /// The longest text parsed (the API client reads at most 64 MiB per response).
    public static let maxText = 1 << 28

    /// Parses one complete JSON text; throws where it is malformed or incomplete, or an object repeats a key.
    public func parse(_ bytes: UnsafeRawBufferPointer) throws(JSONError) -> JSONDocument {
        // A document's offsets are 32-bit; a number written out may be a few times longer than it came (`1e9`).
        guard bytes.count <= Self.maxText else { throw JSONError("a JSON text over \(Self.maxText) bytes") }
        var writer = JSONWriter()
        writer.reserve(bytes.count)
        let failure = withUnsafeMutablePointer(to: &writer) { context in
            withUnsafePointer(to: JSONWriter.visitor) { visitor in
                bytes.withMemoryRebound(to: CChar.self) { wp_json_parse(parser, $0.baseAddress, $0.count, visitor, context) }
            }
        }
        if let failure { throw JSONError(String(cString: failure)) }
        if let key = writer.repeatedKey { throw JSONError("the key \"\(key)\" appears twice in one object") }
        return writer.finish()
    }
}

extension JSONWriter {
    /// The walk's callbacks: the writer is the context.
    fileprivate static let visitor = wp_json_visitor(
        null_value: { context in on(context) { $0.null() } },
        bool_value: { context, value in on(context) { $0.bool(value) } },
        int_value: { context, value in on(context) { $0.number(String(value)) } },
        uint_value: { context, value in on(context) { $0.number(String(value)) } },
        double_value: { context, value in on(context) { $0.number(String(value)) } },
        string_value: { context, bytes, length in
            on(context) { $0.string(UnsafeRawBufferPointer(start: bytes, count: length)) }
        },
        key: { context, bytes, length in on(context) { $0.parsedKey(UnsafeRawBufferPointer(start: bytes, count: length)) } },
        begin: { context, object in on(context) { object ? $0.beginObject() : $0.beginArray() } },
        end: { context in on(context) { $0.end() } })

    private static func on(_ context: UnsafeMutableRawPointer?, _ body: (inout JSONWriter) -> Void) {
        body(&context!.assumingMemoryBound(to: JSONWriter.self).pointee)
    }
}

/// Why a JSON text was refused.
public struct JSONError: Error, CustomStringConvertible, Sendable {
    public let description: String
    init(_ description: String) { self.description = description }
}
