import WaypointCore

/// Gateway API `RequestHeaderModifier` / `ResponseHeaderModifier`: `set` replaces a header (adding it when
/// absent), `add` appends another line, `remove` drops every line of a header; and `append` (an ext_authz answer's
/// `append: true`) joins its value to the header's first line with a comma, as Envoy's `appendCopy`, or adds it
/// when absent. Names compare case-insensitively.
///
/// Thread: any (immutable). Ownership: the config snapshot (one per rule that has the filter).
public struct HeaderModifier: Sendable, Equatable {
    /// Lower-case names with their values.
    public let set: [(name: [UInt8], value: [UInt8])]
    public let add: [(name: [UInt8], value: [UInt8])]
    public let remove: [[UInt8]]
    public let append: [(name: [UInt8], value: [UInt8])]

    public init(set: [(String, String)], add: [(String, String)], remove: [String], append: [(String, String)] = []) {
        self.set = set.map { (Array($0.0.lowercased().utf8), Array($0.1.utf8)) }
        self.add = add.map { (Array($0.0.lowercased().utf8), Array($0.1.utf8)) }
        self.remove = remove.map { Array($0.lowercased().utf8) }
        self.append = append.map { (Array($0.0.lowercased().utf8), Array($0.1.utf8)) }
    }

    private init(
        set: [(name: [UInt8], value: [UInt8])], add: [(name: [UInt8], value: [UInt8])], remove: [[UInt8]],
        append: [(name: [UInt8], value: [UInt8])]
    ) {
        self.set = set
        self.add = add
        self.remove = remove
        self.append = append
    }

    /// `first` then `then` as one modifier (a rule's filter, then its backendRef's): a later `set` of a name
    /// replaces an earlier `set` or `add` of it, and a later `remove` drops the earlier lines for it.
    public static func combining(_ first: HeaderModifier?, then: HeaderModifier?) -> HeaderModifier? {
        guard let first else { return then }
        guard let then else { return first }
        let replaced = Set(then.set.map(\.name) + then.remove)
        return HeaderModifier(
            set: first.set.filter { !replaced.contains($0.name) } + then.set,
            add: first.add.filter { !replaced.contains($0.name) } + then.add,
            remove: first.remove + then.remove,
            append: first.append.filter { !replaced.contains($0.name) } + then.append)
    }

    public static func == (a: Self, b: Self) -> Bool {
        a.set.elementsEqual(b.set, by: ==) && a.add.elementsEqual(b.add, by: ==) && a.remove == b.remove
            && a.append.elementsEqual(b.append, by: ==)
    }

    /// Whether a header line of the message is dropped: removed, or replaced by a `set`.
    @inline(__always)
    public func drops(_ name: UnsafeRawBufferPointer) -> Bool {
        remove.contains { Self.equalsLowercase(name, $0) } || set.contains { Self.equalsLowercase(name, $0.name) }
    }

    /// Whether a header line of the message is not written as it is: dropped, or written here with an `append`
    /// value joined to it (the first line of that name; `joined` marks the entries used, for `writeAdded`).
    @inline(__always)
    public func rewrites(
        _ name: UnsafeRawBufferPointer, _ value: UnsafeRawBufferPointer, joined: inout UInt64, into out: ByteBuffer
    ) -> Bool {
        if drops(name) { return true }
        guard !append.isEmpty, let i = append.firstIndex(where: { Self.equalsLowercase(name, $0.name) }), i < 64,
            joined & (1 << i) == 0
        else { return false }
        joined |= 1 << i
        out.append(name)
        out.append(": ")
        out.append(value)
        out.append(",")
        out.append(append[i].value)
        out.append("\r\n")
        return true
    }

    /// Writes the `set` and `add` lines, and the `append` ones that `joined` does not mark.
    public func writeAdded(into out: ByteBuffer, joined: UInt64 = 0) {
        for (name, value) in set { Self.writeLine(name, value, into: out) }
        for (name, value) in add { Self.writeLine(name, value, into: out) }
        for (i, (name, value)) in append.enumerated() where i >= 64 || joined & (1 << i) == 0 {
            Self.writeLine(name, value, into: out)
        }
    }

    private static func writeLine(_ name: [UInt8], _ value: [UInt8], into out: ByteBuffer) {
        out.append(name)
        out.append(": ")
        out.append(value)
        out.append("\r\n")
    }

    static func equalsLowercase(_ name: UnsafeRawBufferPointer, _ lower: [UInt8]) -> Bool {
        name.count == lower.count && zip(name, lower).allSatisfy { HTTP1Parser.lowercased($0) == $1 }
    }
}
