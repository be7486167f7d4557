/// Protocol Buffers' wire format, as much as the mesh's few control-plane messages need (istiod's
/// `IstioCertificateRequest`/`Response`, ext_authz's `CheckRequest`/`CheckResponse`): varints, length-delimited
/// fields, nested messages, maps. Fields are written
/// in the order given; reading skips fields it is not asked about, as protobuf's own decoders do.
public struct ProtobufWriter {
    public private(set) var bytes: [UInt8] = []

    public init() {}

    /// A `string` (or `bytes`) field; empty values are left out (proto3's default).
    public mutating func string(_ field: Int, _ value: String) {
        guard !value.isEmpty else { return }
        lengthDelimited(field, Array(value.utf8))
    }

    /// A `bytes` field; empty values are left out.
    public mutating func bytes(_ field: Int, _ value: [UInt8]) {
        guard !value.isEmpty else { return }
        lengthDelimited(field, value)
    }

    /// An `int64` field; zero is left out (proto3's default).
    public mutating func int64(_ field: Int, _ value: Int64) {
        guard value != 0 else { return }
        varint(UInt64(field) << 3)
        varint(UInt64(bitPattern: value))
    }

    /// A `uint32`/`int32` (non-negative) field; zero is left out.
    public mutating func uint32(_ field: Int, _ value: UInt32) {
        guard value != 0 else { return }
        varint(UInt64(field) << 3)
        varint(UInt64(value))
    }

    /// A nested message field (written even when empty: presence is what a message field says).
    public mutating func message(_ field: Int, _ message: ProtobufWriter) {
        lengthDelimited(field, message.bytes)
    }

    /// One entry of a `map<string, string>` field (an entry message with key 1 and value 2).
    public mutating func mapEntry(_ field: Int, key: String, value: String) {
        var entry = ProtobufWriter()
        entry.string(1, key)
        entry.string(2, value)
        message(field, entry)
    }

    private mutating func lengthDelimited(_ field: Int, _ value: [UInt8]) {
        varint(UInt64(field) << 3 | 2)
        varint(UInt64(value.count))
        bytes += value
    }

    private mutating func varint(_ value: UInt64) {
        var rest = value
        while rest >= 0x80 {
            bytes.append(UInt8(truncatingIfNeeded: rest) | 0x80)
            rest >>= 7
        }
        bytes.append(UInt8(rest))
    }
}

/// Reads a message's fields one at a time from untrusted bytes; malformed input (a truncated field, a varint
/// over 10 bytes, a length past the end, wire types 3/4/6/7) is an error, never a crash.
public struct ProtobufReader {
    /// A field's value by wire type.
    public enum Value: Equatable {
        case varint(UInt64)
        case fixed64(UInt64)
        case lengthDelimited(ArraySlice<UInt8>)
        case fixed32(UInt32)
    }

    public struct Malformed: Error, CustomStringConvertible {
        public let description: String

        public init(description: String) { self.description = description }
    }

    private let bytes: ArraySlice<UInt8>
    private var index: Int

    public init(_ bytes: ArraySlice<UInt8>) {
        self.bytes = bytes
        index = bytes.startIndex
    }

    /// The next field's number and value; nil at the end of the message.
    public mutating func next() throws(Malformed) -> (field: Int, value: Value)? {
        guard index < bytes.endIndex else { return nil }
        let key = try varint()
        let field = Int(truncatingIfNeeded: key >> 3)
        guard field > 0 && key >> 3 <= 0x1FFF_FFFF else { throw Malformed(description: "field number \(key >> 3)") }
        switch key & 7 {
        case 0: return (field, .varint(try varint()))
        case 1: return (field, .fixed64(UInt64(littleEndian: try fixed(8))))
        case 2:
            let length = try varint()
            guard length <= UInt64(bytes.endIndex - index) else { throw Malformed(description: "field \(field) runs past the end") }
            let value = bytes[index..<(index + Int(length))]
            index += Int(length)
            return (field, .lengthDelimited(value))
        case 5: return (field, .fixed32(UInt32(truncatingIfNeeded: try fixed(4))))
        default: throw Malformed(description: "field \(field) has wire type \(key & 7)")
        }
    }

    private mutating func varint() throws(Malformed) -> UInt64 {
        var value: UInt64 = 0
        for shift in stride(from: 0, to: 70, by: 7) {
            guard index < bytes.endIndex else { throw Malformed(description: "a varint runs past the end") }
            let byte = bytes[index]
            index += 1
            value |= UInt64(byte & 0x7F) << UInt64(shift)
            if byte < 0x80 { return value }
        }
        throw Malformed(description: "a varint is over 10 bytes")
    }

    private mutating func fixed(_ count: Int) throws(Malformed) -> UInt64 {
        guard bytes.endIndex - index >= count else { throw Malformed(description: "a fixed-width field runs past the end") }
        var value: UInt64 = 0
        for i in 0..<count { value |= UInt64(bytes[index + i]) << UInt64(8 * i) }
        index += count
        return value
    }
}
