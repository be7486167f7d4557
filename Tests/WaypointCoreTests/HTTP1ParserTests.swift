import Testing
import WaypointCore

/// Parses `text` as a request head (the whole text must be one head).
private func parse(_ text: String) -> (HTTP1Parser.Outcome, RequestHead, [UInt8]) {
    let bytes = Array(text.utf8)
    var head = RequestHead()
    let outcome = bytes.withUnsafeBytes { buffer -> HTTP1Parser.Outcome in
        var scanned = 0
        guard let length = HTTP1Parser.findHeadEnd(buffer, scanned: &scanned) else { return .failed(HTTP1Error(status: 0, "incomplete")) }
        return HTTP1Parser.parseRequest(UnsafeRawBufferPointer(rebasing: buffer[0..<length]), into: &head)
    }
    return (outcome, head, bytes)
}

private func string(_ range: ByteRange, _ bytes: [UInt8]) -> String {
    bytes.withUnsafeBytes { range.string(in: $0) }
}

@Suite struct HTTP1ParserTests {
    @Test func parsesASimpleGet() {
        let (outcome, head, bytes) = parse("GET /a/b?x=1 HTTP/1.1\r\nHost: Example.com\r\nX-A:  v  \r\n\r\n")
        #expect(outcome == .complete)
        #expect(string(head.method, bytes) == "GET")
        #expect(string(head.target, bytes) == "/a/b?x=1")
        #expect(string(head.path, bytes) == "/a/b")
        #expect(string(head.host, bytes) == "Example.com")
        #expect(head.headers.count == 2)
        #expect(string(head.headers[1].value, bytes) == "v")
        #expect(head.framing == .none)
        #expect(head.keepAlive)
    }

    @Test func bareLineFeedsAreAccepted() {
        let (outcome, head, _) = parse("GET / HTTP/1.1\nHost: a\n\n")
        #expect(outcome == .complete)
        #expect(head.headers.count == 1)
    }

    @Test func absoluteFormTargetOverridesHost() {
        let (outcome, head, bytes) = parse("GET http://svc.ns:8080/p?q HTTP/1.1\r\nHost: other\r\n\r\n")
        #expect(outcome == .complete)
        #expect(string(head.host, bytes) == "svc.ns:8080")
        #expect(string(head.target, bytes) == "/p?q")
        #expect(string(head.path, bytes) == "/p")
    }

    @Test func absoluteFormWithoutPathDefaultsToSlash() {
        let (outcome, head, bytes) = parse("GET http://svc HTTP/1.1\r\nHost: svc\r\n\r\n")
        #expect(outcome == .complete)
        #expect(head.defaultedPath)
        #expect(string(head.target, bytes) == "")
    }

    @Test(arguments: [
        ("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n", BodyFraming.contentLength(5)),
        ("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n", .none),
        ("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 7, 7\r\n\r\n", .contentLength(7)),
        ("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 7\r\nContent-Length: 7\r\n\r\n", .contentLength(7)),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n", .chunked),
    ])
    func framing(_ text: String, _ expected: BodyFraming) {
        let (outcome, head, _) = parse(text)
        #expect(outcome == .complete)
        #expect(head.framing == expected)
    }

    @Test(arguments: [
        ("GET / HTTP/1.0\r\n\r\n", false),
        ("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", true),
        ("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", false),
        ("GET / HTTP/1.1\r\nHost: a\r\nConnection: Keep-Alive, Upgrade\r\n\r\n", true),
    ])
    func keepAlive(_ text: String, _ expected: Bool) {
        let (outcome, head, _) = parse(text)
        #expect(outcome == .complete)
        #expect(head.keepAlive == expected)
    }

    @Test func expectContinue() {
        let (outcome, head, _) = parse("PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\n")
        #expect(outcome == .complete)
        #expect(head.expectsContinue)
    }

    /// Every malformed or smuggling-prone head, with the exact status it must get.
    @Test(arguments: [
        ("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", 400),  // CL + TE
        ("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", 400),  // differing CL
        ("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x10\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nHost: a\r\nX-Folded: a\r\n  b\r\n\r\n", 400),  // obs-fold
        ("GET / HTTP/1.1\r\nHost: a\r\nBad Name: v\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nHost: a\r\nName : v\r\n\r\n", 400),  // whitespace before colon
        ("GET / HTTP/1.1\r\nHost: a\r\n: v\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nHost: a\r\nX: a\u{01}b\r\n\r\n", 400),  // control character
        ("GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n", 400),  // bare CR
        ("GET / HTTP/1.1\r\nHost: a\r\nX: a\u{7f}\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\n\r\n", 400),  // missing Host
        ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        ("GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        ("GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        ("G(T / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        ("GET / HTTX/1.1\r\nHost: a\r\n\r\n", 400),
        ("GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
        ("GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
        ("GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 501),
        ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nHost: a\r\nExpect: something\r\n\r\n", 417),
        ("CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", 405),
        ("GET nothttp HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ])
    func rejects(_ text: String, _ status: Int) {
        let (outcome, _, _) = parse(text)
        guard case .failed(let error) = outcome else {
            Issue.record("accepted: \(text.debugDescription)")
            return
        }
        #expect(error.status == status, "\(text.debugDescription): \(error.reason)")
    }

    @Test func tooManyHeadersIs431() {
        let text = "GET / HTTP/1.1\r\nHost: a\r\n" + String(repeating: "X: y\r\n", count: HTTP1Parser.maxHeaderCount) + "\r\n"
        let (outcome, _, _) = parse(text)
        #expect(outcome == .failed(HTTP1Error(status: 431, "too many header fields")))
    }

    @Test func findHeadEndResumesWhereItStopped() {
        let bytes = Array("GET / HTTP/1.1\r\nHost: a\r\n\r\nBODY".utf8)
        var scanned = 0
        bytes.withUnsafeBytes { all in
            for cut in 1..<26 {
                #expect(HTTP1Parser.findHeadEnd(UnsafeRawBufferPointer(rebasing: all[0..<cut]), scanned: &scanned) == nil)
                #expect(scanned <= cut)
            }
            #expect(HTTP1Parser.findHeadEnd(all, scanned: &scanned) == 27)
        }
    }

    @Test(arguments: [
        ("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", false, BodyFraming.contentLength(3), true),
        ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", false, .chunked, true),
        ("HTTP/1.1 200 OK\r\n\r\n", false, .untilClose, false),
        ("HTTP/1.1 204 No Content\r\n\r\n", false, .none, true),
        ("HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n", false, .none, true),
        ("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", true, .none, true),
        ("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false, .contentLength(1), false),
        ("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n\r\n", false, .contentLength(1), false),
    ])
    func responseFraming(_ text: String, _ head: Bool, _ framing: BodyFraming, _ keepAlive: Bool) {
        var response = ResponseHead()
        let outcome = Array(text.utf8).withUnsafeBytes { HTTP1Parser.parseResponse($0, requestWasHead: head, into: &response) }
        #expect(outcome == .complete)
        #expect(response.framing == framing)
        #expect(response.keepAlive == keepAlive)
    }

    @Test(arguments: [
        "HTTP/1.1 20 OK\r\n\r\n",
        "HTTP/1.1 abc OK\r\n\r\n",
        "HTTX/1.1 200 OK\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        "HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
    ])
    func malformedResponsesAre502(_ text: String) {
        var response = ResponseHead()
        let outcome = Array(text.utf8).withUnsafeBytes { HTTP1Parser.parseResponse($0, requestWasHead: false, into: &response) }
        guard case .failed(let error) = outcome else { Issue.record("accepted \(text.debugDescription)"); return }
        #expect(error.status == 502)
    }
}
