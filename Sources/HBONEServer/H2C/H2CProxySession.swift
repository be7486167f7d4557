import EventLoop
import Filters
import HTTP2
import WaypointCore

/// h2c inside a tunnel (a Service port declared `http2`/`grpc`/`h2c`, or detected from the HTTP/2 preface):
/// a second nghttp2 session runs inside the stream; every inner request is routed like an HTTP/1.1 request
/// (same router, host = the tunnel's service) and proxied to an upstream over HTTP/2 (prior knowledge), so
/// gRPC trailers pass through. Local answers to gRPC requests are gRPC errors (`grpc-status`), not bare statuses.
/// Timeouts and retries follow the route's policy as on HTTP/1.1; a retry replays the request body kept so far
/// and may start before the request has ended, and HTTP/2 adds the refused-stream and gRPC-status conditions.
///
/// Thread: its worker's loop thread only. Ownership: the `ProxyServer` (until closed); it owns its exchanges.
///
/// Size: one state machine whose state is private to it (~630 lines); it shrinks as its exchange logic moves
/// into `Exchange/` (issue 14).
final class H2CProxySession: HTTP2SessionDelegate, DownstreamSession, H2CExchangeOwner {
    let id: Int
    private unowned(unsafe) let server: ProxyServer
    private var channel: HTTP2Channel!
    private let peer: PeerFacts
    private let destination: Destination?
    private let traceparent: [UInt8]
    private var exchanges: [Int32: H2CExchange] = [:]
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
        channel = HTTP2Channel(stream: stream, role: .server, delegate: self)
        channel.onClosed = { [unowned(unsafe) self] in self.channelClosed() }
        if let initialInput, !initialInput.isEmpty { channel.receive(initialInput) } else { channel.flush() }
    }

    func closeWhenIdle() {
        channel.session.goAway()
        channel.flush()
        if exchanges.isEmpty { channel.close() }
    }

    private func channelClosed() {
        guard !closed else { return }
        closed = true
        for exchange in exchanges.values {
            exchange.upstream?.cancel(exchange)
            release(exchange)
        }
        exchanges.removeAll()
        server.sessionClosed(id)
    }

    // MARK: HTTP2SessionDelegate (downstream side)

    func http2BeginHeaders(stream: Int32) {
        if exchanges[stream] == nil { exchanges[stream] = H2CExchange(downstreamID: stream) }
    }

    func http2Header(stream: Int32, name: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer) {
        guard let exchange = exchanges[stream], exchange.upstreamID == 0, !exchange.responseStarted else { return }
        exchange.requestFields.append((String(decoding: name, as: UTF8.self), String(decoding: value, as: UTF8.self)))
    }

    func http2HeadersComplete(stream: Int32, endStream: Bool) {
        guard let exchange = exchanges[stream] else { return }
        if endStream { exchange.requestEnded = true }
        if exchange.upstreamID == 0 && !exchange.responseStarted && !exchange.held && !exchange.record.inFlight {
            route(exchange)
        } else if endStream {
            exchange.upstream?.requestDataReady(exchange)  // request trailers are dropped; the end still counts
            endMirrors(of: exchange)
        }
    }

    func http2Data(stream: Int32, _ bytes: UnsafeRawBufferPointer) {
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
        if let replay = exchange.replay {
            if replay.readableBytes + bytes.count <= exchange.retryPolicy!.replayBound {
                replay.append(bytes)
            } else {
                exchange.replay = nil
                if exchange.held, let outcome = exchange.retriedOutcome { giveUpRetry(exchange, outcome) }
            }
        }
        if exchange.held {
            exchange.requestBody.append(bytes)
            exchange.record.bytesReceived += bytes.count
            return
        }
        guard let upstream = exchange.upstream else {
            channel.session.consume(stream: stream, bytes.count)  // answered locally: the body is dropped
            return
        }
        exchange.requestBody.append(bytes)
        exchange.record.bytesReceived += bytes.count
        upstream.requestDataReady(exchange)
    }

    func http2RemoteEnded(stream: Int32) {
        guard let exchange = exchanges[stream] else { return }
        exchange.requestEnded = true
        exchange.upstream?.requestDataReady(exchange)
        endMirrors(of: exchange)
    }

    func http2StreamClosed(stream: Int32, errorCode: UInt32) {
        guard let exchange = exchanges.removeValue(forKey: stream) else { return }
        if !exchange.responseEnded || errorCode != 0 { exchange.upstream?.cancel(exchange) }
        finish(exchange)
        release(exchange)
    }

    /// The exchange is over: its timers stop, its mirrors end, body bytes it took but never sent on are
    /// credited back (the connection's window must not shrink for good), it leaves the retry budget's counts.
    private func release(_ exchange: H2CExchange) {
        exchange.startTimer?.cancel()
        exchange.tryTimer?.cancel()
        exchange.requestTimer?.cancel()
        endMirrors(of: exchange)
        if exchange.record.bytesReceived > exchange.credited {
            channel.session.consume(stream: exchange.downstreamID, exchange.record.bytesReceived - exchange.credited)
        }
        server.exchangeEnded(&exchange.record, limits: exchange.limits)
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
        guard let exchange = exchanges[stream] else { return .bytes(0, end: true) }
        let n = exchange.responseBody.move(into: buffer)
        if n > 0 {
            exchange.record.bytesSent += n
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
        exchange.record.start = server.loop.now
        var method = "", path = "", authority = ""
        var head = "", contentType = ""
        for (name, value) in exchange.requestFields {
            switch name {
            case ":method": method = value
            case ":path": path = value
            case ":authority": authority = value
            case ":scheme": break
            case "host": if authority.isEmpty { authority = value }
            default:
                if name == "content-type" { contentType = value }
                head += "\(name): \(value)\r\n"
            }
        }
        exchange.record.grpc = contentType.hasPrefix("application/grpc")
        // The same normalization as HTTP/1.1: what is authorized and routed is what the upstream gets.
        guard let normalized = Self.normalize(path, server.settings.pathNormalization) else {
            return replyLocally(exchange, .badRequest(HTTP1Error(status: 400, "invalid request path")))
        }
        path = normalized
        if server.accessLog != nil { keepLogFields(exchange, method: method, path: path, authority: authority) }
        let text = "\(method) \(path.isEmpty ? "/" : path) HTTP/1.1\r\nhost: \(authority)\r\n\(head)\r\n"
        let decision: RouteDecision = Array(text.utf8).withUnsafeBytes { bytes in
            var request = RequestHead()
            guard case .complete = HTTP1Parser.parseRequest(bytes, into: &request) else {
                return .reply(.badRequest(HTTP1Error(status: 400, "malformed request")))
            }
            return server.router.route(request, bytes, destination: destination, peer: peer, labels: &exchange.record.labels)
        }
        switch decision {
        case .reply(let reply):
            replyLocally(exchange, reply)
        case .redirect(let status, let location):
            exchange.record.status = status
            exchange.responseStarted = true
            exchange.responseEnded = true
            channel.session.respond(
                stream: exchange.downstreamID,
                fields: [
                    (":status", String(status)), ("location", String(decoding: location, as: UTF8.self)), ("content-length", "0"),
                ], body: false)
            channel.flush()
        case .respond(let status, let body, let delay):
            exchange.record.flags = "DR"
            guard let delay else { return respond(exchange, status: status, body: body) }
            exchange.delayedResponse = (status, body)
            hold(exchange, for: delay)
        case .forward(let endpoint, let route, let cluster, let policy):
            exchange.record.route = route
            exchange.responseModifier = policy.responseHeaders
            // The route's URLRewrite and RequestHeaderModifier apply here as on HTTP/1.1.
            var upstreamPath = path, upstreamAuthority = authority
            if let rewrite = policy.rewrite {
                if let hostname = rewrite.hostname { upstreamAuthority = String(decoding: hostname, as: UTF8.self) }
                if let modifier = rewrite.path {
                    let query = path.firstIndex(of: "?").map { String(path[$0...]) } ?? ""
                    let bare = String(path.prefix { $0 != "?" })
                    upstreamPath = Array(bare.utf8).withUnsafeBytes { String(decoding: modifier.apply(to: $0), as: UTF8.self) } + query
                }
            }
            var fields = forwardedFields(exchange, method: method, path: upstreamPath, authority: upstreamAuthority)
            if let log = exchange.logFields, log[.requestID].isEmpty, let id = fields.last(where: { $0.0 == "x-request-id" }) {
                log.keep(.requestID, id.1)  // the one generated for the upstream
            }
            if let modifier = policy.requestHeaders { fields = Self.modify(fields, modifier) }
            if let tracer = server.settings.tracer {
                let incoming = fields.last { $0.0 == "traceparent" }?.1 ?? ""
                Array(incoming.utf8).withUnsafeBytes { incoming in
                    server.startSpan(&exchange.record, tracer, traceparent: incoming, protocol: "HTTP/2", peer: peer) {
                        (method, authority, path)
                    }
                }
                if let span = exchange.record.span {  // the span is the upstream's parent
                    let out = ByteBuffer(capacity: 64)
                    span.context.writeTraceparent(into: out)
                    fields.removeAll { $0.0 == "traceparent" }
                    fields.append(("traceparent", String(decoding: out.readable, as: UTF8.self)))
                }
            }
            for mirror in policy.mirrors where server.roll(mirror.percent) {
                startMirror(exchange, fields: fields, cluster: mirror.cluster)
            }
            exchange.record.cluster = cluster
            exchange.record.endpoint = endpoint
            exchange.forwardPolicy = policy
            exchange.requestTimeout = policy.requestTimeout
            if exchange.record.grpc { applyGRPCTimeout(exchange, &fields) }
            exchange.limits = server.router.limits(cluster: cluster)
            exchange.upstreamFields = fields
            exchange.retryPolicy = policy.retry ?? server.settings.defaultRetries
            if let retry = exchange.retryPolicy {
                exchange.replay = ByteBuffer(lazyCapacity: 16 * 1024)
                exchange.retryHistory.start(remoteLocalities: retry.retryRemoteLocalities)
            }
            if let delay = policy.delay, server.roll(delay.percent) {
                server.counters.faultDelays.increment()
                return hold(exchange, for: delay.duration)
            }
            beginForwarding(exchange)
        }
    }

    // MARK: Attempts, timeouts and retries

    /// Istio has Envoy honour a gRPC call's `grpc-timeout` (`max_grpc_timeout` = the route's timeout): the call's
    /// deadline, capped by the route's timeout, bounds all tries (absent, malformed or 0: the route's timeout);
    /// the upstream is told the timeout that applies to its try (the per-try timeout when shorter).
    private func applyGRPCTimeout(_ exchange: H2CExchange, _ fields: inout [(String, String)]) {
        let index = fields.firstIndex { $0.0 == "grpc-timeout" }
        if let index, let asked = GRPCTimeout.parse(fields[index].1), asked > .zero {
            exchange.requestTimeout = exchange.requestTimeout.map { min($0, asked) } ?? asked
        }
        guard let expected = [exchange.requestTimeout, exchange.forwardPolicy.perTryTimeout].compactMap({ $0 }).min(),
            expected > .zero
        else { return }
        if let index { fields.remove(at: index) }
        fields.append(("grpc-timeout", GRPCTimeout.format(expected)))
    }

    /// The first attempt (after any fault delay): the exchange joins the retry budget's counts and the route's
    /// timeout starts (after the delay, as in Envoy).
    private func beginForwarding(_ exchange: H2CExchange) {
        if let limits = exchange.limits, !limits.enterRequest() { return overflow(exchange) }
        server.exchangeStarted(&exchange.record, mayRetry: exchange.retryPolicy != nil)
        if let timeout = exchange.requestTimeout {
            exchange.requestTimer.schedule(
                after: timeout, creating: timer(for: exchange) { session, exchange in session.requestTimedOut(exchange) })
        }
        startAttempt(exchange)
    }

    /// Opens this attempt's upstream stream with the request body received so far.
    private func startAttempt(_ exchange: H2CExchange) {
        guard let pool = server.pool(exchange.record.endpoint) else { return attemptFailed(exchange, .connectFailed) }
        // The endpoint's connections take no more streams and the backend's connection limit is reached.
        if let limits = exchange.limits, !pool.h2cHasCapacity(limits) { return overflow(exchange) }
        guard let upstream = pool.h2cUpstream(limits: exchange.limits) else { return attemptFailed(exchange, .connectFailed) }
        exchange.record.upstreamAddress = pool.addressText
        var fields = exchange.upstreamFields
        fields.append(("x-envoy-attempt-count", String(exchange.record.attempt)))
        upstream.start(exchange, fields: fields, owner: self)
        guard exchange.upstream === upstream else { return }  // refused at once (and already handled)
        if let timeout = exchange.forwardPolicy.perTryTimeout {
            exchange.tryTimer.schedule(
                after: timeout, creating: timer(for: exchange) { session, exchange in session.tryTimedOut(exchange) })
        }
        if !exchange.requestBody.isEmpty || exchange.requestEnded { upstream.requestDataReady(exchange) }
        channel.flush()
    }

    /// 503 overflow: the backend's requests in flight (`http2MaxRequests`) or connections are at their limit.
    private func overflow(_ exchange: H2CExchange) {
        server.counters.upstreamOverflow.increment()
        replyLocally(exchange, .upstreamOverflow)
    }

    /// A timer that acts on the exchange if it still exists when it fires (looked up by stream, never dangling).
    private func timer(for exchange: H2CExchange, _ action: @escaping (H2CProxySession, H2CExchange) -> Void) -> Timer {
        let id = exchange.downstreamID
        return Timer(loop: server.loop) { [unowned(unsafe) self] in
            if let exchange = self.exchanges[id] { action(self, exchange) }
        }
    }

    /// Holds the upstream stream back for `duration` (fault delay, retry backoff), then starts it.
    private func hold(_ exchange: H2CExchange, for duration: Duration) {
        exchange.held = true
        exchange.startTimer.schedule(after: duration, creating: timer(for: exchange) { session, exchange in session.holdEnded(exchange) })
    }

    private func holdEnded(_ exchange: H2CExchange) {
        guard exchange.held else { return }
        exchange.held = false
        if let (status, body) = exchange.delayedResponse { return respond(exchange, status: status, body: body) }
        guard exchange.record.inFlight else { return beginForwarding(exchange) }
        // A retry: the whole body again, to another endpoint when one is ready.
        exchange.retriedOutcome = nil
        exchange.requestBody.clear()
        if let replay = exchange.replay { exchange.requestBody.append(replay.readable) }
        exchange.sentInAttempt = 0
        exchange.record.endpoint = server.router.alternateEndpoint(
            cluster: exchange.record.cluster, failed: exchange.record.endpoint,
            history: &exchange.retryHistory)
        startAttempt(exchange)
    }

    /// An attempt ended with no response to pass on: retried when the policy allows, else answered here.
    private func attemptFailed(_ exchange: H2CExchange, _ outcome: RetryPolicy.Outcome) {
        if retry(exchange, outcome) { return }
        exchange.upstream?.cancel(exchange)
        answerFailure(exchange, outcome)
    }

    private func answerFailure(_ exchange: H2CExchange, _ outcome: RetryPolicy.Outcome) {
        exchange.tryTimer?.cancel()
        switch outcome {
        case .connectFailed:
            server.counters.upstreamConnectFailures.increment()
            replyLocally(exchange, .upstreamConnectError)
        case .perTryTimeout:
            replyLocally(exchange, .upstreamTimeout)
        default:
            replyLocally(exchange, .upstreamReset)
        }
    }

    /// A retry was waiting when the request body outgrew the replay bound: the failure it retried is answered.
    private func giveUpRetry(_ exchange: H2CExchange, _ outcome: RetryPolicy.Outcome) {
        exchange.record.retryNote = "not retried: request body beyond the replay bound"
        exchange.held = false
        exchange.startTimer?.cancel()
        answerFailure(exchange, outcome)
    }

    /// Starts another try when the policy, the attempt count, the replay bound and the budget allow it and
    /// nothing of the response went downstream yet. True when a retry is under way (the failed stream is reset).
    private func retry(_ exchange: H2CExchange, _ outcome: RetryPolicy.Outcome) -> Bool {
        guard exchange.record.inFlight, !exchange.responseStarted,
            let backoff = server.retryBackoff(
                after: outcome, policy: exchange.retryPolicy, replay: exchange.replay != nil ? .kept : .beyondBound,
                record: &exchange.record, limits: exchange.limits)
        else { return false }
        exchange.upstream?.cancel(exchange)
        exchange.tryTimer?.cancel()
        exchange.responseFields.removeAll()
        exchange.trailers.removeAll()
        exchange.responseBody.clear()
        exchange.responseEnded = false
        exchange.retriedOutcome = outcome
        hold(exchange, for: backoff)
        return true
    }

    /// A try got no response head within `perTryTimeout`: retried when the policy says so, else 504.
    private func tryTimedOut(_ exchange: H2CExchange) {
        guard !exchange.responseStarted, !exchange.held, exchange.upstream != nil else { return }
        attemptFailed(exchange, .perTryTimeout)
    }

    /// The route's timeout (all tries together) expired: 504 when nothing was answered yet, else the stream is
    /// reset (a cut-off response must not look complete).
    private func requestTimedOut(_ exchange: H2CExchange) {
        guard !exchange.responseEnded else { return }
        exchange.held = false
        exchange.startTimer?.cancel()
        exchange.tryTimer?.cancel()
        exchange.upstream?.cancel(exchange)
        exchange.record.flags = "UT"
        if exchange.responseStarted {
            channel.session.reset(stream: exchange.downstreamID, code: .cancel)
            channel.flush()
        } else {
            replyLocally(exchange, .upstreamTimeout)
        }
    }

    /// A copy of the request, with Envoy's `-shadow` authority, on an HTTP/2 stream to an endpoint of the mirror
    /// cluster; its body follows the original's as it arrives, and its answer is dropped.
    private func startMirror(_ exchange: H2CExchange, fields: [(String, String)], cluster: Int32) {
        guard let endpoint = server.router.pickEndpoint(inCluster: cluster), let pool = server.pool(endpoint),
            let upstream = pool.h2cUpstream(limits: nil)
        else {
            server.counters.mirrorsSkipped.increment()
            return
        }
        let copy = H2CExchange(downstreamID: 0)
        copy.requestEnded = exchange.requestEnded
        let shadowed = fields.map { name, value in
            guard name == ":authority" else { return (name, value) }
            let colon = value.lastIndex(of: ":").flatMap { value[$0...].contains("]") ? nil : $0 } ?? value.endIndex
            return (name, value[..<colon] + "-shadow" + value[colon...])
        }
        upstream.start(copy, fields: shadowed, owner: server.h2cMirrorSink)
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

    /// Answers without an upstream: an HTTP status with a short body, or for gRPC a trailers-only response with
    /// the matching `grpc-status` (gRPC's HTTP-to-status mapping: 404 → UNIMPLEMENTED, 503 → UNAVAILABLE, ...).
    private func replyLocally(_ exchange: H2CExchange, _ reply: LocalReply) {
        exchange.record.flags = reply.responseFlags
        respond(exchange, status: reply.status, body: Array((reply.body.description.trimmingNewline() + "\n").utf8))
    }

    /// A complete answer of the proxy's own; to a gRPC caller as a gRPC status with the body as its message.
    private func respond(_ exchange: H2CExchange, status: Int, body: [UInt8]) {
        exchange.record.status = status
        exchange.responseStarted = true
        exchange.responseEnded = true
        if exchange.record.grpc {
            exchange.responseFields = [
                (":status", "200"), ("content-type", "application/grpc"),
                ("grpc-status", String(Self.grpcStatus(for: status))),
                ("grpc-message", String(decoding: body, as: UTF8.self).trimmingNewline()),
            ]
            channel.session.respond(stream: exchange.downstreamID, fields: exchange.responseFields, body: false)
        } else {
            exchange.responseBody.append(body)
            channel.session.respond(
                stream: exchange.downstreamID,
                fields: [
                    (":status", String(status)), ("content-type", "text/plain"), ("content-length", String(body.count)),
                ], body: !body.isEmpty)
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
        if retry(exchange, .status(status)) { return }
        if let grpcStatus, retry(exchange, .grpcStatus(grpcStatus)) { return }
        exchange.tryTimer?.cancel()
        exchange.responseStarted = true
        var fields: [(String, String)] = []
        for (name, value) in exchange.responseFields {
            switch name {
            case ":status": exchange.record.status = Int(value) ?? 502; fields.insert((name, value), at: 0)
            case "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade": continue
            default: if !name.hasPrefix(":") { fields.append((name, value)) }
            }
        }
        if let modifier = exchange.responseModifier { fields = Self.modify(fields, modifier) }
        // A head that ended the upstream's stream (gRPC's trailers-only errors) ends the downstream one the same way:
        // grpc-core reads an empty DATA frame with END_STREAM after it as a broken call, not as the status it carries.
        let headersOnly = exchange.responseEnded && exchange.responseBody.isEmpty
        channel.session.respond(stream: exchange.downstreamID, fields: fields, body: !headersOnly)
        channel.flush()
    }

    func responseDataReady(_ exchange: H2CExchange) {
        channel.session.resume(stream: exchange.downstreamID)
        channel.flush()
    }

    /// The upstream failed this exchange: retried or answered here if nothing was sent yet, else the stream is reset.
    func upstreamFailed(_ exchange: H2CExchange, _ outcome: RetryPolicy.Outcome) {
        exchange.upstream = nil
        guard exchanges[exchange.downstreamID] === exchange else { return }
        if exchange.responseStarted {
            exchange.record.flags = "UC"
            server.counters.upstreamResetsMidResponse.increment()
            channel.session.reset(stream: exchange.downstreamID, code: .internalError)
            channel.flush()
        } else {
            attemptFailed(exchange, outcome)
        }
    }

    private func finish(_ exchange: H2CExchange) {
        server.report(
            exchange.record, grpc: exchange.record.grpc ? Self.grpcStatus(of: exchange) : nil, protocol: "HTTP/2", peer: peer,
            principal: principalID, log: exchange.logFields)
    }

    /// The call's status as the answer gave it: in the trailers, or in the head of a trailers-only answer.
    private static func grpcStatus(of exchange: H2CExchange) -> GRPCStatus? {
        let block = exchange.trailers.contains { $0.0 == "grpc-status" } ? exchange.trailers : exchange.responseFields
        guard let code = block.first(where: { $0.0 == "grpc-status" }).flatMap({ Int($0.1) }) else { return nil }
        return GRPCStatus(code: code, message: block.first { $0.0 == "grpc-message" }?.1)
    }

    /// The access log's fields, as HTTP/1.1 keeps them: the normalized path, the first `x-forwarded-for`.
    private func keepLogFields(_ exchange: H2CExchange, method: String, path: String, authority: String) {
        let fields = RequestLogFields()
        fields.keep(.method, method)
        fields.keep(.path, path)
        fields.keep(.authority, authority)
        for (field, name) in [
            (RequestLogFields.Field.userAgent, "user-agent"), (.forwardedFor, "x-forwarded-for"), (.requestID, "x-request-id"),
        ] {
            if let value = exchange.requestFields.first(where: { $0.0 == name }) { fields.keep(field, value.1) }
        }
        exchange.logFields = fields
    }
}

private extension String {
    func trimmingNewline() -> String { hasSuffix("\n") ? String(dropLast()) : self }
}
