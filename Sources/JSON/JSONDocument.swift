#if canImport(Glibc)
    import Glibc
#endif

/// A parsed JSON text held flat: one array of entries in document order (a container before its elements, an
/// object's keys before their values) and one array of the text's bytes (strings unescaped, numbers as `JSON`
/// writes them). What the Kubernetes watch path keeps and reads: building, reading and freeing it costs a few
/// allocations per object, where the `JSON` enum made one per value (under endpoint churn, building, hashing and
/// freeing those trees was most of what a change cost the waypoint).
///
/// Thread: any (immutable). Ownership: shared by its nodes.
public final class JSONDocument: Sendable, Equatable {
    /// What an entry is.
    public enum Kind: UInt8, Sendable {
        case null, `false`, `true`, number, string, key, array, object
    }

    struct Entry {
        let kind: Kind
        /// A container's elements (an object's: its entries), or a text's bytes.
        var count: UInt32
        /// Where a text's bytes start.
        var start: UInt32
        /// The index after the entry and everything in it.
        var end: UInt32
    }

    let entries: [Entry]
    let bytes: [UInt8]

    init(entries: [Entry], bytes: [UInt8]) { (self.entries, self.bytes) = (entries, bytes) }

    /// The document's value.
    public var root: JSONNode { JSONNode(document: self, index: 0) }

    /// Parses one complete JSON text.
    public static func parse(_ bytes: UnsafeRawBufferPointer) throws(JSONError) -> JSONDocument { try JSONParser().parse(bytes) }

    public static func parse(_ text: String) throws(JSONError) -> JSONDocument {
        let result: Result<JSONDocument, JSONError> = Array(text.utf8).withUnsafeBytes { bytes in
            do throws(JSONError) { return .success(try parse(bytes)) } catch { return .failure(error) }
        }
        return try result.get()
    }

    /// The same values, keys in the same order.
    public static func == (a: JSONDocument, b: JSONDocument) -> Bool {
        guard a.entries.count == b.entries.count else { return false }
        for (x, y) in zip(a.entries, b.entries) {
            guard x.kind == y.kind, x.count == y.count, x.end == y.end else { return false }
            if x.hasText,
                !a.bytes[Int(x.start)..<Int(x.start + x.count)].elementsEqual(b.bytes[Int(y.start)..<Int(y.start + y.count)])
            {
                return false
            }
        }
        return true
    }

    /// `value` as a document.
    public convenience init(_ value: JSON) {
        var writer = JSONWriter()
        writer.write(value)
        self.init(entries: writer.entries, bytes: writer.bytes)
    }
}

/// A value in a `JSONDocument`.
///
/// Thread: any (a value).
public struct JSONNode: Sendable {
    let document: JSONDocument
    let index: Int

    private var entry: JSONDocument.Entry { document.entries[index] }

    public var kind: JSONDocument.Kind { entry.kind }

    /// A string's text (nil for anything else).
    public var string: String? { entry.kind == .string ? text : nil }

    /// A string's, a number's or a key's text (nil for anything else).
    public var text: String? {
        let entry = self.entry
        guard entry.hasText else { return nil }
        return document.bytes.withUnsafeBufferPointer { bytes in
            String(decoding: UnsafeBufferPointer(rebasing: bytes[Int(entry.start)..<Int(entry.start + entry.count)]), as: UTF8.self)
        }
    }

    /// An integer value.
    public var int: Int? { entry.kind == .number ? text.flatMap { Int($0) } : nil }

    /// How many elements an array has, or entries an object has.
    public var count: Int { Int(entry.count) }

    /// The value at `key` of an object (nil for anything else, or when absent).
    public subscript(key: String) -> JSONNode? {
        let entries = document.entries
        guard entries[index].kind == .object else { return nil }
        var key = key
        return key.withUTF8 { wanted in
            document.bytes.withUnsafeBufferPointer { bytes in
                var i = index + 1
                while i < Int(entries[index].end) {
                    if Self.equal(entries[i], wanted, in: bytes) { return JSONNode(document: document, index: i + 1) }
                    i = Int(entries[i + 1].end)
                }
                return nil
            }
        }
    }

    /// An array's elements.
    public var elements: [JSONNode] {
        guard entry.kind == .array else { return [] }
        var elements: [JSONNode] = []
        elements.reserveCapacity(count)
        var i = index + 1
        while i < Int(entry.end) {
            elements.append(JSONNode(document: document, index: i))
            i = Int(document.entries[i].end)
        }
        return elements
    }

    /// An object's entries, in order.
    public var entries: [(key: JSONNode, value: JSONNode)] {
        guard entry.kind == .object else { return [] }
        var entries: [(JSONNode, JSONNode)] = []
        entries.reserveCapacity(count)
        var i = index + 1
        while i < Int(entry.end) {
            entries.append((JSONNode(document: document, index: i), JSONNode(document: document, index: i + 1)))
            i = Int(document.entries[i + 1].end)
        }
        return entries
    }

    /// Whether this is a key (or a string) whose text is `name`.
    public func named(_ name: String) -> Bool {
        var name = name
        return name.withUTF8 { wanted in document.bytes.withUnsafeBufferPointer { Self.equal(entry, wanted, in: $0) } }
    }

    /// Whether `entry`'s text is `wanted`.
    private static func equal(_ entry: JSONDocument.Entry, _ wanted: UnsafeBufferPointer<UInt8>, in bytes: UnsafeBufferPointer<UInt8>)
        -> Bool
    {
        Int(entry.count) == wanted.count
            && (wanted.isEmpty || memcmp(bytes.baseAddress! + Int(entry.start), wanted.baseAddress!, wanted.count) == 0)
    }

    /// The value as a `JSON` enum.
    public var json: JSON {
        switch entry.kind {
        case .null: return .null
        case .false: return .bool(false)
        case .true: return .bool(true)
        case .number: return .number(text!)
        case .string, .key: return .string(text!)
        case .array: return .array(elements.map(\.json))
        case .object: return .object(entries.map { ($0.key.text!, $0.value.json) })
        }
    }

    /// Feeds the value to `hasher` unambiguously (each entry's kind and count, a text's bytes), leaving out the
    /// entry `key` of an object inside it and that key's value: equal for two values that differ only there.
    public func hash(into hasher: inout Hasher, leavingOut key: JSONNode? = nil) {
        let entries = document.entries
        let skipped = key.map { $0.index..<Int(entries[$0.index + 1].end) }
        document.bytes.withUnsafeBytes { bytes in
            var i = index
            while i < Int(entries[index].end) {
                if let skipped, i == skipped.lowerBound {
                    i = skipped.upperBound
                    continue
                }
                let entry = entries[i]
                hasher.combine(entry.kind.rawValue)
                hasher.combine(entry.count)
                if entry.hasText {
                    hasher.combine(bytes: UnsafeRawBufferPointer(rebasing: bytes[Int(entry.start)..<Int(entry.start + entry.count)]))
                }
                i += 1
            }
        }
    }

    /// The entry of key `name` of an object: the key itself (nil when absent or not an object).
    public func key(_ name: String) -> JSONNode? { self[name].map { JSONNode(document: document, index: $0.index - 1) } }
}
