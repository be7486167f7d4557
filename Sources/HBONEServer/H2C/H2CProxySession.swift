import EventLoop
import Filters
import HTTP2
import WaypointCore

/// h2c inside a tunnel (a Service port declared `http2`/`grpc`/`h2c`, or detected from the HTTP/2 preface):
/// a second nghttp2 session runs inside the stream; every inner request is routed like an HTTP/1.1 request
/// (same router, host = the tunnel's service) and proxied to an upstream over HTTP/2 (prior knowledge), so
/// gRPC trailers pass through. Local answers to gRPC requests are gRPC errors (`grpc-status`), not bare statuses.
/// Each request's `Exchange` decides (routing, tries, retries, timeouts, local answers); this session is its h2c
/// transport: a retry replays the request body kept so far and may start before the request has ended, and
/// HTTP/2 adds the refused-stream and gRPC-status retry conditions.
///
/// Thread: its worker's loop thread only. Ownership: the `ProxyServer` (until closed); it owns its exchanges.
final class H2CProxySession: HTTP2SessionDelegate, DownstreamSession, H2CExchangeOwner {
    let id: Int
    private unowned(unsafe) let server: ProxyServer
    private var channel: HTTP2Channel!
    private let peer: PeerFacts
    private var destination: Destination?
    private let traceparent: [UInt8]
    private var exchanges: [Int32: H2CExchange] = [:]
    /// WebSocket streams (RFC 8441 extended CONNECT), each bridged to an HTTP/1.1 session.
    private var bridges: [Int32: WebSocketBridge] = [:]
    private var closed = false
    /// The caller, interned once for Istio's metrics.
    private let principalID: Int32

    init(
        id: Int, stream: any ByteStream, peer: PeerFacts, destination: Destination?, traceparent: [UInt8],
        initialInput: UnsafeRawBufferPointer?, server: ProxyServer
    ) {
        self.id = id
        self.server = server
        self.peer = peer
        principalID = server.counters.istio.intern(source: peer)
        self.destination = destination
        self.traceparent = traceparent
        channel = HTTP2Channel(stream: stream, role: .server, delegate: self, extendedConnect: server.settings.upgrades)
        channel.onClosed = { [unowned(unsafe) self] in self.channelClosed() }
        if let initialInput, !initialInput.isEmpty { channel.receive(initialInput) } else { channel.flush() }
    }

    func closeWhenIdle() {
        channel.session.goAway()
        channel.flush()
        if exchanges.isEmpty && bridges.isEmpty { channel.close() }
    }

    private func channelClosed() {
        guard !closed else { return }
        closed = true
        for exchange in exchanges.values {
            exchange.upstream?.cancel(exchange)
            release(exchange)
            exchange.control.end()
            server.releaseLater(exchange)  // its exchange's call stack may be under this one
        }
        exchanges.removeAll()
        for bridge in bridges.values { bridge.closed() }
        bridges.removeAll()
        server.sessionClosed(id)
    }

    // MARK: HTTP2SessionDelegate (downstream side)

    func http2BeginHeaders(stream: Int32) {
        if exchanges[stream] == nil { exchanges[stream] = H2CExchange(downstreamID: stream, session: self) }
    }

    func http2Header(stream: Int32, name: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer) {
        guard let exchange = exchanges[stream], exchange.upstreamID == 0, !exchange.responseStarted else { return }
        exchange.requestFields.append((String(decoding: name, as: UTF8.self), String(decoding: value, as: UTF8.self)))
    }

    func http2HeadersComplete(stream: Int32, endStream: Bool) {
        guard let exchange = exchanges[stream] else { return }
        if endStream { exchange.requestEnded = true }
        if exchange.control.isIdle {
            route(exchange)
        } else if endStream {
            exchange.upstream?.requestDataReady(exchange)  // request trailers are dropped; the end still counts
            endMirrors(of: exchange)
            if exchange.control.collectsBody { bodyArrived(exchange) }
        }
    }

    /// More of a request body collected for an external check arrived, or it ended.
    private func bodyArrived(_ exchange: H2CExchange) {
        exchange.control.bodyArrived()
        flush()
    }

    func http2Data(stream: Int32, _ bytes: UnsafeRawBufferPointer) {
        if let bridge = bridges[stream] { return bridge.receivedData(bytes) }
        guard let exchange = exchanges[stream] else {
            channel.session.consume(stream: stream, bytes.count)
            return
        }
        // The copies never hold the request back: a mirror that falls this far behind is dropped.
        exchange.mirrors.removeAll { mirror in
            if mirror.requestBody.readableBytes + bytes.count > Self.mirrorBacklog {
                server.counters.mirrorsSkipped.increment()
                mirror.upstream?.cancel(mirror)
                return true
            }
            mirror.requestBody.append(bytes)
            mirror.upstream?.requestDataReady(mirror)
            return false
        }
        if let replay = exchange.replayBody {
            if replay.readableBytes + bytes.count <= exchange.control.retryPolicy?.replayBound ?? 0 {
                replay.append(bytes)
            } else {
                exchange.replayBody = nil
                exchange.control.replayLost()
            }
        }
        if exchange.control.isWaiting {
            exchange.requestBody.append(bytes)
            exchange.control.record.bytesReceived += bytes.count
            if exchange.control.collectsBody {
                // Collected for an external check: the client may send past the stream window, up to the limit.
                channel.session.consume(stream: stream, bytes.count)
                exchange.credited += bytes.count
                bodyArrived(exchange)
            }
            return
        }
        guard let upstream = exchange.upstream else {
            channel.session.consume(stream: stream, bytes.count)  // answered locally: the body is dropped
            return
        }
        exchange.requestBody.append(bytes)
        exchange.control.record.bytesReceived += bytes.count
        upstream.requestDataReady(exchange)
    }

    func http2RemoteEnded(stream: Int32) {
        if let bridge = bridges[stream] { return bridge.receivedEnd() }
        guard let exchange = exchanges[stream] else { return }
        exchange.requestEnded = true
        exchange.upstream?.requestDataReady(exchange)
        endMirrors(of: exchange)
        if exchange.control.collectsBody { bodyArrived(exchange) }
    }

    func http2StreamClosed(stream: Int32, errorCode: UInt32) {
        if let bridge = bridges.removeValue(forKey: stream) { return bridge.closed() }
        guard let exchange = exchanges.removeValue(forKey: stream) else { return }
        if !exchange.responseEnded || errorCode != 0 { exchange.upstream?.cancel(exchange) }
        release(exchange)
        exchange.control.finish(grpc: exchange.control.record.grpc ? Self.grpcStatus(of: exchange) : nil)
        server.releaseLater(exchange)  // the stream may close from under its exchange's own call (an answer's flush)
    }

    /// The stream is gone: its mirrors end, and body bytes it took but never sent on are credited back (the
    /// connection's window must not shrink for good).
    private func release(_ exchange: H2CExchange) {
        endMirrors(of: exchange)
        let received = exchange.control.record.bytesReceived
        if received > exchange.credited { channel.session.consume(stream: exchange.downstreamID, received - exchange.credited) }
    }

    /// The largest request body a mirror copy may have waiting to be sent.
    static let mirrorBacklog = 64 * 1024

    /// The request is complete (the copies get their end too) or gone before it was (the copies are reset).
    private func endMirrors(of exchange: H2CExchange) {
        for mirror in exchange.mirrors {
            if exchange.requestEnded {
                mirror.requestEnded = true
                mirror.upstream?.requestDataReady(mirror)
            } else {
                mirror.upstream?.cancel(mirror)
            }
        }
        exchange.mirrors.removeAll()
    }

    func http2ReadData(stream: Int32, into buffer: UnsafeMutableRawBufferPointer) -> HTTP2DataChunk {
        if let bridge = bridges[stream] {
            guard let (count, end) = bridge.readData(into: buffer) else { return .deferred }
            return .bytes(count, end: end)
        }
        guard let exchange = exchanges[stream] else { return .bytes(0, end: true) }
        let n = exchange.responseBody.move(into: buffer)
        if n > 0 {
            exchange.control.record.bytesSent += n
            exchange.upstream?.responseConsumed(exchange, n)
        }
        guard exchange.responseBody.isEmpty && exchange.responseEnded else { return n > 0 ? .bytes(n, end: false) : .deferred }
        if exchange.trailers.isEmpty { return .bytes(n, end: true) }
        channel.session.submitTrailers(stream: stream, headers: exchange.trailers)
        return .bytesThenTrailers(n)
    }

    func http2PingAcknowledged() {}

    // MARK: Routing

    /// Routes with the same router as HTTP/1.1: the request is written as an HTTP/1.1 head (the pseudo-headers
    /// become the request line and Host) so that matching has one implementation.
    private func route(_ exchange: H2CExchange) {
        if server.settings.upgrades, exchange.requestFields.contains(where: { $0 == (":protocol", "websocket") }) {
            return bridgeWebSocket(exchange)
        }
        let control = exchange.control
        control.start()
        var head = "", contentType = ""
        for (name, value) in exchange.requestFields {
            switch name {
            case ":method": exchange.method = value
            case ":path": exchange.path = value
            case ":authority": exchange.authority = value
            case ":scheme": break
            case "host": if exchange.authority.isEmpty { exchange.authority = value }
            default:
                if name == "content-type" { contentType = value }
                head += "\(name): \(value)\r\n"
            }
        }
        control.record.grpc = contentType.hasPrefix("application/grpc")
        // The same normalization as HTTP/1.1: what is authorized and routed is what the upstream gets.
        guard let normalized = Self.normalize(exchange.path, server.settings.pathNormalization) else {
            return control.decide(RouteDecision(.reply(.badRequest(HTTP1Error(status: 400, "invalid request path")))))
        }
        exchange.path = normalized
        if let log = control.log { keepLogFields(exchange, log) }
        let text = "\(exchange.method) \(normalized.isEmpty ? "/" : normalized) HTTP/1.1\r\nhost: \(exchange.authority)\r\n\(head)\r\n"
        let decision: RouteDecision = Array(text.utf8).withUnsafeBytes { bytes in
            var request = RequestHead()
            guard case .complete = HTTP1Parser.parseRequest(bytes, into: &request) else {
                return RouteDecision(.reply(.badRequest(HTTP1Error(status: 400, "malformed request"))))
            }
            request.isHTTP2 = true
            return server.router.route(request, bytes, destination: &destination, peer: peer)
        }
        control.decide(decision)
        channel.flush()
    }

    // MARK: WebSocket over HTTP/2

    /// Hands an extended CONNECT for a WebSocket to an HTTP/1.1 session as the handshake it stands for: `GET`
    /// of its `:path` with `Upgrade: websocket`, a key of our own (RFC 8441 has none) and the client's other
    /// headers; `Connection: close`, so that a refusal ends the stream.
    private func bridgeWebSocket(_ exchange: H2CExchange) {
        let stream = exchange.downstreamID
        exchanges[stream] = nil
        var path = "/", authority = "", headers = ""
        for (name, value) in exchange.requestFields {
            switch name {
            case ":path": path = value
            case ":authority": authority = value
            case "host": if authority.isEmpty { authority = value }
            case ":method", ":scheme", ":protocol", "connection", "upgrade", "sec-websocket-key", "content-length", "transfer-encoding":
                continue
            default: headers += "\(name): \(value)\r\n"
            }
        }
        var key = [UInt8](repeating: 0, count: 16)
        for i in key.indices { key[i] = UInt8.random(in: 0...255) }
        let handshake =
            "GET \(path) HTTP/1.1\r\nhost: \(authority)\r\nupgrade: websocket\r\nconnection: upgrade, close\r\n"
            + "sec-websocket-key: \(base64Encoded(key))\r\n\(headers)\r\n"
        let bridge = WebSocketBridge(streamID: stream, owner: self, loop: server.loop, handshake: Array(handshake.utf8))
        bridges[stream] = bridge
        server.startHTTP(on: bridge, peer: peer, destination: destination, traceparent: traceparent, initialInput: nil, protocol: "HTTP/2")
    }

    func respond(_ bridge: WebSocketBridge, status: Int, fields: [(String, String)], body: Bool) {
        channel.session.respond(stream: bridge.streamID, status: status, headers: fields, body: body)
        channel.flush()
    }

    func dataReady(_ bridge: WebSocketBridge) {
        channel.session.resume(stream: bridge.streamID)
        channel.flush()
    }

    func consumed(_ bridge: WebSocketBridge, _ count: Int) {
        channel.session.consume(stream: bridge.streamID, count)
        channel.flush()
    }

    func reset(_ bridge: WebSocketBridge) {
        bridges[bridge.streamID] = nil
        bridge.closed()
        channel.session.reset(stream: bridge.streamID, code: .cancel)
        channel.flush()
    }

    // MARK: ExchangeTransport (for each exchange)

    func makeExchange() -> Exchange {
        Exchange(server: server, peer: peer, principal: principalID, protocol: "HTTP/2")
    }

    func flush() { channel.flush() }

    /// The fields the tries send: the route's URLRewrite and RequestHeaderModifier applied as on HTTP/1.1, the
    /// forwarding headers, the span as the upstream's parent, the gRPC deadline; the mirrors start.
    func prepareForwarding(_ exchange: H2CExchange) {
        let control = exchange.control
        let policy = control.policy
        var upstreamPath = exchange.path, upstreamAuthority = exchange.authority
        if let rewrite = policy.rewrite {
            if let hostname = rewrite.hostname { upstreamAuthority = String(decoding: hostname, as: UTF8.self) }
            if let modifier = rewrite.path {
                let path = exchange.path
                let query = path.firstIndex(of: "?").map { String(path[$0...]) } ?? ""
                let bare = String(path.prefix { $0 != "?" })
                upstreamPath = Array(bare.utf8).withUnsafeBytes { String(decoding: modifier.apply(to: $0), as: UTF8.self) } + query
            }
        }
        var fields = forwardedFields(exchange, method: exchange.method, path: upstreamPath, authority: upstreamAuthority)
        if let log = control.log, log[.requestID].isEmpty, let id = fields.last(where: { $0.0 == "x-request-id" }) {
            log.keep(.requestID, id.1)  // the one generated for the upstream
        }
        if let modifier = policy.requestHeaders { fields = Self.modify(fields, modifier) }
        if let tracer = server.settings.tracer {
            let incoming = fields.last { $0.0 == "traceparent" }?.1 ?? ""
            Array(incoming.utf8).withUnsafeBytes { incoming in
                server.startSpan(&control.record, tracer, traceparent: incoming, protocol: "HTTP/2", peer: peer) {
                    (exchange.method, exchange.authority, exchange.path)
                }
            }
            if let span = control.record.span {  // the span is the upstream's parent
                let out = ByteBuffer(capacity: 64)
                span.context.writeTraceparent(into: out)
                fields.removeAll { $0.0 == "traceparent" }
                fields.append(("traceparent", String(decoding: out.readable, as: UTF8.self)))
            }
        }
        for mirror in policy.mirrors where server.roll(mirror.percent) {
            startMirror(exchange, fields: fields, cluster: mirror.cluster)
        }
        if control.record.grpc { applyGRPCTimeout(control, &fields) }
        exchange.upstreamFields = fields
        if control.retryPolicy != nil { exchange.replayBody = ByteBuffer(lazyCapacity: 16 * 1024) }
    }

    /// Istio has Envoy honour a gRPC call's `grpc-timeout` (`max_grpc_timeout` = the route's timeout): the call's
    /// deadline, capped by the route's timeout, bounds all tries (absent, malformed or 0: the route's timeout);
    /// the upstream is told the timeout that applies to its try (the per-try timeout when shorter).
    private func applyGRPCTimeout(_ control: Exchange, _ fields: inout [(String, String)]) {
        let index = fields.firstIndex { $0.0 == "grpc-timeout" }
        if let index, let asked = GRPCTimeout.parse(fields[index].1), asked > .zero {
            control.requestTimeout = control.requestTimeout.map { min($0, asked) } ?? asked
        }
        guard let expected = [control.requestTimeout, control.policy.perTryTimeout].compactMap({ $0 }).min(), expected > .zero
        else { return }
        if let index { fields.remove(at: index) }
        fields.append(("grpc-timeout", GRPCTimeout.format(expected)))
    }

    /// Opens this try's upstream stream with the request body received so far (a retry: the whole body again).
    func sendTry(_ exchange: H2CExchange, to pool: UpstreamPool) -> TryStart {
        let limits = exchange.control.limits
        // The endpoint's connections take no more streams and the backend's connection limit is reached.
        if let limits, !pool.h2cHasCapacity(limits) { return .overflow }
        guard let upstream = pool.h2cUpstream(limits: limits) else { return .connectFailed }
        if exchange.control.record.attempt > 1 {
            exchange.requestBody.clear()
            if let replay = exchange.replayBody { exchange.requestBody.append(replay.readable) }
            exchange.sentInAttempt = 0
        }
        var fields = exchange.upstreamFields
        fields.append(("x-envoy-attempt-count", String(exchange.control.record.attempt)))
        upstream.start(exchange, fields: fields, owner: self)
        guard exchange.upstream === upstream else { return .sent }  // refused at once (and already handled)
        if !exchange.requestBody.isEmpty || exchange.requestEnded { upstream.requestDataReady(exchange) }
        channel.flush()
        return .sent
    }

    /// Resets the try's upstream stream and forgets what it answered.
    func dropTry(_ exchange: H2CExchange) {
        exchange.upstream?.cancel(exchange)
        exchange.responseFields.removeAll()
        exchange.trailers.removeAll()
        exchange.responseBody.clear()
        exchange.responseEnded = false
    }

    /// Answers without an upstream: an HTTP status with a short body, or for gRPC a trailers-only response with
    /// the matching `grpc-status` (gRPC's HTTP-to-status mapping: 404 → UNIMPLEMENTED, 503 → UNAVAILABLE, ...).
    func answer(_ exchange: H2CExchange, _ answer: LocalAnswer) {
        switch answer {
        case .reply(let reply):
            var headers: [(String, String)] = []
            if case .jwtRejected = reply {
                let challenge = Array(exchange.authority.utf8).withUnsafeBytes { host in
                    Array(exchange.path.utf8).withUnsafeBytes { LocalReply.bearerChallenge(host: host, target: $0) }
                }
                headers.append(("www-authenticate", String(decoding: challenge, as: UTF8.self)))
            }
            respond(exchange, status: reply.status, headers: headers, body: Array((reply.body.description.trimmingNewline() + "\n").utf8))
        case .redirect(let status, let location):
            exchange.responseStarted = true
            exchange.responseEnded = true
            channel.session.respond(
                stream: exchange.downstreamID,
                fields: [
                    (":status", String(status)), ("location", String(decoding: location, as: UTF8.self)), ("content-length", "0"),
                ], body: false)
            channel.flush()
        case .respond(let status, let body):
            respond(exchange, status: status, body: body)
        case .denied(let status, let headers, let body):
            respond(exchange, status: status, headers: headers.map { ($0.name, $0.value) }, body: body)
        }
    }

    /// Resets the downstream stream: a cut-off response must not look complete.
    func breakResponse(_ exchange: H2CExchange, timedOut: Bool) {
        exchange.upstream?.cancel(exchange)
        channel.session.reset(stream: exchange.downstreamID, code: timedOut ? .cancel : .internalError)
        channel.flush()
    }

    /// A copy of the request, with Envoy's `-shadow` authority, on an HTTP/2 stream to an endpoint of the mirror
    /// cluster; its body follows the original's as it arrives, and its answer is dropped.
    private func startMirror(_ exchange: H2CExchange, fields: [(String, String)], cluster: Int32) {
        guard let endpoint = server.router.pickEndpoint(inCluster: cluster), let pool = server.upstreams.pool(endpoint),
            let upstream = pool.h2cUpstream(limits: nil)
        else {
            server.counters.mirrorsSkipped.increment()
            return
        }
        let copy = H2CExchange(downstreamID: 0, session: self)
        copy.requestEnded = exchange.requestEnded
        let shadowed = fields.map { name, value in
            guard name == ":authority" else { return (name, value) }
            let colon = value.lastIndex(of: ":").flatMap { value[$0...].contains("]") ? nil : $0 } ?? value.endIndex
            return (name, value[..<colon] + "-shadow" + value[colon...])
        }
        upstream.start(copy, fields: shadowed, owner: server.upstreams.h2cMirrorSink)
        server.counters.mirrorRequests.increment()
        if !copy.requestEnded { exchange.mirrors.append(copy) }
    }

    /// A header list with a HeaderModifier applied (pseudo-headers untouched).
    static func modify(_ fields: [(String, String)], _ modifier: HeaderModifier) -> [(String, String)] {
        var result = fields.filter { name, _ in
            name.hasPrefix(":") || !Array(name.utf8).withUnsafeBytes { modifier.drops($0) }
        }
        for (name, value) in modifier.set + modifier.add {
            result.append((String(decoding: name, as: UTF8.self), String(decoding: value, as: UTF8.self)))
        }
        for (name, value) in modifier.append {
            let (name, value) = (String(decoding: name, as: UTF8.self), String(decoding: value, as: UTF8.self))
            if let i = result.firstIndex(where: { $0.0 == name }) { result[i].1 += ",\(value)" } else { result.append((name, value)) }
        }
        return result
    }

    /// `path` (with its query) normalized; the fragment dropped; nil when it must be refused.
    static func normalize(_ path: String, _ mode: PathNormalization) -> String? {
        var bytes = Array(path.utf8)
        if let hash = bytes.firstIndex(of: 0x23) { bytes.removeSubrange(hash...) }
        let queryStart = bytes.firstIndex(of: 0x3F) ?? bytes.count
        guard queryStart > 0, bytes[0] == 0x2F || bytes[0] == 0x5C else {
            return path.isEmpty ? path : String(decoding: bytes, as: UTF8.self)
        }
        let length = bytes.withUnsafeMutableBytes { mode.normalize(UnsafeMutableRawBufferPointer(rebasing: $0[0..<queryStart])) }
        guard let length else { return nil }
        return String(decoding: bytes[0..<length] + bytes[queryStart...], as: UTF8.self)
    }

    /// The request fields sent upstream: pseudo-headers, the client's headers minus hop-by-hop ones, and the
    /// forwarding headers (as on HTTP/1.1: `x-forwarded-for` appended, `x-request-id` when absent, the tunnel's
    /// `traceparent` when the request has none).
    private func forwardedFields(_ exchange: H2CExchange, method: String, path: String, authority: String) -> [(String, String)] {
        var fields: [(String, String)] = [(":method", method), (":scheme", "http"), (":authority", authority), (":path", path)]
        var forwardedFor: String?
        var hasRequestID = false, hasTraceparent = false
        for (name, value) in exchange.requestFields where !name.hasPrefix(":") {
            switch name {
            case "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "host", "x-forwarded-proto",
                "x-envoy-attempt-count":
                continue
            case "te" where value != "trailers":
                continue
            case "x-forwarded-for":
                forwardedFor = forwardedFor.map { "\($0), \(value)" } ?? value
                continue
            case "x-request-id": hasRequestID = true
            case "traceparent": hasTraceparent = true
            default: break
            }
            fields.append((name, value))
        }
        fields.append(("x-forwarded-for", forwardedFor.map { "\($0), \(peer.sourceIP)" } ?? peer.sourceIP))
        fields.append(("x-forwarded-proto", "http"))
        if !hasRequestID {
            let id = ByteBuffer(capacity: 40)
            server.writeRequestID(id)
            fields.append(("x-request-id", String(decoding: id.readable, as: UTF8.self)))
        }
        if !hasTraceparent && !traceparent.isEmpty { fields.append(("traceparent", String(decoding: traceparent, as: UTF8.self))) }
        return fields
    }

    /// A complete answer of the proxy's own; to a gRPC caller as a gRPC status with the body as its message.
    /// `headers` (lower-case names): an external authorizer's denial's, or a JWT refusal's challenge.
    private func respond(_ exchange: H2CExchange, status: Int, headers: [(String, String)] = [], body: [UInt8]) {
        exchange.responseStarted = true
        exchange.responseEnded = true
        let passed = headers.filter { name, _ in name != "content-type" || !exchange.control.record.grpc }
        if exchange.control.record.grpc {
            exchange.responseFields =
                [
                    (":status", "200"), ("content-type", "application/grpc"),
                    ("grpc-status", String(Self.grpcStatus(for: status))),
                    ("grpc-message", String(decoding: body, as: UTF8.self).trimmingNewline()),
                ] + passed
            channel.session.respond(stream: exchange.downstreamID, fields: exchange.responseFields, body: false)
        } else {
            exchange.responseBody.append(body)
            let contentType = passed.contains { $0.0 == "content-type" } ? [] : [("content-type", "text/plain")]
            channel.session.respond(
                stream: exchange.downstreamID,
                fields: [(":status", String(status))] + contentType + passed + [("content-length", String(body.count))],
                body: !body.isEmpty)
        }
        channel.flush()
    }

    static func grpcStatus(for httpStatus: Int) -> Int {
        switch httpStatus {
        case 400: return 13  // INTERNAL
        case 401: return 16  // UNAUTHENTICATED
        case 403: return 7  // PERMISSION_DENIED
        case 404: return 12  // UNIMPLEMENTED
        case 429, 502, 503, 504: return 14  // UNAVAILABLE
        default: return 2  // UNKNOWN
        }
    }

    // MARK: Upstream events

    func requestConsumed(_ exchange: H2CExchange, _ count: Int) {
        channel.session.consume(stream: exchange.downstreamID, count)
        channel.flush()
    }

    func responseHeaders(_ exchange: H2CExchange) {
        let status = Int(exchange.responseFields.first { $0.0 == ":status" }?.1 ?? "") ?? 502
        // gRPC errors come as trailers-only responses: their grpc-status is known before anything is sent.
        let grpcStatus = exchange.responseEnded ? exchange.responseFields.first { $0.0 == "grpc-status" }.flatMap { Int($0.1) } : nil
        if exchange.control.responseHead(status: status, grpcStatus: grpcStatus) { return channel.flush() }
        exchange.responseStarted = true
        var fields: [(String, String)] = []
        for (name, value) in exchange.responseFields {
            switch name {
            case ":status": fields.insert((name, value), at: 0)
            case "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade": continue
            default: if !name.hasPrefix(":") { fields.append((name, value)) }
            }
        }
        if let modifier = exchange.control.policy.responseHeaders { fields = Self.modify(fields, modifier) }
        // A head that ended the upstream's stream (gRPC's trailers-only errors) ends the downstream one the same way:
        // grpc-core reads an empty DATA frame with END_STREAM after it as a broken call, not as the status it carries.
        let headersOnly = exchange.responseEnded && exchange.responseBody.isEmpty
        channel.session.respond(stream: exchange.downstreamID, fields: fields, body: !headersOnly)
        channel.flush()
    }

    func responseDataReady(_ exchange: H2CExchange) {
        if exchange.responseEnded, case .responding = exchange.control.state { exchange.control.responseCompleted() }
        channel.session.resume(stream: exchange.downstreamID)
        channel.flush()
    }

    /// The upstream failed this exchange: retried or answered here if nothing was sent yet, else the stream is reset.
    func upstreamFailed(_ exchange: H2CExchange, _ outcome: RetryPolicy.Outcome) {
        exchange.upstream = nil
        guard exchanges[exchange.downstreamID] === exchange else { return }
        exchange.control.upstreamFailed(outcome)
        channel.flush()
    }

    /// The call's status as the answer gave it: in the trailers, or in the head of a trailers-only answer.
    private static func grpcStatus(of exchange: H2CExchange) -> GRPCStatus? {
        let block = exchange.trailers.contains { $0.0 == "grpc-status" } ? exchange.trailers : exchange.responseFields
        guard let code = block.first(where: { $0.0 == "grpc-status" }).flatMap({ Int($0.1) }) else { return nil }
        return GRPCStatus(code: code, message: block.first { $0.0 == "grpc-message" }?.1)
    }

    /// The access log's fields, as HTTP/1.1 keeps them: the normalized path, the first `x-forwarded-for`.
    private func keepLogFields(_ exchange: H2CExchange, _ fields: RequestLogFields) {
        fields.keep(.method, exchange.method)
        fields.keep(.path, exchange.path)
        fields.keep(.authority, exchange.authority)
        for (field, name) in [
            (RequestLogFields.Field.userAgent, "user-agent"), (.forwardedFor, "x-forwarded-for"), (.requestID, "x-request-id"),
        ] {
            if let value = exchange.requestFields.first(where: { $0.0 == name }) { fields.keep(field, value.1) }
        }
    }
}

private extension String {
    func trimmingNewline() -> String { hasSuffix("\n") ? String(dropLast()) : self }
}
