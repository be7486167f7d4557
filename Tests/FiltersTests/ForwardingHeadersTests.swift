import Filters
import Testing
import WaypointCore

private func forward(_ request: String, client: String = "10.0.0.5") -> String {
    let bytes = Array(request.utf8)
    let out = ByteBuffer(capacity: 1024)
    bytes.withUnsafeBytes { buffer in
        var head = RequestHead()
        #expect(HTTP1Parser.parseRequest(buffer, into: &head) == .complete)
        Array(client.utf8).withUnsafeBytes { ip in
            ForwardingHeaders.writeRequest(head, buffer, clientIP: ip, proto: "http", into: out) { $0.append("generated-id") }
        }
    }
    return String(decoding: out.readable, as: UTF8.self)
}

@Suite struct ForwardingHeadersTests {
    @Test func removesHopByHopAndAddsForwardingHeaders() {
        let sent = forward(
            "GET /p?q HTTP/1.1\r\nHost: svc\r\nConnection: keep-alive, X-Secret\r\nKeep-Alive: 5\r\nTE: trailers\r\n"
                + "Upgrade: h2c\r\nProxy-Connection: x\r\nX-Secret: s\r\nX-Forwarded-Proto: https\r\nAccept: */*\r\n\r\n")
        #expect(
            sent == "GET /p?q HTTP/1.1\r\nhost: svc\r\nAccept: */*\r\nx-forwarded-for: 10.0.0.5\r\n"
                + "x-forwarded-proto: http\r\nx-request-id: generated-id\r\nx-envoy-attempt-count: 1\r\n\r\n")
    }

    @Test func appendsToAnExistingForwardedForAndKeepsRequestID() {
        let sent = forward("POST / HTTP/1.1\r\nHost: svc\r\nX-Forwarded-For: 1.2.3.4\r\nX-Request-Id: abc\r\nContent-Length: 3\r\n\r\n")
        #expect(
            sent == "POST / HTTP/1.1\r\nhost: svc\r\nX-Request-Id: abc\r\nx-forwarded-for: 1.2.3.4, 10.0.0.5\r\n"
                + "x-forwarded-proto: http\r\ncontent-length: 3\r\nx-envoy-attempt-count: 1\r\n\r\n")
    }

    /// An empty body keeps its `content-length: 0` upstream, as Envoy sends it (servers may answer a bodiless
    /// POST without one with 411).
    @Test func anEmptyBodyKeepsItsLength() {
        let sent = forward("POST /empty HTTP/1.1\r\nHost: svc\r\nContent-Length: 0\r\nX-Request-Id: r\r\n\r\n")
        #expect(
            sent == "POST /empty HTTP/1.1\r\nhost: svc\r\nContent-Length: 0\r\nX-Request-Id: r\r\nx-forwarded-for: 10.0.0.5\r\n"
                + "x-forwarded-proto: http\r\nx-envoy-attempt-count: 1\r\n\r\n")
    }

    @Test func reEmitsChunkedFramingAndDropsExpect() {
        let sent = forward("PUT / HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\nX-Request-Id: r\r\n\r\n")
        #expect(
            sent == "PUT / HTTP/1.1\r\nhost: svc\r\nX-Request-Id: r\r\nx-forwarded-for: 10.0.0.5\r\nx-forwarded-proto: http\r\n"
                + "transfer-encoding: chunked\r\nx-envoy-attempt-count: 1\r\n\r\n")
    }

    /// Istio has Envoy send the attempt count on every request; a client's own is not passed on.
    @Test func attemptCountIsOursAndLast() {
        let sent = forward("GET / HTTP/1.1\r\nHost: svc\r\nX-Envoy-Attempt-Count: 7\r\nX-Request-Id: r\r\n\r\n")
        #expect(!sent.contains("7") && sent.hasSuffix("\r\n" + ForwardingHeaders.firstAttempt.description + "\r\n"))
    }

    @Test func absoluteFormBecomesOriginFormWithHost() {
        let sent = forward("GET http://svc.ns:8080 HTTP/1.1\r\nHost: ignored\r\nX-Request-Id: r\r\n\r\n")
        #expect(sent.hasPrefix("GET / HTTP/1.1\r\nhost: svc.ns:8080\r\nX-Request-Id: r\r\n"))
    }

    /// A response without a body keeps its `content-length` (found through an HBONE node: a kept-alive `200` with
    /// `content-length: 0` went out with no framing at all, so the client waited for the close).
    @Test(arguments: [
        ("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", false, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
        ("HTTP/1.1 200 OK\r\nContent-Length: 42\r\n\r\n", true, "HTTP/1.1 200 OK\r\nContent-Length: 42\r\n\r\n"),
        ("HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n", false, "HTTP/1.1 204 No Content\r\n\r\n"),
        ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", true, "HTTP/1.1 200 OK\r\n\r\n"),
    ])
    func bodylessResponsesKeepTheirLength(text: String, requestWasHead: Bool, expected: String) {
        let out = ByteBuffer(capacity: 256)
        Array(text.utf8).withUnsafeBytes { buffer in
            var head = ResponseHead()
            #expect(HTTP1Parser.parseResponse(buffer, requestWasHead: requestWasHead, into: &head) == .complete)
            ForwardingHeaders.writeResponse(head, buffer, close: false, into: out)
        }
        #expect(String(decoding: out.readable, as: UTF8.self) == expected)
    }

    @Test func responseHeadDropsHopByHopAndSaysClose() {
        let text = "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nContent-Length: 2\r\nX-A: b\r\n\r\n"
        let out = ByteBuffer(capacity: 256)
        Array(text.utf8).withUnsafeBytes { buffer in
            var head = ResponseHead()
            #expect(HTTP1Parser.parseResponse(buffer, requestWasHead: false, into: &head) == .complete)
            ForwardingHeaders.writeResponse(head, buffer, close: true, into: out)
        }
        #expect(
            String(decoding: out.readable, as: UTF8.self) == "HTTP/1.1 200 OK\r\nX-A: b\r\ncontent-length: 2\r\nconnection: close\r\n\r\n")
    }

    @Test func localReply() {
        let out = ByteBuffer(capacity: 256)
        ForwardingHeaders.writeLocalReply(.noRoute, close: false, into: out)
        #expect(
            String(decoding: out.readable, as: UTF8.self)
                == "HTTP/1.1 404 Not Found\r\ncontent-type: text/plain\r\ncontent-length: 9\r\n\r\nno route\n")
    }
}

@Suite struct TraceparentTests {
    private func forward(_ request: String, traceparent: String) -> String {
        var head = RequestHead()
        let bytes = Array(request.utf8)
        let out = ByteBuffer(capacity: 512)
        bytes.withUnsafeBytes { raw in
            _ = HTTP1Parser.parseRequest(raw, into: &head)
            Array("10.0.0.1".utf8).withUnsafeBytes { ip in
                Array(traceparent.utf8).withUnsafeBytes { trace in
                    ForwardingHeaders.writeRequest(head, raw, clientIP: ip, proto: "http", traceparent: trace, into: out) {
                        $0.append("id")
                    }
                }
            }
        }
        return String(decoding: out.readable, as: UTF8.self)
    }

    @Test func tunnelTraceparentIsAddedWhenTheRequestHasNone() {
        let sent = forward("GET / HTTP/1.1\r\nHost: a\r\n\r\n", traceparent: "00-abc-def-00")
        #expect(sent.contains("\r\ntraceparent: 00-abc-def-00\r\n"))
    }

    @Test func requestTraceparentWins() {
        let sent = forward("GET / HTTP/1.1\r\nHost: a\r\nTraceparent: 00-mine-01\r\n\r\n", traceparent: "00-abc-def-00")
        #expect(sent.contains("Traceparent: 00-mine-01\r\n"))
        #expect(!sent.contains("00-abc-def-00"))
    }
}

@Suite struct HeaderModifierTests {
    private func forward(_ request: String, _ modifier: HeaderModifier) -> String {
        var head = RequestHead()
        let bytes = Array(request.utf8)
        let out = ByteBuffer(capacity: 512)
        bytes.withUnsafeBytes { raw in
            _ = HTTP1Parser.parseRequest(raw, into: &head)
            Array("10.0.0.1".utf8).withUnsafeBytes { ip in
                ForwardingHeaders.writeRequest(head, raw, clientIP: ip, proto: "http", modifier: modifier, into: out) { $0.append("id") }
            }
        }
        return String(decoding: out.readable, as: UTF8.self)
    }

    @Test func setReplacesAddAppendsRemoveDrops() {
        let modifier = HeaderModifier(set: [("X-Env", "prod")], add: [("x-tag", "b")], remove: ["x-debug"])
        let sent = forward("GET / HTTP/1.1\r\nHost: a\r\nx-env: dev\r\nX-ENV: qa\r\nx-tag: a\r\nX-Debug: 1\r\n\r\n", modifier)
        #expect(!sent.contains("dev") && !sent.contains("qa") && !sent.lowercased().contains("x-debug"))
        #expect(sent.contains("x-env: prod\r\n"))
        #expect(sent.contains("x-tag: a\r\n") && sent.contains("x-tag: b\r\n"))
    }

    /// An ext_authz answer's `append: true`, as Envoy 1.40 applies it: joined to the header's first line with a
    /// comma, added when the request has none.
    @Test func appendJoinsTheFirstLineOrAdds() {
        let modifier = HeaderModifier(set: [], add: [], remove: [], append: [("x-tag", "new"), ("x-user", "bob")])
        let sent = forward("GET / HTTP/1.1\r\nHost: a\r\nX-Tag: old\r\nx-tag: second\r\n\r\n", modifier)
        #expect(sent.contains("X-Tag: old,new\r\nx-tag: second\r\n") && sent.contains("x-user: bob\r\n"))
        #expect(!sent.contains("x-tag: new"))
    }

    @Test func setHostReplacesTheHostLine() {
        let sent = forward("GET / HTTP/1.1\r\nHost: a\r\n\r\n", HeaderModifier(set: [("host", "b.example")], add: [], remove: []))
        #expect(sent.contains("host: b.example\r\n") && !sent.contains("host: a\r\n"))
    }
}

@Suite struct RewriteAndRedirectTests {
    private func apply(_ modifier: PathModifier, _ path: String) -> String {
        Array(path.utf8).withUnsafeBytes { String(decoding: modifier.apply(to: $0), as: UTF8.self) }
    }

    /// Gateway API's examples for ReplacePrefixMatch.
    @Test(arguments: [
        ("/foo", "/xyz", "/foo/bar", "/xyz/bar"), ("/foo", "/xyz/", "/foo/bar", "/xyz/bar"), ("/foo", "/", "/foo/bar", "/bar"),
        ("/foo", "/xyz", "/foo", "/xyz"), ("/foo", "/", "/foo", "/"), ("/", "/api", "/x", "/api/x"),
    ])
    func replacePrefixMatch(matched: String, replacement: String, path: String, expected: String) {
        #expect(apply(.replacePrefixMatch(Array(replacement.utf8), matched: Array(matched.utf8)), path) == expected)
    }

    @Test func redirectKeepsWhatIsNotReplaced() {
        func location(_ redirect: RequestRedirect, host: String, port: UInt16?, path: String, query: String) -> String {
            Array(host.utf8).withUnsafeBytes { h in
                Array(path.utf8).withUnsafeBytes { p in
                    Array(query.utf8).withUnsafeBytes { q in
                        String(decoding: redirect.location(host: h, requestPort: port, path: p, query: q), as: UTF8.self)
                    }
                }
            }
        }
        #expect(
            location(
                RequestRedirect(scheme: "https", hostname: nil, port: nil, path: nil, statusCode: 301), host: "web", port: 8080,
                path: "/a", query: "?x=1") == "https://web/a?x=1")
        #expect(
            location(
                RequestRedirect(scheme: nil, hostname: "new.example", port: nil, path: .replaceFullPath(Array("/b".utf8)), statusCode: 302),
                host: "web", port: 8080, path: "/a", query: "") == "http://new.example:8080/b")
        #expect(
            location(
                RequestRedirect(scheme: "https", hostname: nil, port: 443, path: nil, statusCode: 302), host: "web", port: nil,
                path: "/", query: "") == "https://web/")
    }
}
