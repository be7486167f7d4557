import Testing
import WaypointCore

/// The DNS codec against hand-built messages (a real server, `dnslib`, answers in Tests/EndToEnd/test_dns.py).
@Suite struct DNSMessageTests {
    /// DNS over TCP (RFC 7766): a two-byte length before the message; an answer with TC is asked again that way.
    @Test func tcpFramingAndTruncation() {
        let message: [UInt8] = Array(repeating: 7, count: 300)
        let framed = DNSMessage.tcpFramed(message)
        #expect(framed.prefix(2) == [1, 44] && framed.count == 302)
        #expect(DNSMessage.tcpFramedLength([1]) == nil && DNSMessage.tcpFramedLength(Array(framed.prefix(2))) == 302)
        #expect(DNSMessage.isTruncated([0, 1, 0x83]) && !DNSMessage.isTruncated([0, 1, 0x81]) && !DNSMessage.isTruncated([0, 1]))
    }

    @Test func aQueryAsksForRecursion() {
        #expect(
            DNSMessage.query(id: 0x1234, name: "API.example.com.", type: .aaaa)
                == [0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]
                + [3] + Array("api".utf8) + [7] + Array("example".utf8) + [3] + Array("com".utf8) + [0, 0, 28, 0, 1])
        #expect(DNSMessage.query(id: 1, name: "a..b", type: .a) == nil)
        #expect(DNSMessage.query(id: 1, name: "bad name", type: .a) == nil)
        #expect(DNSMessage.query(id: 1, name: String(repeating: "a", count: 64), type: .a) == nil)
    }

    /// An answer as servers write it: the question, then records whose names point back at it (compression).
    private static func answer(id: UInt16 = 7, rcode: UInt8 = 0, flags: UInt8 = 0x81, records: [[UInt8]]) -> [UInt8] {
        var message: [UInt8] = [UInt8(id >> 8), UInt8(id & 0xFF), flags, 0x80 | rcode, 0, 1, 0, UInt8(records.count), 0, 0, 0, 0]
        message += [3] + Array("api".utf8) + [7] + Array("example".utf8) + [3] + Array("com".utf8) + [0, 0, 1, 0, 1]
        for record in records { message += record }
        return message
    }

    /// A record owned by the name at `owner` (a compression pointer), of `type`, with `ttl` and `data`.
    private static func record(owner: UInt8 = 12, type: UInt16, ttl: UInt32, data: [UInt8]) -> [UInt8] {
        [0xC0, owner, UInt8(type >> 8), UInt8(type & 0xFF), 0, 1]
            + [UInt8(ttl >> 24), UInt8((ttl >> 16) & 0xFF), UInt8((ttl >> 8) & 0xFF), UInt8(ttl & 0xFF)]
            + [UInt8(data.count >> 8), UInt8(data.count & 0xFF)] + data
    }

    @Test func addressesWithTheSmallestTTL() throws {
        let bytes = Self.answer(records: [
            Self.record(type: 1, ttl: 300, data: [10, 0, 0, 1]), Self.record(type: 1, ttl: 30, data: [10, 0, 0, 2]),
        ])
        #expect(try DNSMessage.answer(bytes, id: 7, name: "api.example.com", type: .a) == .addresses(["10.0.0.1", "10.0.0.2"], ttl: 30))
    }

    @Test func theCNAMEChainIsFollowed() throws {
        // api.example.com CNAME edge.cdn.net (written in full at offset 33+12), whose A record points at that name
        let cname: [UInt8] = [4] + Array("edge".utf8) + [3] + Array("cdn".utf8) + [3] + Array("net".utf8) + [0]
        let first = Self.record(type: 5, ttl: 60, data: cname)
        let targetOffset = UInt8(12 + 21 + 12)  // header, question, the CNAME record's fixed part
        let bytes = Self.answer(records: [first, Self.record(owner: targetOffset, type: 1, ttl: 600, data: [192, 0, 2, 7])])
        #expect(try DNSMessage.answer(bytes, id: 7, name: "api.example.com", type: .a) == .addresses(["192.0.2.7"], ttl: 60))
    }

    @Test func ipv6IsWrittenShort() throws {
        let address: [UInt8] = [0x20, 0x01, 0x0D, 0xB8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]
        let bytes = Self.answer(records: [Self.record(type: 28, ttl: 5, data: address)])
        #expect(try DNSMessage.answer(bytes, id: 7, name: "api.example.com", type: .aaaa) == .addresses(["2001:db8::1"], ttl: 5))
    }

    @Test func failuresAndMismatches() throws {
        #expect(try DNSMessage.answer(Self.answer(rcode: 3, records: []), id: 7, name: "api.example.com", type: .a) == .failed(rcode: 3))
        #expect(throws: DNSMessage.Malformed.self) {
            try DNSMessage.answer(Self.answer(records: []), id: 8, name: "api.example.com", type: .a)
        }
        #expect(throws: DNSMessage.Malformed.self) {
            try DNSMessage.answer(Self.answer(flags: 0x83, records: []), id: 7, name: "api.example.com", type: .a)  // TC
        }
        #expect(throws: DNSMessage.Malformed.self) {
            try DNSMessage.answer(
                Array(Self.answer(records: [Self.record(type: 1, ttl: 1, data: [1, 2, 3, 4])]).dropLast()), id: 7,
                name: "api.example.com", type: .a)
        }
    }

    /// A name that points at itself is an error, not a loop.
    @Test func aPointerLoopIsMalformed() {
        let bytes = Self.answer(records: [[0xC0, 33] + [0, 1, 0, 1, 0, 0, 0, 1, 0, 4, 1, 2, 3, 4]])  // 33: the record itself
        #expect(throws: DNSMessage.Malformed.self) { try DNSMessage.answer(bytes, id: 7, name: "api.example.com", type: .a) }
    }
}
