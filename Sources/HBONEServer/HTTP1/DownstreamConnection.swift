import EventLoop
import Filters
import WaypointCore

/// One downstream HTTP/1.1 session (a plaintext connection, or the HTTP/1.1 carried by an HBONE tunnel): reads
/// requests, one exchange at a time, and streams each through an upstream connection under backpressure.
/// Pipelined requests wait in `input` and are answered in order.
///
/// An exchange ends when the request body has been read and the response fully queued; only then does the
/// next request start. Bodies are never buffered whole: at most `pendingOutputBound` bytes wait per direction
/// before the sending side stops being read.
///
/// Thread: its worker's loop thread only. Ownership: the `ProxyServer` (until `close()`); it owns its byte
/// stream, and its upstream connection while an exchange is in flight.
///
/// What happens to each request (routing, waits, tries, retries, timeouts, local answers, the report) is its
/// `Exchange`'s to decide; this type is the HTTP/1.1 transport of it: it parses heads, writes them in HTTP/1.1
/// form and moves bodies under backpressure.
///
/// Size: ~750 lines of one codec state machine (request and response framing, pipelining, backpressure both
/// ways, the replay and mirrors, the switch to a relay after `101`); split across files, its private state would
/// be open to the whole module.
final class DownstreamConnection: ByteStreamHandler, DownstreamSession, ExchangeTransport {
    /// Why reading from the client is paused; reading resumes when the set is empty.
    struct PauseReasons: OptionSet {
        let rawValue: UInt8
        /// The upstream has too many of our bytes pending.
        static let upstreamBackpressure = PauseReasons(rawValue: 1)
        /// `input` is full of pipelined requests waiting for the current exchange.
        static let inputFull = PauseReasons(rawValue: 2)
        /// The client sent EOF or we are closing: nothing more to read.
        static let finished = PauseReasons(rawValue: 4)
    }

    let id: Int
    private let stream: any ByteStream
    private unowned(unsafe) let server: ProxyServer
    let peer: PeerFacts
    /// For a tunnel: the service (or workload) its `:authority` named; every request is routed by it.
    private var destination: Destination?
    /// The tunnel's `traceparent`, passed on to requests that carry none.
    private let traceparent: [UInt8]
    private let clientIP: [UInt8]
    private let input: ByteBuffer
    private let output: ByteBuffer
    private lazy var timer = Timer(loop: server.loop) { [unowned(unsafe) self] in self.checkIdle() }
    private var paused: PauseReasons = []
    /// We stopped reading the upstream because `output` is over the bound.
    private var upstreamPaused = false
    private var lastActivity: Double
    /// When the first byte of the head being read arrived.
    private var headStartedAt = 0.0
    private var closing = false
    private var closed = false
    private var clientClosed = false

    // MARK: Exchange state (reset per request)
    /// The current request, from its head to its report.
    private let exchange: Exchange
    private var head = RequestHead()
    private var scanned = 0
    /// The length of the current request's head while it still waits at the start of `input` (routing, a fault
    /// delay, a wait for a connection); 0 once it went upstream or was answered.
    private var headLength = 0
    private var keepAlive = true
    private var requestDone = false
    private var requestBody = BodyTracker(.none)
    private var discardingBody = false
    private var requestWasHead = false
    /// This request's `100 Continue` went out (the body was collected for an external check first).
    private var continued = false
    /// The request offers an `Upgrade` that goes upstream; a `101` answer turns the session into a `ByteRelay`.
    private var upgrading = false
    /// The connection carrying the current try; its pool counts it as a request in flight (LEAST_REQUEST).
    private var upstream: UpstreamConnection? {
        didSet {
            guard oldValue !== upstream else { return }
            oldValue?.pool.requestsInFlight -= 1
            upstream?.pool.requestsInFlight += 1
        }
    }
    /// The request as sent upstream (head, then body up to the retry policy's bound), kept while it may be
    /// replayed: on a fresh connection when a reused one turns out stale, or by a retry.
    private let replayBuffer: ByteBuffer
    /// Where the head ends in `replayBuffer` (the retry's attempt header goes before its blank line).
    private var replayHeadLength = 0
    /// A stale pooled connection may be replaced once (bodiless requests).
    private var replayable = false
    /// The exchange may still be retried: `replayBuffer` holds the whole request.
    private var retryable = false
    /// Which of the route's mirrors (bit i: `policy.mirrors[i]`) get a copy once the request is complete
    /// (`replayBuffer` holds it until then).
    private var mirroring: UInt32 = 0
    /// The body outgrew the replay bound, so a failure that called for a retry was returned (access log says so).
    private var bodyTooBigToRetry = false
    private var response = ResponseHead()
    private var responseScanned = 0
    private var responseBody = BodyTracker(.none)

    /// `initialInput`: bytes already read from the stream (protocol detection looked at them).
    /// What the access log and spans call the client's protocol: HTTP/1.1, or HTTP/2 for a WebSocket bridged
    /// from an extended CONNECT.
    private let protocolName: StaticString

    init(
        id: Int, stream: any ByteStream, peer: PeerFacts, destination: Destination? = nil, traceparent: [UInt8] = [],
        initialInput: UnsafeRawBufferPointer? = nil, protocol: StaticString = "HTTP/1.1", server: ProxyServer
    ) {
        self.id = id
        protocolName = `protocol`
        self.stream = stream
        self.server = server
        self.peer = peer
        exchange = Exchange(server: server, peer: peer, principal: server.counters.istio.intern(source: peer), protocol: `protocol`)
        self.destination = destination
        self.traceparent = traceparent
        clientIP = Array(peer.sourceIP.utf8)
        // Lazy: an idle tunnel holds no buffer memory until its first request.
        input = ByteBuffer(lazyCapacity: Self.inputSize)
        output = ByteBuffer(lazyCapacity: 16 * 1024)
        replayBuffer = ByteBuffer(lazyCapacity: 512)
        lastActivity = server.loop.now
        let tick = min(server.settings.downstreamIdleTimeout, server.settings.headerTimeout) / 4
        timer.scheduleRepeating(every: max(tick, .milliseconds(50)))
        exchange.transport = self
        stream.handler = self
        stream.setReading(true)
        if let initialInput, !initialInput.isEmpty {
            headStartedAt = server.loop.now
            input.append(initialInput)
        }
    }

    deinit {
        if !closed { stream.close(graceful: false) }
    }

    /// Handles bytes given as `initialInput`; call once after `init`.
    func start() {
        if !input.isEmpty { processInput() }
    }

    func streamReadable() { readable() }
    func streamWritable() { writable() }

    var isIdle: Bool { exchange.isIdle && input.isEmpty && output.isEmpty }

    // MARK: - Downstream I/O

    private func readable() {
        var space = input.writableSpace()
        if space.count == 0 {
            // Grow only while a head is still incomplete; otherwise wait for the exchange to drain it.
            if exchange.isIdle && input.capacity < server.settings.maxHeadBytes + 4096 {
                input.reserve(input.capacity)
                space = input.writableSpace()
            } else {
                pause(.inputFull)
                return
            }
        }
        switch stream.read(into: space) {
        case .bytes(let n):
            if input.isEmpty && exchange.isIdle { headStartedAt = server.loop.now }
            // A read that filled the buffer while a body streams: the next may take more at once (fewer reads
            // here, fewer and larger writes upstream), up to `maxBodyInput`; it shrinks back between requests.
            input.commitWrite(n)
            if n == space.count && !exchange.isIdle && input.capacity < Self.maxBodyInput { input.reserve(input.capacity) }
            lastActivity = server.loop.now
            processInput()
        case .wouldBlock:
            return
        case .eof:
            clientFinished()
        case .failed:
            abort()
        }
    }

    private func writable() {
        flushOutput()
        guard !closed else { return }
        if upstreamPaused && output.readableBytes <= server.settings.pendingOutputBound {
            upstreamPaused = false
            upstream?.resumeReading()
            responseProgress()  // bytes may already wait in the upstream buffer
        } else if closing && output.isEmpty {
            close()
        }
    }

    /// Writes pending output; arms the write watcher for what the socket does not take now.
    private func flushOutput() {
        // While the upstream is paused for our sake, stay armed: `writable()` is the one place that resumes it,
        // whoever drained the output.
        guard let written = stream.writeOut(output, disarmWhenEmpty: !upstreamPaused) else { return abort() }
        if written > 0 { lastActivity = server.loop.now }
    }

    private func pause(_ reason: PauseReasons) {
        paused.insert(reason)
        stream.setReading(false)
    }

    private func resume(_ reason: PauseReasons) {
        paused.remove(reason)
        if paused.isEmpty && !closed { stream.setReading(true) }
    }

    /// The client half-closed. Requests it sent completely are still answered (pipelined ones included);
    /// a request cut off mid-body cannot be, so the connection is dropped.
    private func clientFinished() {
        pause(.finished)
        clientClosed = true
        if !exchange.isIdle && !requestDone {
            exchange.record.flags = "DC"
            if !exchange.hasResponded {
                exchange.record.status = 0
                finishExchange()
            }
            abort()
            return
        }
        processInput()
    }

    private func checkIdle() {
        guard exchange.isIdle else { return }
        let now = server.loop.now
        if !input.isEmpty && now - headStartedAt >= server.settings.headerTimeout.seconds {
            reject(HTTP1Error(status: 408, "request header timeout"))
            processInput()
        } else if now - lastActivity >= server.settings.downstreamIdleTimeout.seconds {
            close()
        }
    }

    // MARK: - Requests

    /// Starts exchanges for complete heads in `input` and moves request body bytes upstream.
    private func processInput() {
        if exchange.collectsBody { exchange.bodyArrived() }
        while !closed && !exchange.holdsRequest {
            if exchange.isIdle {
                guard !closing else { break }
                guard startExchange() else {
                    if clientClosed { closing = true }  // no complete request left and none can come
                    break
                }
                continue
            }
            if !requestDone { pumpRequestBody() }
            if mirroring != 0 && requestDone { sendMirrors() }
            if !requestDone || !exchange.isComplete { break }
            finishExchange()
        }
        if !closed {
            if paused.contains(.inputFull) && input.readableBytes < input.capacity { resume(.inputFull) }
            flushOutput()
            upstream?.flush()
            if closing && output.isEmpty { close() }
        }
    }

    /// Parses the next head and routes it (or rejects it). False when the head is still incomplete.
    private func startExchange() -> Bool {
        // RFC 9112 §2.2: ignore empty lines before a request line.
        while let first = input.readable.first, first == 0x0D || first == 0x0A {
            input.consume(1)
            scanned = 0
        }
        guard !input.isEmpty else { return false }
        let bytes = input.readable
        guard let length = HTTP1Parser.findHeadEnd(bytes, scanned: &scanned) else {
            guard input.readableBytes >= server.settings.maxHeadBytes else { return false }
            reject(HTTP1Error(status: 431, "request head too large"))
            return true
        }
        scanned = 0
        guard length <= server.settings.maxHeadBytes else {
            reject(HTTP1Error(status: 431, "request head too large"))
            return true
        }
        exchange.start()
        let headBytes = UnsafeRawBufferPointer(rebasing: bytes[0..<length])
        if case .failed(let error) = HTTP1Parser.parseRequest(headBytes, into: &head) {
            reject(error)
            return true
        }
        guard normalizePath() else {
            reject(HTTP1Error(status: 400, "invalid request path"))
            return true
        }
        keepAlive = head.keepAlive && !server.draining
        requestWasHead = head.isHeadMethod
        requestBody = BodyTracker(head.framing)
        requestDone = requestBody.isComplete
        continued = false
        headLength = length
        exchange.record.bytesReceived = length
        if let log = exchange.log { keepLogFields(headBytes, log) }
        exchange.decide(server.router.route(head, headBytes, destination: &destination, peer: peer))
        return true
    }

    /// Normalizes the request path in place (normalization never lengthens it; Istio's rules, see
    /// `PathNormalization`), moves the query behind it and drops any `#fragment`, so that routing, authorization
    /// and the upstream all see the same path. False when the path must be refused (400).
    private func normalizePath() -> Bool {
        guard head.path.count > 0 else { return true }
        let base = input.base + input.readerIndex
        let pathStart = Int(head.path.start)
        let pathEnd = pathStart + Int(head.path.count)
        let first = base.load(fromByteOffset: pathStart, as: UInt8.self)
        guard first == 0x2F || first == 0x5C else { return true }  // asterisk-form (`OPTIONS *`)
        let path = UnsafeMutableRawBufferPointer(start: base + pathStart, count: pathEnd - pathStart)
        guard let length = server.settings.pathNormalization.normalize(path) else { return false }
        let targetEnd = Int(head.target.start + head.target.count)
        var queryEnd = pathEnd
        if pathEnd < targetEnd && base.load(fromByteOffset: pathEnd, as: UInt8.self) == 0x3F {  // "?query[#fragment]"
            queryEnd = pathEnd + 1
            while queryEnd < targetEnd && base.load(fromByteOffset: queryEnd, as: UInt8.self) != 0x23 { queryEnd += 1 }
        }
        if length != pathEnd - pathStart && queryEnd > pathEnd {
            (base + pathStart + length).copyMemory(from: base + pathEnd, byteCount: queryEnd - pathEnd)
        }
        head.path.count = Int32(length)
        head.target.count = Int32(length + queryEnd - pathEnd)
        return true
    }

    /// A request that cannot be parsed: answer and close, since where it ends is unknown.
    private func reject(_ error: HTTP1Error) {
        server.logger.debug(
            "rejected request: \(error.status) \(error.reason)",
            metadata: ["connection.id": "\(id)", "client": "\(peer.sourceAddress)"])
        if exchange.isIdle { exchange.start() }
        keepAlive = false
        requestDone = true
        input.clear()
        headLength = 0
        pause(.finished)
        exchange.decide(RouteDecision(.reply(.badRequest(error))))
    }

    // MARK: - ExchangeTransport

    var needsConnectionPerTry: Bool { true }

    var replay: Replay {
        guard requestDone else { return .impossible }
        return retryable ? .kept : bodyTooBigToRetry ? .beyondBound : .impossible
    }

    /// Opens the request's span (the head still waits in `input`).
    func prepareForwarding() {
        guard let tracer = server.settings.tracer else { return }
        let headBytes = UnsafeRawBufferPointer(rebasing: input.readable[0..<headLength])
        let incoming = head.firstHeader(Self.traceparentName, in: headBytes) ?? UnsafeRawBufferPointer(start: nil, count: 0)
        server.startSpan(&exchange.record, tracer, traceparent: incoming, protocol: "\(protocolName)", peer: peer) {
            (
                String(decoding: head.method.bytes(in: headBytes), as: UTF8.self),
                String(decoding: head.host.bytes(in: headBytes), as: UTF8.self),
                String(decoding: head.target.bytes(in: headBytes), as: UTF8.self)
            )
        }
    }

    func sendTry(to pool: UpstreamPool) -> TryStart {
        guard let connection = pool.checkout(for: self, limits: exchange.limits) else { return .connectFailed }
        upstream = connection
        if headLength > 0 { sendFirstTry(on: connection) } else { sendRetry(on: connection) }
        return .sent
    }

    func dropTry() {
        responseScanned = 0
        guard let upstream else { return }
        upstream.owner = nil
        upstream.close()
        self.upstream = nil
    }

    /// Writes the answer; the request's head is consumed (if it still waits) and its body read and dropped.
    func answer(_ answer: LocalAnswer) {
        discardingBody = true
        var challenge: [UInt8]? = nil
        if case .reply(.jwtRejected) = answer, headLength > 0 {
            let bytes = UnsafeRawBufferPointer(rebasing: input.readable[0..<headLength])
            challenge = LocalReply.bearerChallenge(host: head.host.bytes(in: bytes), target: head.target.bytes(in: bytes))
        }
        if headLength > 0 {
            input.consume(headLength)
            headLength = 0
        }
        let before = output.readableBytes
        switch answer {
        case .reply(let reply):
            if !requestDone && reply.status >= 500 { keepAlive = false }
            // A 100-continue client that is refused sends no body; do not wait for one.
            if head.expectsContinue && !requestDone {
                keepAlive = false
                requestDone = true
                pause(.finished)
            }
            ForwardingHeaders.writeLocalReply(reply, close: !keepAlive, challenge: challenge, into: output)
        case .redirect(let status, let location):
            if !requestDone { keepAlive = false }
            ForwardingHeaders.writeRedirect(status: status, location: location, close: !keepAlive, into: output)
        case .respond(let status, let body):
            if !requestDone { keepAlive = false }
            ForwardingHeaders.writeResponse(status: status, body: body, omitBody: requestWasHead, close: !keepAlive, into: output)
        case .denied(let status, let headers, let body):
            if !requestDone { keepAlive = false }
            ForwardingHeaders.writeResponse(
                status: status, headers: headers, body: body, omitBody: requestWasHead, close: !keepAlive, into: output)
        }
        exchange.record.bytesSent = output.readableBytes - before
    }

    /// The client must see a broken response, never one that looks complete: the connection is reset.
    func breakResponse(timedOut: Bool) {
        keepAlive = false
        flushOutput()
        finishExchange()
        abort()
    }

    func exchangeProgressed() { processInput() }

    /// The body so far, decoded from the bytes after the head in `input` (they stay there for the upstream). The
    /// input grows to hold the head, `limit` + 1 body bytes and, chunked, their framing; a body that does not fit
    /// then exceeds the limit. A `100 Continue` goes out first when the client waits for one.
    func requestBody(upTo limit: Int) -> ([UInt8], BodyExtent) {
        if head.expectsContinue && !continued {
            continued = true
            output.append("HTTP/1.1 100 Continue\r\n\r\n")
        }
        let held = UnsafeRawBufferPointer(rebasing: input.readable[headLength...])
        var tracker = requestBody
        // Malformed chunking: the check goes without a body, and forwarding refuses the request (400).
        guard let take = tracker.consume(held) else { return ([], .ended) }
        // Decided by the count alone: the body is copied (and decoded) once, when it is wanted.
        let extent: BodyExtent
        if tracker.bodyBytes > limit {
            extent = .exceeds
        } else if tracker.isComplete {
            extent = .ended
        } else {
            let capacity = headLength + (requestBody.framing == .chunked ? 2 * limit + 4096 : limit + 1)
            guard input.readableBytes >= capacity else {
                if input.readableBytes == input.capacity { input.reserve(min(input.capacity, capacity - input.readableBytes)) }
                return ([], .more)
            }
            extent = .exceeds
        }
        let framed = UnsafeRawBufferPointer(rebasing: held[0..<take])
        let body = requestBody.framing == .chunked ? ChunkedScanner.decode(framed) : Array(framed)
        return (Array(body.prefix(limit)), extent)
    }

    /// The first try: the head, with the forwarding headers and the route's header changes, then the body as it
    /// comes; kept for a replay (a stale connection, a retry) or the mirrors while it may be needed.
    private func sendFirstTry(on connection: UpstreamConnection) {
        let headBytes = UnsafeRawBufferPointer(rebasing: input.readable[0..<headLength])
        let policy = exchange.policy
        let start = connection.output.writerIndex
        let upstreamTraceparent =
            exchange.record.span.map { span -> [UInt8] in
                let out = ByteBuffer(capacity: 64)
                span.context.writeTraceparent(into: out)
                return Array(out.readable)
            } ?? traceparent
        // An upgrade offer without a body (a WebSocket handshake) goes on; otherwise it is dropped as hop-by-hop.
        upgrading = server.settings.upgrades && !head.upgrade.isEmpty && requestDone
        clientIP.withUnsafeBytes { ip in
            upstreamTraceparent.withUnsafeBytes { trace in
                ForwardingHeaders.writeRequest(
                    head, headBytes, clientIP: ip, proto: server.settings.forwardedProto, traceparent: trace,
                    replaceTraceparent: exchange.record.span != nil, upgrade: upgrading,
                    modifier: policy.requestHeaders, rewrite: policy.rewrite,
                    into: connection.output
                ) { [unowned(unsafe) self] out in
                    let start = out.readableBytes
                    self.server.writeRequestID(out)
                    self.exchange.log?.keep(.requestID, UnsafeRawBufferPointer(rebasing: out.readable[start...]))
                }
            }
        }
        replayable = connection.reused && requestDone
        retryable = exchange.retryPolicy != nil && !head.expectsContinue
        mirroring = 0
        for (i, mirror) in policy.mirrors.enumerated() where server.roll(mirror.percent) { mirroring |= 1 << i }
        if replayable || retryable || mirroring != 0 {
            replayBuffer.clear()
            replayBuffer.append(UnsafeRawBufferPointer(rebasing: connection.output.readable[(start - connection.output.readerIndex)...]))
            replayHeadLength = replayBuffer.readableBytes
        }
        if head.expectsContinue && !requestDone && !continued {
            // We answer the expectation ourselves (the Expect header is not forwarded).
            output.append("HTTP/1.1 100 Continue\r\n\r\n")
        }
        input.consume(headLength)
        headLength = 0
    }

    /// A retry: the replayed request, with `x-envoy-attempt-count`.
    private func sendRetry(on connection: UpstreamConnection) {
        let bytes = replayBuffer.readable
        let headWithoutAttempt = replayHeadLength - 2 - ForwardingHeaders.firstAttempt.utf8CodeUnitCount
        connection.output.append(UnsafeRawBufferPointer(rebasing: bytes[0..<headWithoutAttempt]))
        connection.output.append("x-envoy-attempt-count: ")
        connection.output.appendDecimal(exchange.record.attempt)
        connection.output.append("\r\n\r\n")
        connection.output.append(UnsafeRawBufferPointer(rebasing: bytes[replayHeadLength...]))
        connection.flush()
    }

    private static let traceparentName = Array("traceparent".utf8)

    /// The largest request body copied to a mirror when no retry policy sets the bound.
    static let mirrorBodyBound = 64 * 1024
    /// The input buffer's size for heads and small bodies, and how far it grows while a large body streams in.
    static let inputSize = 16 * 1024
    static let maxBodyInput = 256 * 1024

    /// The complete request, as sent upstream, to an endpoint of each chosen mirror.
    private func sendMirrors() {
        let bytes = replayBuffer.readable
        exchange.renumber()  // the body may have taken long enough for a reload
        for (i, mirror) in exchange.policy.mirrors.enumerated() where mirroring & (1 << i) != 0 {
            guard let endpoint = server.router.pickEndpoint(inCluster: mirror.cluster) else {
                server.counters.mirrorsSkipped.increment()
                continue
            }
            server.upstreams.sendMirror(
                head: UnsafeRawBufferPointer(rebasing: bytes[0..<replayHeadLength]),
                body: UnsafeRawBufferPointer(rebasing: bytes[replayHeadLength...]), to: endpoint)
        }
        mirroring = 0
    }

    /// Moves body bytes of the current request from `input` to the upstream (or discards them).
    private func pumpRequestBody() {
        while !requestDone && !input.isEmpty {
            if let upstream, !discardingBody, upstream.output.readableBytes >= server.settings.pendingOutputBound {
                // Pause only if the socket really is full: then its write watcher is armed and will resume us.
                upstream.flush()
                if upstream.output.readableBytes >= server.settings.pendingOutputBound {
                    pause(.upstreamBackpressure)
                    return
                }
            }
            let available = input.readable
            guard let take = requestBody.consume(available) else {
                // Malformed chunked framing: where this request ends, and the next begins, is unknown.
                keepAlive = false
                if !exchange.hasResponded {
                    requestDone = true
                    pause(.finished)
                    input.clear()
                    exchange.refuse(.badRequest(HTTP1Error(status: 400, "malformed chunked body")))
                } else {
                    abort()
                }
                return
            }
            requestDone = requestBody.isComplete
            if !discardingBody, let upstream {
                let chunk = UnsafeRawBufferPointer(rebasing: available[0..<take])
                upstream.output.append(chunk)
                if retryable || mirroring != 0 {
                    // Kept for a replay (or the mirror) while small; a larger body is streamed only, not retried
                    // and not mirrored.
                    if replayBuffer.readableBytes + take <= exchange.retryPolicy?.replayBound ?? Self.mirrorBodyBound {
                        replayBuffer.append(chunk)
                    } else {
                        if retryable { bodyTooBigToRetry = true }
                        if mirroring != 0 { server.counters.mirrorsSkipped.increment() }
                        retryable = false
                        mirroring = 0
                    }
                }
            }
            exchange.record.bytesReceived += take
            input.consume(take)
        }
        if paused.contains(.upstreamBackpressure) && (upstream?.output.readableBytes ?? 0) < server.settings.pendingOutputBound {
            resume(.upstreamBackpressure)
        }
    }

    private func finishExchange() {
        if let upstream {
            upstream.owner = nil
            let spent =
                exchange.limits.map {
                    ($0.settings.maxRequestsPerConnection.map { $0 > 0 && upstream.requestsServed >= $0 } ?? false)
                        || server.upstreams.shouldReleaseConnection($0)
                } ?? false
            if exchange.isComplete && requestDone && response.keepAlive && upstream.input.isEmpty && upstream.isOpen && !spent {
                upstream.pool.checkin(upstream)
            } else {
                upstream.close()
            }
            self.upstream = nil
        }
        exchange.finish()
        input.shrink(above: Self.inputSize)
        retryable = false
        bodyTooBigToRetry = false
        upgrading = false
        requestDone = false
        discardingBody = false
        replayable = false
        responseScanned = 0
        upstreamPaused = false
        headStartedAt = server.loop.now
        if !keepAlive {
            closing = true
            pause(.finished)
        }
    }

    // MARK: - Responses (called by the upstream connection)

    func upstreamReadable() { responseProgress() }

    /// Moves what the upstream sent downstream and, when that ends the exchange, starts the next one.
    private func responseProgress() {
        pumpResponse()
        guard !closed else { return }  // switched protocols: a relay has the streams now
        if exchange.isComplete && requestDone { processInput() } else { flushOutput() }
        if closing && output.isEmpty { close() }
    }

    func upstreamDrained() {
        if paused.contains(.upstreamBackpressure) {
            resume(.upstreamBackpressure)
            processInput()
        }
    }

    func upstreamFailed(_ connection: UpstreamConnection, _ failure: UpstreamConnection.Failure) {
        guard connection === upstream else { return }
        upstream = nil
        if exchange.hasResponded {
            responseBody.connectionClosed()
            if responseBody.isComplete && failure == .reset {
                // The body of a close-delimited response ends with the connection.
                if !exchange.isComplete { exchange.responseCompleted() }
                if requestDone { processInput() }
                return
            }
            server.logger.debug(
                "upstream failed mid-response; aborting the client connection",
                metadata: ["connection.id": "\(id)", "upstream": "\(connection.pool.addressText)"])
            exchange.upstreamFailed(.reset)
            return
        }
        if failure == .reset && replayable, let fresh = connection.pool.checkout(for: self, limits: exchange.limits) {
            // A pooled connection closed by the upstream just as we reused it: replay once on a new connection.
            replayable = false
            upstream = fresh
            fresh.output.append(replayBuffer.readable)
            return
        }
        server.logger.debug(
            "upstream failed before the response head: \(failure)",
            metadata: ["connection.id": "\(id)", "upstream": "\(connection.pool.addressText)"])
        exchange.upstreamFailed(failure == .connectFailed ? .connectFailed : .reset)
        processInput()
    }

    /// Parses the response head and moves body bytes downstream, bounded by `pendingOutputBound`.
    private func pumpResponse() {
        guard let upstream, exchange.isForwarding else { return }
        let source = upstream.input
        if case .trying = exchange.state {
            while true {
                let bytes = source.readable
                guard let length = HTTP1Parser.findHeadEnd(bytes, scanned: &responseScanned) else {
                    if source.readableBytes >= server.settings.maxHeadBytes { badResponse() }
                    return
                }
                responseScanned = 0
                let headBytes = UnsafeRawBufferPointer(rebasing: bytes[0..<length])
                if case .failed = HTTP1Parser.parseResponse(headBytes, requestWasHead: requestWasHead, into: &response) {
                    badResponse()
                    return
                }
                if response.status == 101 && upgrading {
                    return switchProtocols(headBytes, length: length)
                }
                if response.status < 200 {
                    source.consume(length)  // interim responses are ours to absorb (we answered 100-continue)
                    continue
                }
                if exchange.responseHead(status: response.status) { return }
                if !response.keepAlive || !requestDone { response.keepAlive = response.keepAlive && requestDone }
                if response.framing == .untilClose || server.draining { keepAlive = false }
                let before = output.readableBytes
                ForwardingHeaders.writeResponse(
                    response, headBytes, close: !keepAlive, modifier: exchange.policy.responseHeaders, into: output)
                exchange.record.bytesSent += output.readableBytes - before
                source.consume(length)
                replayable = false
                responseBody = BodyTracker(response.framing)
                if responseBody.isComplete { exchange.responseCompleted() }
                break
            }
        }
        while !exchange.isComplete && !source.isEmpty {
            if output.readableBytes >= server.settings.pendingOutputBound {
                // Same rule downstream: stop reading the upstream only while our write watcher is armed.
                flushOutput()
                if closed { return }
                if output.readableBytes >= server.settings.pendingOutputBound {
                    upstream.pauseReading()
                    upstreamPaused = true
                    return
                }
            }
            let available = source.readable
            guard let take = responseBody.consume(available) else {
                // Malformed upstream framing after the head went out: abort, never guess an end.
                upstream.close()
                upstreamFailed(upstream, .reset)
                return
            }
            if responseBody.isComplete { exchange.responseCompleted() }
            exchange.record.bytesSent += take
            var body = UnsafeRawBufferPointer(rebasing: available[0..<take])
            if output.isEmpty, case .bytes(let n) = stream.write(from: body) {
                // Nothing queued before it: the body goes out straight from the upstream's buffer (no copy, and
                // `output` stays small however large the body).
                body = UnsafeRawBufferPointer(rebasing: body[n...])
                lastActivity = server.loop.now
            }
            output.append(body)
            source.consume(take)
        }
        if exchange.isComplete && !requestDone {
            // The upstream answered before reading the whole body: finish reading it, but do not reuse either side.
            response.keepAlive = false
            keepAlive = false
            discardingBody = true
        }
    }

    /// The upstream accepted the client's `Upgrade` (`101`): its head goes down with `Upgrade` kept, and this
    /// session hands both streams, and the bytes read past either head, to a `ByteRelay` under the same id. The
    /// exchange counts as one request (status 101), reported when the relay ends with the bytes it moved.
    private func switchProtocols(_ headBytes: UnsafeRawBufferPointer, length: Int) {
        guard let upstream else { return }
        ForwardingHeaders.writeResponse(
            response, headBytes, close: false, upgrade: true, modifier: exchange.policy.responseHeaders, into: output)
        upstream.input.consume(length)
        output.append(upstream.input.readable)
        upstream.input.clear()
        upstream.owner = nil
        self.upstream = nil
        guard let upstreamStream = upstream.detachStream() else {
            upstream.close()
            return abort()
        }
        exchange.record.bytesReceived += input.readableBytes
        let relay = ByteRelay(
            id: id, client: stream, upstream: upstreamStream, toClient: output, toUpstream: input, server: server,
            onClosed: exchange.handOff())
        // This session ends here without closing its stream or reporting: the relay has both.
        closed = true
        timer.cancel()
        server.replaceSession(id, with: relay)
        relay.start()
    }

    private func badResponse() {
        exchange.upstreamMisbehaved()
        processInput()
    }

    // MARK: - Logging

    private func keepLogFields(_ headBytes: UnsafeRawBufferPointer, _ logFields: RequestLogFields) {
        logFields.clear()
        logFields.keep(.method, head.method.bytes(in: headBytes))
        logFields.keep(.path, head.target.bytes(in: headBytes))
        logFields.keep(.authority, head.host.bytes(in: headBytes))
        var agent: ByteRange?, forwarded: ByteRange?, requestID: ByteRange?
        for field in head.headers {
            let name = field.name.bytes(in: headBytes)
            if HTTP1Parser.equalsLowercase(name, "user-agent") {
                agent = field.value
            } else if HTTP1Parser.equalsLowercase(name, "x-forwarded-for") {
                if forwarded == nil { forwarded = field.value }
            } else if HTTP1Parser.equalsLowercase(name, "x-request-id") {
                requestID = field.value
            }
        }
        if let agent { logFields.keep(.userAgent, agent.bytes(in: headBytes)) }
        if let forwarded { logFields.keep(.forwardedFor, forwarded.bytes(in: headBytes)) }
        if let requestID { logFields.keep(.requestID, requestID.bytes(in: headBytes)) }
    }

    // MARK: - Closing

    /// Starts a graceful close: the current exchange (if any) finishes, then the connection closes.
    func closeWhenIdle() {
        keepAlive = false
        if isIdle { close() }
    }

    /// Closes at once, dropping pending output; a tunnel is reset, so the client cannot take a cut-off
    /// response for a complete one.
    private func abort() {
        upstream?.close()
        upstream = nil
        close(graceful: false)
    }

    func close(graceful: Bool = true) {
        guard !closed else { return }
        closed = true
        closing = true
        stream.setReading(false)
        stream.setWriteInterest(false)
        timer.cancel()
        exchange.end()
        if let upstream { upstream.owner = nil; upstream.close(); self.upstream = nil }
        stream.close(graceful: graceful)
        server.sessionClosed(id)
    }
}
