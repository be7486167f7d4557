import Filters
import Testing
import WaypointCore

/// What an ext_authz check sends and what its answers mean (the wire itself is checked black-box against
/// `http.server` and `grpcio` in Tests/EndToEnd/test_ext_authz.py).
@Suite struct ExternalAuthorizerTests {
    private static func withHead<T>(_ text: String, _ body: (RequestHead, UnsafeRawBufferPointer) -> T) -> T {
        Array(text.utf8).withUnsafeBytes { bytes in
            var head = RequestHead()
            guard case .complete = HTTP1Parser.parseRequest(bytes, into: &head) else { fatalError("bad test request") }
            return body(head, bytes)
        }
    }

    private static let request =
        "POST /api/items?id=7 HTTP/1.1\r\nHost: web\r\nAuthorization: Bearer t\r\nX-Ext-Authz: allow\r\nX-Tag: a\r\nX-Tag: b\r\nContent-Length: 5\r\nCookie: c=1\r\n\r\n"

    @Test func theHTTPCheckCarriesTheHeadWithoutTheBody() {
        var settings = ExternalAuthorizer.HTTPSettings()
        settings.pathPrefix = Array("/check".utf8)
        settings.includeRequestHeaders = [HeaderNamePattern("x-ext-*"), HeaderNamePattern("content-length")]
        settings.additionalHeaders = [(Array("x-from".utf8), Array("waypoint".utf8))]
        let out = ByteBuffer(capacity: 256)
        Self.withHead(Self.request) { ExternalAuthorizer.httpCheck(settings, $0, $1, into: out) }
        #expect(
            String(decoding: out.readable, as: UTF8.self)
                == "POST /check/api/items?id=7 HTTP/1.1\r\nhost: web\r\ncontent-length: 0\r\nAuthorization: Bearer t\r\nX-Ext-Authz: allow\r\nx-from: waypoint\r\n\r\n"
        )
    }

    /// `includeRequestBodyInCheck`: the HTTP check's content-length and body, and the partial-body header.
    @Test func theHTTPCheckCanCarryTheBody() {
        let authorizer = ExternalAuthorizer(
            name: "a", api: .http(.init()), service: "authz", port: 80, timeout: nil, failOpen: false, statusOnError: nil,
            bodyInCheck: .init(maxBytes: 4, allowPartial: true, packAsBytes: false))
        let out = ByteBuffer(capacity: 256)
        Self.withHead(Self.request) { ExternalAuthorizer.httpCheck(.init(), $0, $1, into: out) }
        let check = Array(out.readable)
        #expect(
            String(decoding: authorizer.addingBody(Array("hell".utf8), partial: true, to: check), as: UTF8.self)
                == "POST /api/items?id=7 HTTP/1.1\r\nhost: web\r\ncontent-length: 4\r\nx-envoy-auth-partial-body: true\r\nAuthorization: Bearer t\r\n\r\nhell"
        )
        #expect(authorizer.addingBody([], partial: false, to: check) == check)  // nothing buffered: no header either
    }

    @Test(arguments: [
        ("x-user", "X-User", true), ("x-user", "x-users", false), ("x-*", "X-Anything", true), ("*-token", "id-token", true),
        ("*-token", "token", false), ("*", "", true),
    ])
    func headerNamePatterns(pattern: String, name: String, expected: Bool) {
        #expect(HeaderNamePattern(pattern).matches(name.lowercased()) == expected)
    }

    @Test func httpAnswers() {
        var settings = ExternalAuthorizer.HTTPSettings()
        settings.headersToUpstreamOnAllow = [HeaderNamePattern("x-user")]
        let headers = [("X-User", "alice"), ("X-Other", "1"), ("Content-Length", "3"), ("Host", "authz")]
        #expect(
            ExternalAuthorizer.outcome(settings, status: 200, headers: headers, body: [])
                == .allowed(upstream: HeaderModifier(set: [("x-user", "alice")], add: [], remove: []), downstream: nil))
        // a 5xx is a failed check (Envoy's HTTP client), not a denial
        #expect(ExternalAuthorizer.outcome(settings, status: 503, headers: headers, body: Array("x".utf8)) == .failed)
        // no valid final status: failed too, never passed on (found by the extauthz fuzz target: 806)
        #expect(ExternalAuthorizer.outcome(settings, status: 806, headers: headers, body: []) == .failed)
        #expect(ExternalAuthorizer.outcome(settings, status: 101, headers: headers, body: []) == .failed)
        // a denial passes on every header but Host and the framing ones unless the provider lists them
        #expect(
            ExternalAuthorizer.outcome(settings, status: 401, headers: headers, body: Array("no".utf8))
                == .denied(status: 401, headers: [.init("x-user", "alice"), .init("x-other", "1")], body: Array("no".utf8)))
        settings.headersToDownstreamOnDeny = [HeaderNamePattern("x-other")]
        #expect(
            ExternalAuthorizer.outcome(settings, status: 302, headers: headers, body: [])
                == .denied(status: 302, headers: [.init("x-other", "1")], body: []))
    }

    /// Envoy's `x-envoy-auth-headers-to-remove`: the listed request headers go, never a pseudo-header or Host,
    /// and the header itself is passed nowhere, even where a pattern matches it.
    @Test func anAllowingAnswerCanRemoveRequestHeaders() {
        var settings = ExternalAuthorizer.HTTPSettings()
        settings.headersToUpstreamOnAllow = [HeaderNamePattern("x-*")]
        let headers = [("X-Envoy-Auth-Headers-To-Remove", " Authorization, x-api-key ,:path,host,"), ("x-user", "bob")]
        #expect(
            ExternalAuthorizer.outcome(settings, status: 200, headers: headers, body: [])
                == .allowed(
                    upstream: HeaderModifier(set: [("x-user", "bob")], add: [], remove: ["authorization", "x-api-key"]),
                    downstream: nil))
    }

    private static func header(_ name: String, _ value: String, append: Bool? = nil) -> ProtobufWriter {
        var header = ProtobufWriter()
        header.string(1, name)
        header.string(2, value)
        var option = ProtobufWriter()
        option.message(1, header)
        if let append {
            var wrapper = ProtobufWriter()
            wrapper.int64(1, append ? 1 : 0)
            option.message(2, wrapper)
        }
        return option
    }

    private static func checkResponse(code: Int64, denied: ProtobufWriter? = nil, ok: ProtobufWriter? = nil) -> [UInt8] {
        var status = ProtobufWriter()
        status.int64(1, code)
        var response = ProtobufWriter()
        response.message(1, status)
        if let denied { response.message(2, denied) }
        if let ok { response.message(3, ok) }
        return response.bytes
    }

    @Test func grpcAnswers() throws {
        var ok = ProtobufWriter()
        ok.message(2, Self.header("X-User", "bob"))
        ok.message(2, Self.header("x-tag", "t", append: true))
        ok.string(5, "x-remove-me")
        ok.string(5, ":authority")  // Envoy ignores removing pseudo-headers and Host
        ok.message(6, Self.header("x-served-by", "authz"))
        #expect(
            try ExternalAuthorizer.outcome(checkResponse: Self.checkResponse(code: 0, ok: ok)[...])
                == .allowed(
                    upstream: HeaderModifier(set: [("x-user", "bob")], add: [], remove: ["x-remove-me"], append: [("x-tag", "t")]),
                    downstream: HeaderModifier(set: [], add: [("x-served-by", "authz")], remove: [])))
        #expect(try ExternalAuthorizer.outcome(checkResponse: Self.checkResponse(code: 0)[...]) == .allowed(upstream: nil, downstream: nil))

        var status = ProtobufWriter()
        status.int64(1, 401)
        var denied = ProtobufWriter()
        denied.message(1, status)
        denied.message(2, Self.header("WWW-Authenticate", "Bearer"))
        denied.string(3, "no token")
        #expect(
            try ExternalAuthorizer.outcome(checkResponse: Self.checkResponse(code: 7, denied: denied)[...])
                == .denied(status: 401, headers: [.init("www-authenticate", "Bearer")], body: Array("no token".utf8)))
        // a denial without an HTTP response is Envoy's 403
        #expect(
            try ExternalAuthorizer.outcome(checkResponse: Self.checkResponse(code: 16)[...]) == .denied(status: 403, headers: [], body: []))
    }

    /// The authorizer's strings never become more than one header line.
    @Test(arguments: [("x-a", "1\r\nx-injected: 1"), ("x a", "1"), ("", "1"), ("x-a", "nul\u{0}")])
    func headerInjectionIsRefused(name: String, value: String) {
        var ok = ProtobufWriter()
        ok.message(2, Self.header(name, value))
        #expect(throws: ProtobufReader.Malformed.self) {
            try ExternalAuthorizer.outcome(checkResponse: Self.checkResponse(code: 0, ok: ok)[...])
        }
    }

    @Test func truncatedAnswersAreMalformed() {
        let bytes = Self.checkResponse(code: 7)
        #expect(throws: ProtobufReader.Malformed.self) { try ExternalAuthorizer.outcome(checkResponse: bytes.dropLast()) }
    }

    /// The gRPC check's fields, read back with the codec (protobuf's own decoder reads them in the black-box test).
    @Test func theGRPCCheckDescribesTheRequest() throws {
        let attributes = ExternalAuthorizer.Attributes(
            sourceIP: "10.1.2.3", sourcePort: 5555, sourcePrincipal: "spiffe://cluster.local/ns/default/sa/frontend",
            destinationIP: "10.96.0.10", destinationPort: 80, protocolName: "HTTP/1.1", time: (1_800_000_000, 5))
        let check = Self.withHead(Self.request) { ExternalAuthorizer.grpcCheck($0, $1, attributes) }
        func fields(_ bytes: ArraySlice<UInt8>) throws -> [(Int, ProtobufReader.Value)] {
            var reader = ProtobufReader(bytes)
            var all: [(Int, ProtobufReader.Value)] = []
            while let field = try reader.next() { all.append(field) }
            return all
        }
        func message(_ bytes: ArraySlice<UInt8>, _ number: Int) throws -> ArraySlice<UInt8> {
            for (field, value) in try fields(bytes) where field == number { if case .lengthDelimited(let m) = value { return m } }
            return []
        }
        func text(_ bytes: ArraySlice<UInt8>, _ number: Int) throws -> String {
            String(decoding: try message(bytes, number), as: UTF8.self)
        }
        let context = try message(check[...], 1)
        let http = try message(try message(context, 4), 2)
        #expect(try text(http, 2) == "POST")
        #expect(try text(http, 4) == "/api/items?id=7")
        #expect(try text(http, 5) == "web")
        #expect(try text(http, 10) == "HTTP/1.1")
        #expect(try fields(http).contains { $0.0 == 9 && $0.1 == .varint(5) })  // size: the content-length
        var headers: [String: String] = [:]
        for (field, value) in try fields(http) where field == 3 {
            guard case .lengthDelimited(let entry) = value else { continue }
            headers[try text(entry, 1)] = try text(entry, 2)
        }
        #expect(headers["x-tag"] == "a,b")  // repeated headers joined, as Envoy does
        // with the body: a second `attributes.request.http` that protobuf merges into the first
        for packed in [false, true] {
            let authorizer = ExternalAuthorizer(
                name: "a", api: .grpc, service: "authz", port: 80, timeout: nil, failOpen: false, statusOnError: nil,
                bodyInCheck: .init(maxBytes: 8, allowPartial: false, packAsBytes: packed))
            let withBody = authorizer.addingBody(Array("hello".utf8), partial: false, to: check)
            #expect(withBody.starts(with: check))
            let added = try message(try message(try message(withBody[check.count...], 1), 4), 2)
            #expect(try text(added, packed ? 12 : 11) == "hello")
            #expect(try message(added, packed ? 11 : 12).isEmpty)
            let entry = try message(added, 3)
            #expect(try text(entry, 1) == "x-envoy-auth-partial-body" && text(entry, 2) == "false")
        }
        #expect(headers[":authority"] == "web" && headers[":method"] == "POST" && headers["host"] == nil)
        let source = try message(context, 1)
        #expect(try text(source, 4) == "spiffe://cluster.local/ns/default/sa/frontend")
        let socketAddress = try message(try message(source, 1), 1)
        #expect(try text(socketAddress, 2) == "10.1.2.3")
        #expect(try fields(socketAddress).contains { $0.0 == 3 && $0.1 == .varint(5555) })
    }
}
