/// DNS messages (RFC 1035) as much as resolving a ServiceEntry host needs: an A or AAAA query with recursion
/// desired, and its answer's addresses (following the CNAME chain the answer carries) with the smallest TTL
/// of the records used. Answers are untrusted bytes: every length and compression pointer is checked, a
/// pointer loop or a name over 255 bytes is an error, never a crash.
public enum DNSMessage {
    public enum RecordType: UInt16, Sendable {
        case a = 1
        case aaaa = 28

        static let cname: UInt16 = 5
    }

    public struct Malformed: Error, Equatable, CustomStringConvertible {
        public let description: String

        public init(_ description: String) { self.description = description }
    }

    /// A query for `name`'s records of `type`, with id `id`; nil for a name that is not a valid DNS name.
    public static func query(id: UInt16, name: String, type: RecordType) -> [UInt8]? {
        var message: [UInt8] = [UInt8(id >> 8), UInt8(id & 0xFF), 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]
        let labels = name.lowercased().split(separator: ".", omittingEmptySubsequences: false)
        guard name.utf8.count <= 253, !labels.isEmpty else { return nil }
        for (i, label) in labels.enumerated() {
            if label.isEmpty && i == labels.count - 1 && i > 0 { break }  // a trailing dot
            guard (1...63).contains(label.utf8.count),
                label.utf8.allSatisfy({ $0 == 0x2D || $0 == 0x5F || (0x30...0x39).contains($0) || (0x61...0x7A).contains($0) })
            else { return nil }
            message.append(UInt8(label.utf8.count))
            message += label.utf8
        }
        message += [0, UInt8(type.rawValue >> 8), UInt8(type.rawValue & 0xFF), 0, 1]
        return message
    }

    /// What an answer says.
    public enum Answer: Equatable, Sendable {
        /// The name's addresses (IPv4 dotted, IPv6 text), possibly none, valid for `ttl` seconds.
        case addresses([String], ttl: UInt32)
        /// The server failed or refused (its RCODE: 2 SERVFAIL, 3 NXDOMAIN, 5 REFUSED, ...).
        case failed(rcode: UInt8)
    }

    /// Whether an answer says it was cut to fit a datagram (TC): the question is then asked again over TCP.
    public static func isTruncated(_ bytes: [UInt8]) -> Bool { bytes.count >= 3 && bytes[2] & 0x02 != 0 }

    /// A message as DNS over TCP carries it (RFC 7766): its length in two bytes, then the message.
    public static func tcpFramed(_ message: [UInt8]) -> [UInt8] { [UInt8(message.count >> 8), UInt8(message.count & 0xFF)] + message }

    /// How long a TCP-framed message is, length bytes included, once its first two bytes are in.
    public static func tcpFramedLength(_ bytes: [UInt8]) -> Int? { bytes.count >= 2 ? 2 + (Int(bytes[0]) << 8 | Int(bytes[1])) : nil }

    /// The answer to the query `id` for `name`'s `type` records. Throws when the bytes are not that answer
    /// (another id, not a response, truncated (TC), or malformed).
    public static func answer(_ bytes: [UInt8], id: UInt16, name: String, type: RecordType) throws(Malformed) -> Answer {
        guard bytes.count >= 12 else { throw Malformed("shorter than a header") }
        guard UInt16(bytes[0]) << 8 | UInt16(bytes[1]) == id else { throw Malformed("another query's id") }
        guard bytes[2] & 0x80 != 0 else { throw Malformed("not a response") }
        guard bytes[2] & 0x02 == 0 else { throw Malformed("truncated (TC)") }
        let rcode = bytes[3] & 0x0F
        let questions = Int(bytes[4]) << 8 | Int(bytes[5])
        let answers = Int(bytes[6]) << 8 | Int(bytes[7])
        var offset = 12
        for _ in 0..<questions {
            _ = try readName(bytes, &offset)
            offset += 4
            guard offset <= bytes.count else { throw Malformed("a question runs past the end") }
        }
        guard rcode == 0 else { return .failed(rcode: rcode) }
        var aliases: [String: (target: String, ttl: UInt32)] = [:]
        var records: [String: [(address: String, ttl: UInt32)]] = [:]
        for _ in 0..<answers {
            let owner = try readName(bytes, &offset)
            guard offset + 10 <= bytes.count else { throw Malformed("a record runs past the end") }
            let recordType = UInt16(bytes[offset]) << 8 | UInt16(bytes[offset + 1])
            let ttl = bytes[(offset + 4)..<(offset + 8)].reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
            let length = Int(bytes[offset + 8]) << 8 | Int(bytes[offset + 9])
            offset += 10
            guard offset + length <= bytes.count else { throw Malformed("a record's data runs past the end") }
            let data = bytes[offset..<(offset + length)]
            switch recordType {
            case type.rawValue where type == .a && length == 4:
                records[owner, default: []].append((data.map(String.init).joined(separator: "."), ttl))
            case type.rawValue where type == .aaaa && length == 16:
                records[owner, default: []].append((ipv6Text(data), ttl))
            case RecordType.cname:
                var at = offset
                aliases[owner] = (try readName(bytes, &at), ttl)
            default:
                break
            }
            offset += length
        }
        var current = name.lowercased()
        if current.hasSuffix(".") { current.removeLast() }
        var ttl = UInt32.max
        for _ in 0..<8 {
            guard let alias = aliases[current] else { break }
            ttl = min(ttl, alias.ttl)
            current = alias.target
        }
        let found = records[current] ?? []
        ttl = found.reduce(ttl) { min($0, $1.ttl) }
        return .addresses(found.map(\.address), ttl: ttl == .max ? 0 : ttl)
    }

    /// A domain name at `offset` (lower-cased, no trailing dot), following compression pointers; `offset` ends
    /// after the name as written there.
    static func readName(_ bytes: [UInt8], _ offset: inout Int) throws(Malformed) -> String {
        var labels: [String] = []
        var at = offset
        var jumped = false
        var length = 0
        for _ in 0..<128 {
            guard at < bytes.count else { throw Malformed("a name runs past the end") }
            let size = Int(bytes[at])
            switch size & 0xC0 {
            case 0xC0:
                guard at + 1 < bytes.count else { throw Malformed("a name pointer runs past the end") }
                if !jumped { offset = at + 2 }
                jumped = true
                at = (size & 0x3F) << 8 | Int(bytes[at + 1])
            case 0:
                if size == 0 {
                    if !jumped { offset = at + 1 }
                    return labels.joined(separator: ".")
                }
                guard at + 1 + size <= bytes.count else { throw Malformed("a label runs past the end") }
                length += size + 1
                guard length <= 255 else { throw Malformed("a name over 255 bytes") }
                labels.append(String(decoding: bytes[(at + 1)..<(at + 1 + size)], as: UTF8.self).lowercased())
                at += 1 + size
            default:
                throw Malformed("a label of an unknown kind")
            }
        }
        throw Malformed("a name with too many labels or a pointer loop")
    }

    /// RFC 5952 text of 16 address bytes (the longest run of zero groups as `::`).
    static func ipv6Text(_ bytes: ArraySlice<UInt8>) -> String {
        let b = Array(bytes)
        let groups = (0..<8).map { UInt16(b[2 * $0]) << 8 | UInt16(b[2 * $0 + 1]) }
        var best = (start: -1, count: 0)
        var run = (start: -1, count: 0)
        for (i, group) in groups.enumerated() {
            if group == 0 {
                run = run.start < 0 ? (i, 1) : (run.start, run.count + 1)
                if run.count > best.count { best = run }
            } else {
                run = (-1, 0)
            }
        }
        func hex(_ range: Range<Int>) -> String { groups[range].map { String($0, radix: 16) }.joined(separator: ":") }
        guard best.count >= 2 else { return hex(0..<8) }
        return hex(0..<best.start) + "::" + hex((best.start + best.count)..<8)
    }
}
