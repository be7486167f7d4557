/// Writes a `JSONDocument` value by value: what the parser does with simdjson's walk, and what a reader does to
/// keep part of a document (`copy`) with values of its own.
///
/// Thread: one at a time (a value).
public struct JSONWriter {
    private(set) var entries: [JSONDocument.Entry] = []
    private(set) var bytes: [UInt8] = []
    /// The open containers' entries, innermost last.
    private var open: [Int] = []
    /// A key the parser found twice in one object (the document is then refused).
    private(set) var repeatedKey: String?
    /// The keys of the open objects that have many, by the object's entry: each key is looked up there, as a
    /// search through all the others would make a hostile object of n keys cost n² (a JWT's claims are parsed
    /// before its signature is checked).
    private var manyKeys: [Int: Set<[UInt8]>] = [:]
    private static let fewKeys = 16

    public init() {}

    mutating func reserve(_ textSize: Int) {
        bytes.reserveCapacity(textSize)
        entries.reserveCapacity(textSize / 8)
    }

    public mutating func beginObject() { begin(.object) }
    public mutating func beginArray() { begin(.array) }

    /// Closes the innermost open object or array.
    public mutating func end() {
        let container = open.removeLast()
        entries[container].end = UInt32(entries.count)
        if !manyKeys.isEmpty { manyKeys[container] = nil }
    }

    /// The key of the object entry to come (its value is written next).
    public mutating func key(_ name: String) { text(.key, name) }

    public mutating func string(_ value: String) { text(.string, value) }

    public mutating func null() { leaf(.null) }
    public mutating func bool(_ value: Bool) { leaf(value ? .true : .false) }

    /// A number as its text (as `JSON.number` holds it).
    public mutating func number(_ text: String) { self.text(.number, text) }

    /// `node` and everything in it.
    public mutating func copy(_ node: JSONNode) {
        let source = node.document
        let first = node.index
        let last = Int(source.entries[first].end)
        counted(source.entries[first].kind)
        // A document's texts are laid out in the order of its entries, one after another: a subtree's are one
        // range, copied at once.
        var texts: Range<Int>? = nil
        for i in first..<last where source.entries[i].hasText {
            let entry = source.entries[i]
            texts = (texts?.lowerBound ?? Int(entry.start))..<Int(entry.start + entry.count)
        }
        let shift = entries.count - first
        let textShift = bytes.count - (texts?.lowerBound ?? 0)
        if let texts { bytes.append(contentsOf: source.bytes[texts]) }
        for i in first..<last {
            var entry = source.entries[i]
            entry.end = UInt32(Int(entry.end) + shift)
            if entry.hasText { entry.start = UInt32(Int(entry.start) + textShift) }
            entries.append(entry)
        }
    }

    /// `value` and everything in it.
    public mutating func write(_ value: JSON) {
        switch value {
        case .null: null()
        case .bool(let flag): bool(flag)
        case .number(let text): number(text)
        case .string(let text): string(text)
        case .array(let items):
            beginArray()
            for item in items { write(item) }
            end()
        case .object(let fields):
            beginObject()
            for (name, field) in fields {
                key(name)
                write(field)
            }
            end()
        }
    }

    /// The document written; every container must be closed.
    public func finish() -> JSONDocument {
        precondition(open.isEmpty, "a JSON document finished with a container still open")
        return JSONDocument(entries: entries, bytes: bytes)
    }

    /// A string value from the parser.
    mutating func string(_ value: UnsafeRawBufferPointer) { text(.string, value) }

    /// A key from the parser, refused when its object has it already.
    mutating func parsedKey(_ name: UnsafeRawBufferPointer) {
        if repeatedKey == nil, let object = open.last, has(key: name, in: object) {
            repeatedKey = String(decoding: name.prefix(100), as: UTF8.self)  // enough to name it in an error
        }
        text(.key, name)
    }

    /// Whether the object at entry `object` has the key `name` (and, once it has many, remembers it).
    private mutating func has(key name: UnsafeRawBufferPointer, in object: Int) -> Bool {
        let many = entries[object].count >= Self.fewKeys
        if many, let index = manyKeys.index(forKey: object) { return !manyKeys.values[index].insert(Array(name)).inserted }
        var seen = Set<[UInt8]>()
        var i = object + 1
        while i < entries.count {  // the keys written so far, each followed by its value
            let key = bytes[Int(entries[i].start)..<Int(entries[i].start + entries[i].count)]
            if many { seen.insert(Array(key)) } else if key.elementsEqual(name) { return true }
            i = Int(entries[i + 1].end)
        }
        guard many else { return false }
        manyKeys[object] = seen
        return !manyKeys[object]!.insert(Array(name)).inserted
    }

    private mutating func begin(_ kind: JSONDocument.Kind) {
        counted(kind)
        open.append(entries.count)
        entries.append(JSONDocument.Entry(kind: kind, count: 0, start: 0, end: 0))
    }

    private mutating func leaf(_ kind: JSONDocument.Kind) {
        counted(kind)
        entries.append(JSONDocument.Entry(kind: kind, count: 0, start: 0, end: UInt32(entries.count + 1)))
    }

    private mutating func text(_ kind: JSONDocument.Kind, _ value: String) {
        var value = value
        value.withUTF8 { text(kind, UnsafeRawBufferPointer($0)) }
    }

    private mutating func text(_ kind: JSONDocument.Kind, _ value: UnsafeRawBufferPointer) {
        counted(kind)
        entries.append(
            JSONDocument.Entry(kind: kind, count: UInt32(value.count), start: UInt32(bytes.count), end: UInt32(entries.count + 1)))
        bytes.append(contentsOf: value)
    }

    /// An entry of `kind` is added to the innermost container: an array counts its values, an object its keys.
    private mutating func counted(_ kind: JSONDocument.Kind) {
        guard let container = open.last, (entries[container].kind == .object) == (kind == .key) else { return }
        entries[container].count += 1
    }
}

extension JSONDocument.Entry {
    /// A string, a number or a key: bytes of the text.
    var hasText: Bool { kind == .string || kind == .number || kind == .key }
}
