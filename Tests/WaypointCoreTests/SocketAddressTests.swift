import Testing
import WaypointCore

@Suite struct SocketAddressTests {
    /// An address is its IP's bytes and port: spellings of one IPv6 address are one address, its text is the
    /// canonical form, and the bytes are the ones the socket calls take.
    @Test func anAddressIsItsBytesAndPort() throws {
        let v4 = try #require(SocketAddress("10.0.12.7:8080"))
        #expect((v4.ip, v4.port, v4.isIPv6, v4.description) == ("10.0.12.7", 8080, false, "10.0.12.7:8080"))
        #expect(v4.withRawIP { Array($0) } == [10, 0, 12, 7])
        let v6 = try #require(SocketAddress("[fd00:0:0::0001]:443"))
        #expect(v6 == SocketAddress("[fd00::1]:443"))
        #expect(v6.hashValue == SocketAddress("[fd00::1]:443")?.hashValue)
        #expect((v6.ip, v6.description) == ("fd00::1", "[fd00::1]:443"))
        #expect(v6.withRawIP { Array($0) } == [0xfd] + Array(repeating: 0, count: 14) + [1])
        #expect(v4 != SocketAddress("10.0.12.7:8081") && v4 != SocketAddress("10.0.12.8:8080"))
        #expect(SocketAddress("[::ffff:10.0.12.7]:8080") != v4)  // a mapped IPv6 address is another family
        let copied = v4.withRawIP { SocketAddress(rawIP: $0, port: 8080) }
        #expect(copied == v4)
        for bad in ["10.0.12.7", "10.0.12:80", "10.0.12.7:+80", "10.0.12.7:65536", "fd00::1:80", "[fd00::1]80", "host:80"] {
            #expect(SocketAddress(bad) == nil, "\(bad)")
        }
        #expect(
            [0, 3, 5, 17].allSatisfy { count in
                [UInt8](repeating: 1, count: count).withUnsafeBytes { SocketAddress(rawIP: $0, port: 1) } == nil
            })
    }
}
