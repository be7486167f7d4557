internal import CJSONC

/// A JSON value, parsed by json-c (a Debian `-dev` C library, as the other four are): what the Kubernetes API
/// sends. Objects keep their keys in the order they came.
///
/// Why json-c: it is small, maintained, and its tokener parses incrementally, so a watch stream is parsed one
/// event at a time and never held whole; Foundation's parser would link Foundation on this path.
/// Thread: any (a value).
public indirect enum JSON: Sendable, Equatable {
    case null
    case bool(Bool)
    /// A number as written (`80`, `1.5`), so integers stay exact and the config reader decides what it needs.
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
    public static let maxDepth: Int32 = 64

    fileprivate static func value(of object: OpaquePointer?) -> JSON {
        guard let object else { return .null }
        switch json_object_get_type(object) {
        case json_type_boolean:
            return .bool(json_object_get_boolean(object) != 0)
        case json_type_int where json_object_get_int64(object) != .max:  // .max: past Int64 (json-c saturates)
            return .number(String(json_object_get_int64(object)))
        case json_type_int, json_type_double:
            return .number(String(cString: json_object_to_json_string_ext(object, JSON_C_TO_STRING_PLAIN)))
        case json_type_string:
            let length = Int(json_object_get_string_len(object))
            let bytes = UnsafeRawBufferPointer(start: json_object_get_string(object), count: length)
            return .string(String(decoding: bytes, as: UTF8.self))
        case json_type_array:
            let count = json_object_array_length(object)
            return .array((0..<count).map { value(of: json_object_array_get_idx(object, $0)) })
        case json_type_object:
            var entries: [(String, JSON)] = []
            entries.reserveCapacity(Int(json_object_object_length(object)))
            var iterator = json_object_iter_begin(object)
            var end = json_object_iter_end(object)
            while json_object_iter_equal(&iterator, &end) == 0 {
                let name = String(cString: json_object_iter_peek_name(&iterator))
                entries.append((name, value(of: json_object_iter_peek_value(&iterator))))
                json_object_iter_next(&iterator)
            }
            return .object(entries)
        default:
            return .null
        }
    }
}

/// Parses JSON texts one after another with one json-c tokener (a watch parses an event per line: a new tokener
/// each time was 5 % of a watcher's instructions).
///
/// Thread: one at a time. Ownership: its user (a watch, for the life of its stream).
public final class JSONParser {
    private let tokener: UnsafeMutablePointer<json_tokener>

    public init() {
        guard let tokener = json_tokener_new_ex(JSON.maxDepth) else { fatalError("json-c: out of memory") }
        self.tokener = tokener
    }

    deinit { json_tokener_free(tokener) }

    /// Parses one complete JSON text; throws where it is malformed or incomplete.
    public func parse(_ bytes: UnsafeRawBufferPointer) throws(JSONError) -> JSON {
        json_tokener_reset(tokener)
        let object = bytes.withMemoryRebound(to: CChar.self) { chars in
            json_tokener_parse_ex(tokener, chars.baseAddress, Int32(clamping: chars.count))
        }
        let error = json_tokener_get_error(tokener)
        guard error == json_tokener_success else {
            let text = error == json_tokener_continue ? "incomplete JSON" : String(cString: json_tokener_error_desc(error))
            throw JSONError("\(text) at offset \(json_tokener_get_parse_end(tokener))")
        }
        defer { json_object_put(object) }
        let end = Int(json_tokener_get_parse_end(tokener))
        guard end == bytes.count || bytes[end...].allSatisfy({ $0 == 0x20 || $0 == 0x0A || $0 == 0x0D || $0 == 0x09 }) else {
            throw JSONError("unexpected bytes after the value at offset \(end)")
        }
        return JSON.value(of: object)
    }
}

/// Why a JSON text was refused.
public struct JSONError: Error, CustomStringConvertible, Sendable {
    public let description: String
    init(_ description: String) { self.description = description }
}
