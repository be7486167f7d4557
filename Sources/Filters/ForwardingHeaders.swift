import WaypointCore

/// Writes the request head sent upstream and the response head sent downstream: hop-by-hop headers removed
/// (RFC 9110 §7.6.1), message framing re-emitted from what was parsed (never copied), and the forwarding
/// headers set (`x-forwarded-for` appended, `x-forwarded-proto` replaced, `x-request-id` generated when absent).
///
/// Pure: bytes in, bytes out. The caller owns the buffers.
public enum ForwardingHeaders {
    /// Writes `head` (whose ranges point into `bytes`) as an HTTP/1.1 request for an upstream.
    /// `requestID` is called only when the request has no `x-request-id`. `traceparent` (the HBONE tunnel's,
    /// possibly empty) is added when the request carries none, so the trace continues across the waypoint;
    /// `replaceTraceparent`: it replaces the request's own (the waypoint traced the request: its span is the
    /// upstream's parent). `upgrade`: the client's `Upgrade` offer goes on, with `connection: upgrade` (the only
    /// hop-by-hop headers passed on).
    public static func writeRequest(
        _ head: RequestHead, _ bytes: UnsafeRawBufferPointer, clientIP: UnsafeRawBufferPointer,
        proto: StaticString, traceparent: UnsafeRawBufferPointer = UnsafeRawBufferPointer(start: nil, count: 0),
        replaceTraceparent: Bool = false, upgrade: Bool = false,
        modifier: HeaderModifier? = nil, rewrite: URLRewrite? = nil, into out: ByteBuffer,
        requestID: (ByteBuffer) -> Void
    ) {
        out.append(head.method.bytes(in: bytes))
        out.append(0x20)
        if let pathRewrite = rewrite?.path {
            let target = head.target.bytes(in: bytes)
            out.append(pathRewrite.apply(to: head.path.bytes(in: bytes)))
            out.append(UnsafeRawBufferPointer(rebasing: target[min(Int(head.path.count), target.count)...]))  // the query
        } else {
            if head.defaultedPath { out.append(0x2F) }
            out.append(head.target.bytes(in: bytes))
        }
        out.append(" HTTP/1.1\r\n")
        // Absolute-form targets carry the authority: it becomes the Host header (RFC 9112 §3.2.2).
        if modifier?.drops(UnsafeRawBufferPointer(start: ("host" as StaticString).utf8Start, count: 4)) != true {
            out.append("host: ")
            if let hostname = rewrite?.hostname { out.append(hostname) } else { out.append(head.host.bytes(in: bytes)) }
            out.append("\r\n")
        }

        let connectionOptions = connectionOptionIndices(head, bytes)
        var forwardedFor: ByteRange? = nil
        var hasRequestID = false
        var hasTraceparent = false
        var joined: UInt64 = 0
        for field in head.headers {
            let name = field.name.bytes(in: bytes)
            switch classify(name) {
            // A request without a body keeps its `content-length: 0` (a POST without one may get 411 upstream).
            case .framing where head.framing == .none && name.count == 14 && HTTP1Parser.equalsLowercase(name, "content-length"): break
            case .hopByHop, .framing, .host, .expect, .forwardedProto, .attemptCount: continue
            case .forwardedFor:
                // Several x-forwarded-for lines are one list (RFC 9110 §5.3): keep the first, append ours.
                if forwardedFor == nil { forwardedFor = field.value }
                continue
            case .requestID: hasRequestID = true
            case .traceparent:
                if replaceTraceparent { continue }
                hasTraceparent = true
            case .other:
                if !connectionOptions.isEmpty, isConnectionOption(name, connectionOptions, head, bytes) { continue }
            }
            if let modifier, modifier.rewrites(name, field.value.bytes(in: bytes), joined: &joined, into: out) { continue }
            out.append(name)
            out.append(": ")
            out.append(field.value.bytes(in: bytes))
            out.append("\r\n")
        }
        out.append("x-forwarded-for: ")
        if let forwardedFor, !forwardedFor.isEmpty {
            out.append(forwardedFor.bytes(in: bytes))
            out.append(", ")
        }
        out.append(clientIP)
        out.append("\r\nx-forwarded-proto: ")
        out.append(proto)
        out.append("\r\n")
        if !hasRequestID {
            out.append("x-request-id: ")
            requestID(out)
            out.append("\r\n")
        }
        if !hasTraceparent && !traceparent.isEmpty {
            out.append("traceparent: ")
            out.append(traceparent)
            out.append("\r\n")
        }
        modifier?.writeAdded(into: out, joined: joined)
        writeFraming(head.framing, into: out)
        if upgrade {
            out.append("connection: upgrade\r\nupgrade: ")
            out.append(head.upgrade.bytes(in: bytes))
            out.append("\r\n")
        }
        out.append(firstAttempt)
        out.append("\r\n")
    }

    /// The last header line of every request sent upstream: `x-envoy-attempt-count` as Istio has Envoy send it
    /// (`include_request_attempt_count`: 1 on the first try; a client's own is replaced). Last, so that a retry
    /// replaces it by cutting these bytes before the blank line.
    public static let firstAttempt: StaticString = "x-envoy-attempt-count: 1\r\n"

    /// Writes `head` as the response sent downstream. `close` adds `connection: close`; `upgrade` (a `101` the
    /// client asked for) keeps the upstream's `Upgrade` and adds `connection: upgrade`. A response without a body
    /// keeps the upstream's `content-length` (`0`, or a HEAD response's entity length), as Envoy does: without
    /// it, a kept-alive client would read a `200` as delimited by the close.
    public static func writeResponse(
        _ head: ResponseHead, _ bytes: UnsafeRawBufferPointer, close: Bool, upgrade: Bool = false, modifier: HeaderModifier? = nil,
        into out: ByteBuffer
    ) {
        out.append("HTTP/1.1 ")
        out.appendDecimal(head.status)
        out.append(0x20)
        out.append(head.reason.bytes(in: bytes))
        out.append("\r\n")
        let keepsLength = head.framing == .none && head.status >= 200 && head.status != 204
        for field in head.headers {
            let name = field.name.bytes(in: bytes)
            switch classify(name) {
            case .hopByHop where upgrade && name.count == 7 && HTTP1Parser.equalsLowercase(name, "upgrade"): break
            case .framing where keepsLength && name.count == 14 && HTTP1Parser.equalsLowercase(name, "content-length"): break
            case .hopByHop, .framing: continue
            default: break
            }
            if let modifier, modifier.drops(name) { continue }
            out.append(name)
            out.append(": ")
            out.append(field.value.bytes(in: bytes))
            out.append("\r\n")
        }
        modifier?.writeAdded(into: out)
        writeFraming(head.framing, into: out)
        if upgrade { out.append("connection: upgrade\r\n") }
        if close { out.append("connection: close\r\n") }
        out.append("\r\n")
    }

    /// A redirect the proxy answers itself (RequestRedirect): no body.
    public static func writeRedirect(status: Int, location: [UInt8], close: Bool, into out: ByteBuffer) {
        out.append("HTTP/1.1 ")
        out.appendDecimal(status)
        out.append(0x20)
        out.append(LocalReply.reasonPhrase(status))
        out.append("\r\nlocation: ")
        out.append(location)
        out.append("\r\ncontent-length: 0\r\n")
        if close { out.append("connection: close\r\n") }
        out.append("\r\n")
    }

    /// Writes the head of a mirrored copy of `head` (a request head as sent upstream): the Host gets Envoy's
    /// `-shadow` suffix on its name (`web:8080` → `web-shadow:8080`) and the copy asks for `connection: close`.
    public static func writeMirrorHead(_ head: UnsafeRawBufferPointer, into out: ByteBuffer) {
        var start = 0
        while start < head.count {
            var end = start
            while end + 1 < head.count && !(head[end] == 0x0D && head[end + 1] == 0x0A) { end += 1 }
            let line = UnsafeRawBufferPointer(rebasing: head[start..<end])
            if line.isEmpty {
                out.append("connection: close\r\n\r\n")
                return
            }
            if line.count > 5 && HeaderModifier.equalsLowercase(UnsafeRawBufferPointer(rebasing: line[0..<5]), Array("host:".utf8)) {
                var value = 5
                while value < line.count && line[value] == 0x20 { value += 1 }
                let host = UnsafeRawBufferPointer(rebasing: line[value...])
                // The port starts at the last ':' after any IPv6 literal's ']'.
                var nameEnd = host.count
                if let colon = host.lastIndex(of: 0x3A), !host[colon...].contains(0x5D), host.first != 0x5B || host[..<colon].last == 0x5D {
                    nameEnd = colon
                }
                out.append("host: ")
                out.append(UnsafeRawBufferPointer(rebasing: host[0..<nameEnd]))
                out.append("-shadow")
                out.append(UnsafeRawBufferPointer(rebasing: host[nameEnd...]))
            } else {
                out.append(line)
            }
            out.append("\r\n")
            start = end + 2
        }
    }

    /// Writes a configured answer (VirtualService `directResponse`, fault abort): status, plain-text body.
    public static func writeResponse(
        status: Int, headers: [ExternalAuthorizer.HeaderLine] = [], body: [UInt8], omitBody: Bool, close: Bool, into out: ByteBuffer
    ) {
        out.append("HTTP/1.1 ")
        out.appendDecimal(status)
        out.append(0x20)
        out.append(LocalReply.reasonPhrase(status))
        out.append("\r\n")
        for header in headers {
            out.append(string: header.name)
            out.append(": ")
            out.append(string: header.value)
            out.append("\r\n")
        }
        if !headers.contains(where: { $0.name == "content-type" }) { out.append("content-type: text/plain\r\n") }
        out.append("content-length: ")
        out.appendDecimal(body.count)
        out.append("\r\n")
        if close { out.append("connection: close\r\n") }
        out.append("\r\n")
        if !omitBody { out.append(body) }
    }

    /// Writes a complete response the proxy answers itself; `challenge`, a `www-authenticate` value (a JWT
    /// refusal's).
    public static func writeLocalReply(_ reply: LocalReply, close: Bool, challenge: [UInt8]? = nil, into out: ByteBuffer) {
        let body = reply.body
        out.append("HTTP/1.1 ")
        out.appendDecimal(reply.status)
        out.append(0x20)
        out.append(LocalReply.reasonPhrase(reply.status))
        if let challenge {
            out.append("\r\nwww-authenticate: ")
            out.append(challenge)
        }
        out.append("\r\ncontent-type: text/plain\r\ncontent-length: ")
        out.appendDecimal(body.utf8CodeUnitCount)
        out.append("\r\n")
        if close { out.append("connection: close\r\n") }
        out.append("\r\n")
        out.append(body)
    }

    private static func writeFraming(_ framing: BodyFraming, into out: ByteBuffer) {
        switch framing {
        case .contentLength(let n):
            out.append("content-length: ")
            out.appendDecimal(n)
            out.append("\r\n")
        case .chunked:
            out.append("transfer-encoding: chunked\r\n")
        case .none, .untilClose:
            break
        }
    }

    enum HeaderClass { case hopByHop, framing, host, expect, forwardedFor, forwardedProto, requestID, traceparent, attemptCount, other }

    /// Classifies a header name, case-insensitively, by length first so most names cost one comparison.
    @inline(__always)
    static func classify(_ name: UnsafeRawBufferPointer) -> HeaderClass {
        switch name.count {
        case 2 where HTTP1Parser.equalsLowercase(name, "te"): return .hopByHop
        case 4 where HTTP1Parser.equalsLowercase(name, "host"): return .host
        case 6 where HTTP1Parser.equalsLowercase(name, "expect"): return .expect
        case 7 where HTTP1Parser.equalsLowercase(name, "upgrade"), 7 where HTTP1Parser.equalsLowercase(name, "trailer"): return .hopByHop
        case 10 where HTTP1Parser.equalsLowercase(name, "connection"), 10 where HTTP1Parser.equalsLowercase(name, "keep-alive"):
            return .hopByHop
        case 11 where HTTP1Parser.equalsLowercase(name, "traceparent"): return .traceparent
        case 12 where HTTP1Parser.equalsLowercase(name, "x-request-id"): return .requestID
        case 14 where HTTP1Parser.equalsLowercase(name, "content-length"): return .framing
        case 15 where HTTP1Parser.equalsLowercase(name, "x-forwarded-for"): return .forwardedFor
        case 16 where HTTP1Parser.equalsLowercase(name, "proxy-connection"): return .hopByHop
        case 17 where HTTP1Parser.equalsLowercase(name, "transfer-encoding"): return .framing
        case 17 where HTTP1Parser.equalsLowercase(name, "x-forwarded-proto"): return .forwardedProto
        case 21 where HTTP1Parser.equalsLowercase(name, "x-envoy-attempt-count"): return .attemptCount
        default: return .other
        }
    }

    /// Indices of `connection` header lines that list options beyond close/keep-alive (rare; usually empty).
    private static func connectionOptionIndices(_ head: RequestHead, _ bytes: UnsafeRawBufferPointer) -> [Int] {
        var result: [Int] = []
        for (i, field) in head.headers.enumerated() where field.name.count == 10 {
            guard HTTP1Parser.equalsLowercase(field.name.bytes(in: bytes), "connection") else { continue }
            var extra = false
            HTTP1Parser.forEachToken(field.value.bytes(in: bytes)) { token in
                if !HTTP1Parser.equalsLowercase(token, "close") && !HTTP1Parser.equalsLowercase(token, "keep-alive") { extra = true }
            }
            if extra { result.append(i) }
        }
        return result
    }

    /// True when `name` is listed in one of the given `connection` headers: such headers are hop-by-hop too.
    private static func isConnectionOption(
        _ name: UnsafeRawBufferPointer, _ indices: [Int], _ head: RequestHead,
        _ bytes: UnsafeRawBufferPointer
    ) -> Bool {
        var listed = false
        for i in indices {
            HTTP1Parser.forEachToken(head.headers[i].value.bytes(in: bytes)) { token in
                if token.count == name.count && zip(token, name).allSatisfy({ HTTP1Parser.lowercased($0) == HTTP1Parser.lowercased($1) }) {
                    listed = true
                }
            }
        }
        return listed
    }
}
