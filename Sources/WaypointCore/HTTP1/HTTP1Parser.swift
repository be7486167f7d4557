#if canImport(Glibc)
    import Glibc
#endif

/// The HTTP/1.1 message-head parser (RFC 9112), strict where leniency has enabled request smuggling.
///
/// Two steps: `findHeadEnd` scans only the bytes not seen before for the blank line ending the head (so a
/// slowly trickled head costs linear time), then `parseRequest`/`parseResponse` validate the whole head in one
/// pass and record ranges. Pure functions over bytes; no allocation once the head's header array has capacity.
public enum HTTP1Parser {
    /// Result of one parse attempt.
    public enum Outcome: Equatable {
        case complete
        case failed(HTTP1Error)
    }

    /// Most header lines accepted in one head: beyond it the answer is 431 like an oversized head.
    public static let maxHeaderCount = 128

    /// Finds the end of the head (after "\r\n\r\n" or "\n\n"), scanning from `scanned`. Returns the head's length,
    /// or nil with `scanned` advanced so the next call resumes there.
    public static func findHeadEnd(_ bytes: UnsafeRawBufferPointer, scanned: inout Int) -> Int? {
        guard let base = bytes.baseAddress else { return nil }
        var i = max(scanned, 0)
        let n = bytes.count
        while i < n {
            // memchr: the head is mostly header text, so jump from line feed to line feed.
            guard let hit = memchr(base + i, 0x0A, n - i) else { i = n; break }
            i = base.distance(to: UnsafeRawPointer(hit))
            // "\n\n" or "\n\r\n" ends the head.
            if i + 1 < n && bytes[i + 1] == 0x0A { return i + 2 }
            if i + 2 < n && bytes[i + 1] == 0x0D && bytes[i + 2] == 0x0A { return i + 3 }
            if i + 2 >= n { break }  // not enough bytes to decide: resume at this LF
            i += 1
        }
        scanned = i
        return nil
    }

    // MARK: - Requests

    /// Validates a complete request head (`bytes` is exactly the head, as found by `findHeadEnd`).
    public static func parseRequest(_ bytes: UnsafeRawBufferPointer, into head: inout RequestHead) -> Outcome {
        head.headers.removeAll(keepingCapacity: true)
        head.upgrade = .empty
        head.host = .empty
        head.framing = .none
        head.expectsContinue = false
        head.defaultedPath = false
        head.length = bytes.count
        var cursor = Cursor(bytes: bytes)

        // request-line = method SP request-target SP HTTP-version
        let methodStart = cursor.position
        while let b = cursor.peek(), isTokenChar(b) { cursor.advance() }
        guard cursor.position > methodStart, cursor.peek() == 0x20 else { return .failed(.bad("malformed request line")) }
        head.method = ByteRange(start: methodStart, count: cursor.position - methodStart)
        cursor.advance()
        let targetStart = cursor.position
        while let b = cursor.peek(), b > 0x20 && b < 0x7F { cursor.advance() }
        guard cursor.position > targetStart, cursor.peek() == 0x20 else { return .failed(.bad("malformed request target")) }
        let targetEnd = cursor.position
        cursor.advance()
        guard let minor = cursor.version() else {
            return .failed(cursor.sawHTTPVersion ? HTTP1Error(status: 505, "unsupported HTTP version") : .bad("malformed HTTP version"))
        }
        guard cursor.lineEnd() else { return .failed(.bad("malformed request line")) }
        head.isHTTP10 = minor == 0
        head.keepAlive = minor == 1
        let method = head.method.bytes(in: bytes)
        head.isHeadMethod = equals(method, "HEAD")
        if let failure = splitTarget(bytes, targetStart, targetEnd, isConnect: equals(method, "CONNECT"), into: &head) {
            return .failed(failure)
        }
        let absoluteHost = head.host

        var sawHost = false
        var contentLength: Int? = nil
        var sawTransferEncoding = false
        var chunked = false
        var connectionClose = false
        var connectionKeepAlive = false
        var connectionUpgrade = false
        var upgrade: ByteRange? = nil

        while true {
            switch cursor.headerLine() {
            case .end: break
            case .failed(let error): return .failed(error)
            case .field(let field):
                guard head.headers.count < maxHeaderCount else { return .failed(HTTP1Error(status: 431, "too many header fields")) }
                head.headers.append(field)
                let name = field.name.bytes(in: bytes)
                let value = field.value.bytes(in: bytes)
                switch name.count {
                case 4 where equalsLowercase(name, "host"):
                    if sawHost { return .failed(.bad("duplicate host header")) }
                    sawHost = true
                    if absoluteHost.isEmpty { head.host = field.value }
                case 6 where equalsLowercase(name, "expect"):
                    guard equalsLowercase(value, "100-continue") else { return .failed(HTTP1Error(status: 417, "unsupported expectation")) }
                    head.expectsContinue = true
                case 10 where equalsLowercase(name, "connection"):
                    forEachToken(value) { token in
                        if equalsLowercase(token, "close") { connectionClose = true }
                        if equalsLowercase(token, "keep-alive") { connectionKeepAlive = true }
                        if equalsLowercase(token, "upgrade") { connectionUpgrade = true }
                    }
                case 7 where equalsLowercase(name, "upgrade"):
                    // Several Upgrade lines would be one list; a switch is only offered for exactly one.
                    upgrade = upgrade == nil && !value.isEmpty ? field.value : .empty
                case 14 where equalsLowercase(name, "content-length"):
                    guard let length = parseContentLength(value) else { return .failed(.bad("invalid content-length")) }
                    if let earlier = contentLength, earlier != length { return .failed(.bad("conflicting content-length headers")) }
                    contentLength = length
                case 17 where equalsLowercase(name, "transfer-encoding"):
                    sawTransferEncoding = true
                    var onlyChunked = true
                    var tokens = 0
                    forEachToken(value) { token in
                        tokens += 1
                        if !equalsLowercase(token, "chunked") { onlyChunked = false }
                    }
                    // Only a single "chunked" is understood; anything else would have to be forwarded unchanged
                    // without knowing where the body ends, which is how smuggling starts.
                    guard onlyChunked && tokens == 1 && !chunked else {
                        return .failed(HTTP1Error(status: 501, "unsupported transfer-encoding"))
                    }
                    chunked = true
                default: break
                }
                continue
            }
            break
        }

        if sawTransferEncoding {
            if contentLength != nil { return .failed(.bad("both content-length and transfer-encoding")) }
            if head.isHTTP10 { return .failed(.bad("transfer-encoding in an HTTP/1.0 request")) }
            head.framing = .chunked
        } else if let length = contentLength, length > 0 {
            head.framing = .contentLength(length)
        }
        if !head.isHTTP10 && !sawHost { return .failed(.bad("missing host header")) }
        if connectionClose { head.keepAlive = false } else if head.isHTTP10 && connectionKeepAlive { head.keepAlive = true }
        if connectionUpgrade && !head.isHTTP10, let upgrade { head.upgrade = upgrade }
        return .complete
    }

    /// Records path and (for absolute form) host. Returns an error for a target we cannot route.
    private static func splitTarget(
        _ bytes: UnsafeRawBufferPointer, _ start: Int, _ end: Int, isConnect: Bool,
        into head: inout RequestHead
    ) -> HTTP1Error? {
        if isConnect { return HTTP1Error(status: 405, "CONNECT is not supported on this listener") }
        var pathStart = start
        if bytes[start] != 0x2F {  // not origin form
            if end - start == 1 && bytes[start] == 0x2A {  // "*" (OPTIONS)
                head.target = ByteRange(start: start, count: 1)
                head.path = head.target
                return nil
            }
            // absolute form: scheme "://" authority [path]
            let target = UnsafeRawBufferPointer(rebasing: bytes[start..<end])
            guard let schemeEnd = target.firstIndex(of: 0x3A), schemeEnd > 0,
                target.count > schemeEnd + 3, target[schemeEnd + 1] == 0x2F, target[schemeEnd + 2] == 0x2F
            else {
                return .bad("malformed request target")
            }
            let authorityStart = start + schemeEnd + 3
            var authorityEnd = authorityStart
            while authorityEnd < end, bytes[authorityEnd] != 0x2F, bytes[authorityEnd] != 0x3F { authorityEnd += 1 }
            guard authorityEnd > authorityStart else { return .bad("absolute target without authority") }
            head.host = ByteRange(start: authorityStart, count: authorityEnd - authorityStart)
            pathStart = authorityEnd
            if pathStart == end || bytes[pathStart] != 0x2F {
                head.defaultedPath = true
            }
        }
        head.target = ByteRange(start: pathStart, count: end - pathStart)
        var pathEnd = pathStart
        while pathEnd < end, bytes[pathEnd] != 0x3F, bytes[pathEnd] != 0x23 { pathEnd += 1 }
        head.path = ByteRange(start: pathStart, count: pathEnd - pathStart)
        return nil
    }

    // MARK: - Responses

    /// Validates a complete response head. `requestWasHead` decides framing for HEAD responses.
    public static func parseResponse(_ bytes: UnsafeRawBufferPointer, requestWasHead: Bool, into head: inout ResponseHead) -> Outcome {
        head.headers.removeAll(keepingCapacity: true)
        head.length = bytes.count
        var cursor = Cursor(bytes: bytes)
        guard let minor = cursor.version(), cursor.peek() == 0x20 else { return .failed(HTTP1Error(status: 502, "malformed status line")) }
        cursor.advance()
        var status = 0
        for _ in 0..<3 {
            guard let b = cursor.peek(), b >= 0x30 && b <= 0x39 else { return .failed(HTTP1Error(status: 502, "malformed status code")) }
            status = status * 10 + Int(b - 0x30)
            cursor.advance()
        }
        guard status >= 100 else { return .failed(HTTP1Error(status: 502, "malformed status code")) }
        head.status = status
        let reasonStart = cursor.position + (cursor.peek() == 0x20 ? 1 : 0)
        if cursor.peek() == 0x20 { cursor.advance() }
        while let b = cursor.peek(), b == 0x09 || (b >= 0x20 && b != 0x7F) { cursor.advance() }
        head.reason = ByteRange(start: reasonStart, count: cursor.position - reasonStart)
        guard cursor.lineEnd() else { return .failed(HTTP1Error(status: 502, "malformed status line")) }
        head.isHTTP10 = minor == 0
        head.keepAlive = minor == 1

        var contentLength: Int? = nil
        var transferEncoding = false
        var chunkedLast = false
        var connectionClose = false
        var connectionKeepAlive = false
        while true {
            switch cursor.headerLine() {
            case .end: break
            case .failed: return .failed(HTTP1Error(status: 502, "malformed response header"))
            case .field(let field):
                guard head.headers.count < maxHeaderCount else { return .failed(HTTP1Error(status: 502, "too many response headers")) }
                head.headers.append(field)
                let name = field.name.bytes(in: bytes)
                let value = field.value.bytes(in: bytes)
                switch name.count {
                case 10 where equalsLowercase(name, "connection"):
                    forEachToken(value) { token in
                        if equalsLowercase(token, "close") { connectionClose = true }
                        if equalsLowercase(token, "keep-alive") { connectionKeepAlive = true }
                    }
                case 14 where equalsLowercase(name, "content-length"):
                    guard let length = parseContentLength(value) else { return .failed(HTTP1Error(status: 502, "invalid content-length")) }
                    if let earlier = contentLength, earlier != length {
                        return .failed(HTTP1Error(status: 502, "conflicting content-length"))
                    }
                    contentLength = length
                case 17 where equalsLowercase(name, "transfer-encoding"):
                    transferEncoding = true
                    forEachToken(value) { token in chunkedLast = equalsLowercase(token, "chunked") }
                default: break
                }
                continue
            }
            break
        }
        if connectionClose { head.keepAlive = false } else if head.isHTTP10 && connectionKeepAlive { head.keepAlive = true }

        // RFC 9112 §6.3, in order.
        if requestWasHead || status < 200 || status == 204 || status == 304 {
            head.framing = .none
        } else if transferEncoding {
            head.framing = chunkedLast && !head.isHTTP10 ? .chunked : .untilClose
            if contentLength != nil { head.keepAlive = false }  // §6.3 item 3: TE wins, and the connection is suspect
        } else if let length = contentLength {
            head.framing = length > 0 ? .contentLength(length) : .none
        } else {
            head.framing = .untilClose
        }
        if head.framing == .untilClose { head.keepAlive = false }
        return .complete
    }

    // MARK: - Helpers

    /// RFC 9110 §5.6.2 tchar, as a 128-bit membership mask (one shift and test per byte instead of a switch).
    @inline(__always) public static func isTokenChar(_ b: UInt8) -> Bool {
        // Bits set for ! # $ % & ' * + - . ^ _ ` | ~ and digits and letters.
        let low: UInt64 = 0x03FF_6CFA_0000_0000  // 0x00-0x3F
        let high: UInt64 = 0x57FF_FFFF_C7FF_FFFE  // 0x40-0x7F
        if b < 64 { return (low >> UInt64(b)) & 1 == 1 }
        if b < 128 { return (high >> UInt64(b - 64)) & 1 == 1 }
        return false
    }

    /// Case-insensitive comparison against a lower-case ASCII literal.
    @inline(__always) public static func equalsLowercase(_ bytes: UnsafeRawBufferPointer, _ lower: StaticString) -> Bool {
        guard bytes.count == lower.utf8CodeUnitCount else { return false }
        let l = lower.utf8Start
        for i in 0..<bytes.count where lowercased(bytes[i]) != l[i] { return false }
        return true
    }

    @inline(__always) public static func lowercased(_ b: UInt8) -> UInt8 {
        b >= 0x41 && b <= 0x5A ? b | 0x20 : b
    }

    @inline(__always) static func equals(_ bytes: UnsafeRawBufferPointer, _ literal: StaticString) -> Bool {
        guard bytes.count == literal.utf8CodeUnitCount else { return false }
        return memcmp(bytes.baseAddress!, literal.utf8Start, bytes.count) == 0
    }

    /// Calls `body` with each comma-separated token, trimmed of spaces and tabs; empty elements are skipped.
    public static func forEachToken(_ value: UnsafeRawBufferPointer, _ body: (UnsafeRawBufferPointer) -> Void) {
        var start = 0
        let n = value.count
        while start <= n {
            var end = start
            while end < n && value[end] != 0x2C { end += 1 }
            var a = start, b = end
            while a < b && (value[a] == 0x20 || value[a] == 0x09) { a += 1 }
            while b > a && (value[b - 1] == 0x20 || value[b - 1] == 0x09) { b -= 1 }
            if b > a { body(UnsafeRawBufferPointer(rebasing: value[a..<b])) }
            start = end + 1
        }
    }

    /// Content-Length: 1*DIGIT, or a list of identical values (RFC 9110 §8.6). Nil when invalid or too large.
    static func parseContentLength(_ value: UnsafeRawBufferPointer) -> Int? {
        var result: Int? = nil
        var valid = true
        forEachToken(value) { token in
            guard valid, token.count <= 18 else { valid = false; return }
            var n = 0
            for b in token {
                guard b >= 0x30 && b <= 0x39 else { valid = false; return }
                n = n * 10 + Int(b - 0x30)
            }
            if let r = result, r != n { valid = false }
            result = n
        }
        return valid ? result : nil
    }
}

/// Steps through a head's bytes. Lines end in CRLF or a bare LF (RFC 9112 §2.2 allows the latter);
/// a bare CR anywhere is an error.
private struct Cursor {
    let bytes: UnsafeRawBufferPointer
    var position = 0
    var sawHTTPVersion = false

    init(bytes: UnsafeRawBufferPointer) { self.bytes = bytes }

    @inline(__always) func peek() -> UInt8? { position < bytes.count ? bytes[position] : nil }
    @inline(__always) mutating func advance() { position += 1 }

    /// Consumes CRLF or LF.
    mutating func lineEnd() -> Bool {
        if peek() == 0x0D { advance(); guard peek() == 0x0A else { return false } }
        guard peek() == 0x0A else { return false }
        advance()
        return true
    }

    /// "HTTP/1.0" or "HTTP/1.1": returns the minor version.
    mutating func version() -> Int? {
        guard bytes.count - position >= 8 else { return nil }
        let p = position
        guard bytes[p] == 0x48, bytes[p + 1] == 0x54, bytes[p + 2] == 0x54, bytes[p + 3] == 0x50, bytes[p + 4] == 0x2F else { return nil }
        sawHTTPVersion = true
        guard bytes[p + 5] == 0x31, bytes[p + 6] == 0x2E, bytes[p + 7] == 0x30 || bytes[p + 7] == 0x31 else { return nil }
        position += 8
        return Int(bytes[p + 7] - 0x30)
    }

    enum Line { case field(HeaderField), end, failed(HTTP1Error) }

    mutating func headerLine() -> Line {
        let n = bytes.count
        guard position < n else { return .failed(.bad("truncated head")) }
        let first = bytes[position]
        if first == 0x0D || first == 0x0A { return lineEnd() ? .end : .failed(.bad("bare CR in head")) }
        if first == 0x20 || first == 0x09 { return .failed(.bad("obsolete line folding")) }
        let nameStart = position
        while position < n && HTTP1Parser.isTokenChar(bytes[position]) { position += 1 }
        let nameEnd = position
        guard nameEnd > nameStart else { return .failed(.bad("invalid header name")) }
        guard position < n, bytes[position] == 0x3A else {
            return .failed(.bad(peek() == 0x20 || peek() == 0x09 ? "whitespace before colon" : "invalid header name"))
        }
        position += 1
        while position < n && (bytes[position] == 0x20 || bytes[position] == 0x09) { position += 1 }
        let valueStart = position
        var valueEnd = position
        while position < n {
            let b = bytes[position]
            if b >= 0x21 && b != 0x7F {  // the common case: visible characters and obs-text
                position += 1
                valueEnd = position
            } else if b == 0x20 || b == 0x09 {
                position += 1
            } else if b == 0x0D || b == 0x0A {
                break
            } else {
                return .failed(.bad("invalid character in header value"))
            }
        }
        guard lineEnd() else { return .failed(.bad("bare CR in header value")) }
        return .field(
            HeaderField(
                name: ByteRange(start: nameStart, count: nameEnd - nameStart),
                value: ByteRange(start: valueStart, count: valueEnd - valueStart)))
    }
}
