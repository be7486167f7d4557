import Testing
import WaypointCore

@Suite struct SpiffeIdentityTests {
    @Test(arguments: [
        ("spiffe://cluster.local/ns/default/sa/frontend", "cluster.local/ns/default/sa/frontend"),
        ("spiffe://Cluster.Local/ns/shop/sa/cart", "cluster.local/ns/shop/sa/cart"),
    ])
    func parsesIstioForm(uri: String, principal: String) {
        #expect(SpiffeIdentity(uri: uri)?.principal == principal)
    }

    @Test(arguments: [
        "https://cluster.local/ns/a/sa/b", "spiffe://cluster.local/ns/a", "spiffe://cluster.local/ns/a/sa/b/c",
        "spiffe:///ns/a/sa/b", "spiffe://cluster.local/ns//sa/b", "spiffe://cluster.local/xx/a/sa/b",
        "spiffe://cluster.local/ns/a/sa/b?x", "spiffe://cluster.local/ns/a/sa/b#f", "spiffe://cluster.local/ns/a%2F/sa/b",
    ])
    func rejectsEverythingElse(uri: String) {
        #expect(SpiffeIdentity(uri: uri) == nil)
    }

    @Test func certificateNeedsExactlyOneTrustedSpiffeID() throws {
        let domains = ["cluster.local", "old.local"]
        let good = "spiffe://cluster.local/ns/default/sa/frontend"
        #expect(
            try SpiffeIdentity.fromCertificate(uris: [good, "https://example.com"], trustDomains: domains).get().namespace == "default")
        #expect(
            try SpiffeIdentity.fromCertificate(uris: ["spiffe://old.local/ns/a/sa/b"], trustDomains: domains).get().trustDomain
                == "old.local")
        #expect(SpiffeIdentity.fromCertificate(uris: [], trustDomains: domains) == .failure(.noSpiffeID))
        #expect(SpiffeIdentity.fromCertificate(uris: [good, good], trustDomains: domains) == .failure(.severalSpiffeIDs))
        #expect(
            SpiffeIdentity.fromCertificate(uris: ["spiffe://evil.example/ns/a/sa/b"], trustDomains: domains)
                == .failure(.untrustedDomain("evil.example")))
        #expect(
            SpiffeIdentity.fromCertificate(uris: ["spiffe://cluster.local/x"], trustDomains: domains)
                == .failure(.malformed("spiffe://cluster.local/x")))
    }
}

@Suite struct ForwardedTests {
    @Test(arguments: [
        ("for=\"10.1.2.3:5555\";host=web.default.svc.cluster.local", "10.1.2.3:5555"),
        ("host=x; for=10.1.2.3", "10.1.2.3"),
        ("For=\"[fd00::1]:80\"", "[fd00::1]:80"),
        ("for=10.0.0.1, for=10.0.0.2", "10.0.0.1"),
    ])
    func takesTheFirstFor(header: String, expected: String) {
        #expect(Array(header.utf8).withUnsafeBytes { Forwarded.firstFor($0) } == expected)
    }

    @Test(arguments: ["host=web", "for=unknown", "for=_hidden", "for=", "", "proto=https"])
    func nothingUsable(header: String) {
        #expect(Array(header.utf8).withUnsafeBytes { Forwarded.firstFor($0) } == nil)
    }
}

@Suite struct InnerProtocolTests {
    @Test(arguments: [
        (String?.none, "http", InnerProtocol.http1), (nil, "http-web", .http1), (nil, "grpc-api", .http2), (nil, "http2", .http2),
        (nil, "tcp-db", .tcp), (nil, "mysql", .tcp), (nil, "web", .detect), (nil, "", .detect),
        ("http", "tcp", .http1), ("kubernetes.io/h2c", "x", .http2), ("HTTP", "x", .http1), ("TCP", "http", .tcp), ("weird", "http", .tcp),
    ])
    func followsIstioSelection(appProtocol: String?, portName: String, expected: InnerProtocol) {
        #expect(InnerProtocol(appProtocol: appProtocol, portName: portName) == expected)
    }
}

@Suite struct ProxyProtocolHeaderTests {
    static let signature: [UInt8] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A]

    static func header(command: UInt8 = 0x21, family: UInt8 = 0x11, identity: String? = "spiffe://cluster.local/ns/a/sa/b") -> [UInt8] {
        var body: [UInt8] = [10, 1, 2, 3, 10, 96, 0, 10, 0x15, 0xB3, 0, 80]
        if let identity {
            body += [0xD0, UInt8(identity.utf8.count >> 8), UInt8(identity.utf8.count & 0xFF)] + Array(identity.utf8)
        }
        return signature + [command, family, UInt8(body.count >> 8), UInt8(body.count & 0xFF)] + body
    }

    @Test func parsesAddressesAndIdentity() {
        let bytes = Self.header() + Array("GET".utf8)
        let result = bytes.withUnsafeBytes { ProxyProtocolHeader.parse($0) }
        let expected = ProxyProtocolHeader(
            sourceIP: "10.1.2.3", sourcePort: 5555, destinationIP: "10.96.0.10", destinationPort: 80,
            identity: "spiffe://cluster.local/ns/a/sa/b")
        #expect(result == .complete(expected, length: bytes.count - 3))
    }

    @Test func incompleteUntilTheWholeHeaderIsThere() {
        let bytes = Self.header()
        for cut in [0, 5, 12, 15, bytes.count - 1] {
            #expect(Array(bytes[0..<cut]).withUnsafeBytes { ProxyProtocolHeader.parse($0) } == .incomplete)
        }
    }

    @Test(arguments: [
        (Array("PROXY TCP4 1.2.3.4".utf8), "no PROXY v2 signature"),
        (header(command: 0x20), "PROXY command 0 (only PROXY is accepted)"),
        (header(command: 0x11), "PROXY protocol version 1"),
        (header(family: 0x12), "PROXY address family 0x12 (only TCP over IPv4/IPv6)"),
    ])
    func refusesWhatCannotNameADestination(bytes: [UInt8], reason: String) {
        #expect(bytes.withUnsafeBytes { ProxyProtocolHeader.parse($0) } == .invalid(reason))
    }

    @Test func truncatedTLVIsInvalid() {
        var bytes = Self.header(identity: nil)
        bytes[15] += 3
        bytes += [0xD0, 0x00, 0x09]
        #expect(bytes.withUnsafeBytes { ProxyProtocolHeader.parse($0) } == .invalid("PROXY TLV truncated"))
    }
}

@Suite struct LazyByteBufferTests {
    @Test func allocatesOnFirstWriteAndGrows() {
        let buffer = ByteBuffer(lazyCapacity: 8)
        #expect(buffer.capacity == 0)
        #expect(buffer.readable.isEmpty)
        buffer.append(Array("hello world".utf8))
        #expect(buffer.capacity >= 11)
        #expect(String(decoding: buffer.readable, as: UTF8.self) == "hello world")
        let lazy = ByteBuffer(lazyCapacity: 64)
        #expect(lazy.writableSpace().count == 64)
    }
}
