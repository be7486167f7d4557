import EventLoop
import HTTP2
import TLS
import WaypointCore

/// What the server role of an HBONE connection asks of the waypoint: which destinations it serves, whether a
/// byte-stream tunnel is allowed, and where an accepted tunnel's bytes go.
///
/// Thread: its worker's loop thread only.
protocol TunnelAcceptor: AnyObject {
    /// Draining: new connections get GOAWAY as soon as they are open.
    var draining: Bool { get }
    /// What a tunnel's `:authority` names, or nil when the waypoint serves no such address.
    func destination(for address: SocketAddress) -> Destination?
    /// Whether a destination's own cluster has a ready endpoint (a tunnel to a service without one gets 503).
    func hasReadyEndpoints(_ destination: Destination) -> Bool
    /// Authorizes a byte-stream tunnel before its 200 (only connection attributes are known).
    func authorizeTCP(to destination: Destination, peer: PeerFacts) -> Bool
    /// Runs what the destination's protocol calls for over an accepted tunnel.
    func startInnerSession(
        on stream: any ByteStream, peer: PeerFacts, destination: Destination, traceparent: [UInt8], initialInput: UnsafeRawBufferPointer?,
        tcpAuthorized: Bool)
    /// The connection closed (it is released after the loop iteration).
    func hboneConnectionClosed(_ connection: HBONEConnection)
}

/// One HBONE connection: mutual TLS 1.3, then an HTTP/2 session whose CONNECT streams are tunnels.
///
/// Server role (from a ztunnel), written as phases like ztunnel's inbound: handshake → identity → per stream:
/// check the request, look up the destination, answer 200 (or refuse), hand the tunnel to an inner session.
/// Client role (upstream HBONE, `hbone-client`, the load generator): connect → handshake → check the server's
/// identity → `openTunnel` sends CONNECTs; a tunnel carries bytes once its 200 arrives.
///
/// The peer's identity is fixed per connection (ztunnel pools one connection per source identity), so it is
/// verified once, at the handshake. Every tunnel gets the same identity and its own source address.
///
/// nghttp2 must not be re-entered from its callbacks, so callbacks only record what happened (data into the
/// tunnel, a tunnel to notify); sessions are notified, and frames sent, after `receive`/`send` return.
///
/// Thread: its worker's loop thread only. Ownership: its acceptor, the `ProxyServer` (server role, until closed),
/// or whoever opened it (client role, told by `onClosed`); it owns its open tunnels.
///
/// Size: both roles and the drain share one connection state machine (~550 lines with the CONNECT fields).
public final class HBONEConnection: HTTP2SessionDelegate {
    enum State { case connecting, handshaking, open, closed }

    let id: Int
    private let role: TLSContext.Role
    /// Client role: whom the server's certificate must name (nil: any identity of an accepted trust domain).
    private let expectedPeer: ServiceAccountName?
    /// Client role: called once when the connection closes.
    public var onClosed: ((HBONEConnection) -> Void)?
    private let fd: Int32
    private unowned(unsafe) let worker: WorkerContext
    /// Server role: where accepted tunnels go.
    private unowned(unsafe) let acceptor: (any TunnelAcceptor)?
    private let remote: SocketAddress?
    private let tls: TLSConnection
    private var session: HTTP2Session!
    private var readWatcher: IOWatcher!
    private var writeWatcher: IOWatcher!
    private lazy var timer = Timer(loop: worker.loop) { [unowned(unsafe) self] in self.timerFired() }
    private(set) var state = State.handshaking
    /// The peer's verified identity (the client's for the server role, the server's for the client role).
    public private(set) var identity: SpiffeIdentity?
    private let output = ByteBuffer(lazyCapacity: 16 * 1024)
    private var tunnels: [Int32: Tunnel] = [:]
    /// Header fields of CONNECT requests still being received, by stream.
    private var requests: [Int32: TunnelRequest] = [:]
    /// Tunnels whose session should hear about readiness once the current nghttp2 call returns.
    private var notify: [Tunnel] = []
    /// Streams to reset with NO_ERROR once the current nghttp2 call returns (our side ended first).
    private var endedEarly: [Int32] = []
    private var inSession = false
    private var flushing = false
    private var needsFlush = false
    /// When our unanswered PING went out.
    private var pingSentAt: Double?
    private var drain = Drain.serving

    /// A graceful shutdown in RFC 9113 6.8's two steps, so that no tunnel the client opens meanwhile is lost.
    enum Drain: Equatable {
        case serving
        /// A GOAWAY with the largest stream ID went out (the client opens no new tunnels here) and a PING after
        /// it: once that PING's ack arrives, every CONNECT sent before the client saw the notice has arrived.
        case noticed(untilAck: Int)
        /// The real GOAWAY went out; the connection closes after its last tunnel.
        case goingAway
    }

    /// Server role: an accepted socket. Client role: a socket whose connect is in progress, to a peer that must
    /// present `expectedPeer`'s identity when given.
    init?(
        id: Int, fd: Int32, remote: SocketAddress?, context: TLSContext, worker: WorkerContext, acceptor: (any TunnelAcceptor)?,
        expectedPeer: ServiceAccountName? = nil
    ) {
        guard let tls = TLSConnection(context: context, fd: fd) else { return nil }
        self.expectedPeer = expectedPeer
        self.id = id
        self.fd = fd
        self.remote = remote
        self.tls = tls
        self.worker = worker
        self.acceptor = acceptor
        role = context.role
        session = HTTP2Session(role: role == .server ? .server : .client, settings: worker.settings.http2, delegate: self)
        readWatcher = IOWatcher(loop: worker.loop, fd: fd, direction: .read) { [unowned(unsafe) self] in self.readable() }
        writeWatcher = IOWatcher(loop: worker.loop, fd: fd, direction: .write) { [unowned(unsafe) self] in self.writable() }
        timer.schedule(after: worker.settings.handshakeTimeout)
        if role == .client {
            state = .connecting
            writeWatcher.start()  // connect completion
        } else {
            readWatcher.start()
        }
    }

    /// Client role: connects to `address` (an HBONE port, 15008) with `context` (our certificate); the server must
    /// prove `expectedPeer`'s identity when given (the destination Pod's, which its node's ztunnel presents).
    public static func connect(
        to address: SocketAddress, context: TLSContext, worker: WorkerContext, expectedPeer: ServiceAccountName? = nil
    ) -> HBONEConnection? {
        guard case .success(let fd) = Socket.connect(to: address) else { return nil }
        guard
            let connection = HBONEConnection(
                id: 0, fd: fd, remote: address, context: context, worker: worker, acceptor: nil, expectedPeer: expectedPeer)
        else {
            Socket.close(fd)
            return nil
        }
        return connection
    }

    /// Client role: sends a CONNECT for `authority` (`IP:port`); the tunnel's reads and writes work once the
    /// server answers 200 (writes before that wait in the tunnel). Nil when the session refuses a new stream.
    public func openTunnel(authority: String, headers: [(String, String)] = []) -> Tunnel? {
        guard role == .client, state != .closed, drain == .serving,
            let stream = session.request(headers: [(":method", "CONNECT"), (":authority", authority)] + headers, body: true)
        else { return nil }
        let tunnel = Tunnel(streamID: stream, connection: self, sendBound: worker.settings.tunnelSendBound, established: false)
        tunnels[stream] = tunnel
        flush()
        return tunnel
    }

    /// Whether another tunnel may be opened now (client role): within the server's stream limit (ztunnel 200,
    /// Envoy 100) and ours.
    public var canOpenTunnel: Bool {
        state != .closed && drain == .serving
            && tunnels.count < min(Int(worker.settings.http2.maxConcurrentStreams), session.peerMaxConcurrentStreams)
    }

    deinit { if state != .closed { Socket.close(fd) } }

    public var tunnelCount: Int { tunnels.count }

    // MARK: - Handshake

    private func continueHandshake() {
        switch tls.handshake() {
        case .wantRead:
            writeWatcher.stop()
            readWatcher.start()
        case .wantWrite:
            writeWatcher.start()
        case .failed(let failure):
            handshakeFailed(failure.label, "\(failure)")
        case .done:
            guard tls.negotiatedProtocol == "h2" else { return handshakeFailed("alpn", "the client did not negotiate h2") }
            switch SpiffeIdentity.fromCertificate(uris: tls.peerURIs, trustDomains: worker.settings.trustDomains) {
            case .failure(let rejection):
                handshakeFailed("identity", rejection.description)
            case .success(let identity):
                if let expectedPeer, !expectedPeer.matches(identity) {
                    worker.logger.warning(
                        "upstream HBONE refused: \(remote?.description ?? "the peer") presents \(identity), the destination runs as \(expectedPeer)"
                    )
                    return handshakeFailed("identity", "the peer is \(identity), not \(expectedPeer)")
                }
                self.identity = identity
                if role == .server { worker.counters.handshakesOK.increment() }
                state = .open
                writeWatcher.stop()
                readWatcher.start()
                // A client has until the handshake timeout again to send its HTTP/2 preface (a one-shot timer
                // until `http2PrefaceReceived`); PINGs start after.
                if role == .server {
                    timer.schedule(after: worker.settings.handshakeTimeout)
                } else {
                    timer.scheduleRepeating(every: worker.settings.keepaliveInterval)
                }
                if acceptor?.draining == true { beginDrain() }
                readable()  // the client's preface may already be here
            }
        }
    }

    private func handshakeFailed(_ reason: String, _ detail: String) {
        if role == .server { worker.counters.countHandshakeFailure(reason) }
        worker.logger.debug(
            "HBONE handshake failed: \(detail)",
            metadata: ["connection.id": "\(id)", "client": "\(remote?.description ?? "unknown")", "reason": "\(reason)"])
        close()
    }

    // MARK: - I/O

    private func readable() {
        guard state == .open else {
            if state == .handshaking { continueHandshake() }
            return
        }
        let scratch = worker.scratch
        // Bounded, so that one busy connection cannot starve the loop's other connections.
        for _ in 0..<16 {
            switch tls.read(into: scratch) {
            case .bytes(let n):
                inSession = true
                let ok = session.receive(UnsafeRawBufferPointer(rebasing: scratch[0..<n]))
                inSession = false
                guard ok else { return protocolFailure() }
            case .wouldBlock:
                if tls.hasPendingOutput { writeWatcher.start() }
                flush()
                return
            case .eof, .failed:
                return close()
            }
        }
        if tls.hasBufferedInput { readWatcher.feed() }  // the rest on the next loop iteration
        flush()
    }

    private func writable() {
        if state == .connecting {
            guard Socket.connectResult(fd) == 0 else { return handshakeFailed("closed", "connect to \(remote?.description ?? "?") failed") }
            state = .handshaking
        }
        if state == .handshaking { return continueHandshake() }
        flush()
    }

    /// Sends what the session has (frames up to 64 KiB at a time, so a fast sender cannot grow `output`),
    /// then tells waiting tunnels about readiness; repeats while that produced more to send.
    func flush() {
        guard state == .open else { return }
        guard !inSession && !flushing else { needsFlush = true; return }
        flushing = true
        defer { flushing = false }
        repeat {
            needsFlush = false
            guard writeOut() else { return }
            if !endedEarly.isEmpty {
                for stream in endedEarly { session.reset(stream: stream, code: .noError) }
                endedEarly.removeAll()
                needsFlush = true
            }
            notifyTunnels()
        } while needsFlush && state == .open
        // Done: the peer is gone, or we are going away and the last tunnel ended with everything sent.
        if state == .open && (!session.isAlive || (drain == .goingAway && tunnels.isEmpty && output.isEmpty)) {
            if session.goAwayErrorSent != nil { countProtocolFailure() }
            close()
        }
    }

    /// False when the connection failed (and is closed).
    private func writeOut() -> Bool {
        while true {
            if output.isEmpty {
                inSession = true
                let ok = session.send(into: output, limit: 64 * 1024)
                inSession = false
                guard ok else { close(); return false }
                if output.isEmpty { break }
            }
            let result = tls.write(from: output.readable)
            guard case .bytes(let n) = result else { return stalled(result) }
            output.consume(n)
        }
        let flushed = tls.flush()  // sealed records the socket could not take at once
        guard case .bytes = flushed else { return stalled(flushed) }
        writeWatcher.stop()
        if tunnels.isEmpty { output.shrink(above: 16 * 1024) }  // what a bulk transfer grew, given back when idle
        return true
    }

    /// A write that did not go through: wait for writability (true), or the connection failed and is closed.
    private func stalled(_ result: IOResult) -> Bool {
        guard case .wouldBlock = result else {
            close()
            return false
        }
        writeWatcher.start()
        return true
    }

    private func notifyTunnels() {
        while !notify.isEmpty {
            let batch = notify
            notify.removeAll(keepingCapacity: true)
            for tunnel in batch {
                tunnel.queued = false
                tunnel.notifyHandler()
            }
        }
    }

    /// Where this worker's tunnels hear about readiness once their stream has closed.
    var closedTunnels: ClosedTunnelNotifier { worker.closedTunnels }

    /// A session will hear about readiness of `tunnel` after the current step.
    func queue(_ tunnel: Tunnel) {
        guard !tunnel.queued else { return }
        tunnel.queued = true
        notify.append(tunnel)
        if !inSession && !flushing { flush() } else { needsFlush = true }
    }

    // MARK: - Tunnel callbacks

    func consumed(_ tunnel: Tunnel, _ count: Int) {
        guard count > 0 else { return }
        session.consume(stream: tunnel.streamID, count)
        worker.counters.tunnelBytesReceived.increment(by: count)
        if !inSession { needsFlush = true; if !flushing { flush() } }
    }

    func dataReady(_ tunnel: Tunnel, bytes: Int) {
        worker.counters.tunnelBytesSent.increment(by: bytes)
        session.resume(stream: tunnel.streamID)
        flush()
    }

    func endAfterResponse(_ tunnel: Tunnel) {
        endedEarly.append(tunnel.streamID)
        needsFlush = true
    }

    func reset(_ tunnel: Tunnel) {
        session.reset(stream: tunnel.streamID, code: .cancel)
        flush()
    }

    // MARK: - HTTP2SessionDelegate

    public func http2BeginHeaders(stream: Int32) {
        requests[stream] = TunnelRequest()
    }

    public func http2Header(stream: Int32, name: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer) {
        requests[stream]?.add(name: name, value: value)
    }

    public func http2HeadersComplete(stream: Int32, endStream: Bool) {
        guard let request = requests.removeValue(forKey: stream) else { return }
        if role == .server {
            open(stream, request)
        } else if let tunnel = tunnels[stream], !tunnel.established {
            tunnel.responded(status: request.status)
            if request.status != 200 { session.reset(stream: stream, code: .cancel) }
            if !tunnel.queued { tunnel.queued = true; notify.append(tunnel) }
        }
    }

    public func http2Data(stream: Int32, _ bytes: UnsafeRawBufferPointer) {
        if let tunnel = tunnels[stream] {
            tunnel.receivedData(bytes)
        } else {
            session.consume(stream: stream, bytes.count)  // a refused stream's body: dropped
        }
    }

    public func http2RemoteEnded(stream: Int32) {
        tunnels[stream]?.receivedEnd()
    }

    public func http2StreamClosed(stream: Int32, errorCode: UInt32) {
        requests[stream] = nil
        guard let tunnel = tunnels.removeValue(forKey: stream) else { return }
        if role == .server { worker.counters.tunnelsActive.increment(by: -1) }
        tunnel.closed(code: errorCode)
        if !tunnel.queued { tunnel.queued = true; notify.append(tunnel) }
        if drain == .goingAway && tunnels.isEmpty { needsFlush = true }
    }

    public func http2ReadData(stream: Int32, into buffer: UnsafeMutableRawBufferPointer) -> HTTP2DataChunk {
        guard let tunnel = tunnels[stream] else { return .bytes(0, end: true) }
        return tunnel.readData(into: buffer)
    }

    public func http2PingAcknowledged() {
        pingSentAt = nil
        if case .noticed(let ack) = drain, session.pingsAcked >= ack {
            drain = .goingAway
            session.goAway()
            needsFlush = true
        }
    }

    /// The client's preface arrived within the handshake timeout: from now on the timer sends PINGs.
    public func http2PrefaceReceived() {
        if role == .server { timer.scheduleRepeating(every: worker.settings.keepaliveInterval) }
    }

    public func http2StreamRefused(stream: Int32, reason: HTTP2Refusal) {
        worker.counters.countTunnelRefusal(reason.label)
        worker.logger.debug("stream refused: \(reason.label)", metadata: ["connection.id": "\(id)", "stream.id": "\(stream)"])
    }

    // MARK: - Opening tunnels

    /// Checks a CONNECT and answers it: 200 and a tunnel, or an error status and the stream ends. The
    /// connection lives on either way.
    private func open(_ stream: Int32, _ request: TunnelRequest) {
        guard drain != .goingAway else {
            // Past the GOAWAY's last stream ID (sent before the GOAWAY left): unprocessed, the client may retry.
            worker.counters.countTunnelRefusal("draining")
            session.reset(stream: stream, code: .refusedStream)
            return
        }
        if let refusal = check(request) {
            worker.counters.countTunnelRefusal(refusal.reason)
            worker.logger.debug(
                "tunnel refused: \(refusal.status) \(refusal.reason)",
                metadata: ["connection.id": "\(id)", "stream.id": "\(stream)", "authority": "\(request.authorityText)"])
            session.respond(stream: stream, status: refusal.status, body: false)
            return
        }
        let destination = request.destination!
        let tunnel = Tunnel(streamID: stream, connection: self, sendBound: worker.settings.tunnelSendBound)
        tunnels[stream] = tunnel
        worker.counters.tunnelsTotal.increment()
        worker.counters.tunnelsActive.increment()
        session.respond(stream: stream, status: 200, body: true)
        let facts = request.facts!
        worker.logger.trace(
            "tunnel opened",
            metadata: [
                "connection.id": "\(id)", "stream.id": "\(stream)", "destination": "\(destination.name)",
                "source": "\(facts.sourceAddress)", "baggage": "\(facts.baggage ?? "")",
            ])
        acceptor?.startInnerSession(
            on: tunnel, peer: facts, destination: destination, traceparent: request.traceparent, initialInput: nil,
            tcpAuthorized: destination.innerProtocol == .tcp)
    }

    private struct Refusal { let status: Int; let reason: StaticString }

    /// Why a tunnel request is refused, or nil (and `request.destination`, `request.facts` set) when it is accepted.
    private func check(_ request: TunnelRequest) -> Refusal? {
        guard request.method == "CONNECT" else { return Refusal(status: 405, reason: "method") }
        guard !request.hasProtocol else { return Refusal(status: 400, reason: "extended_connect") }
        guard let address = request.authority else { return Refusal(status: 400, reason: "bad_authority") }
        // Only addresses this waypoint serves: never an open relay (ztunnel and agentgateway answer 400 too).
        guard let destination = acceptor?.destination(for: address) else { return Refusal(status: 400, reason: "unknown_destination") }
        if destination.cluster >= 0 && acceptor?.hasReadyEndpoints(destination) != true {
            return Refusal(status: 503, reason: "no_healthy_upstream")
        }
        // A byte-stream port is authorized here, before the 200 (ztunnel answers an L4 deny with 401); HTTP
        // is authorized per request inside the tunnel.
        let source = request.forwardedFor ?? remote
        let facts = PeerFacts(
            identity: identity, sourceIP: source?.ip ?? "unknown", sourceAddress: source?.description ?? "unknown",
            destinationIP: address.ip, baggage: request.baggage)
        if destination.innerProtocol == .tcp {
            guard acceptor?.authorizeTCP(to: destination, peer: facts) == true else { return Refusal(status: 401, reason: "denied") }
        }
        request.destination = destination
        request.facts = facts
        return nil
    }

    // MARK: - Liveness and shutdown

    private func timerFired() {
        switch state {
        case .connecting, .handshaking:
            handshakeFailed("timeout", "no complete handshake within \(worker.settings.handshakeTimeout)")
        case .open where !timer.isRepeating:
            worker.counters.prefaceTimeouts.increment()
            worker.logger.debug("HBONE client sent no HTTP/2 preface; closing", metadata: ["connection.id": "\(id)"])
            close()
        case .open:
            let now = worker.loop.now
            if let sent = pingSentAt {
                if now - sent >= worker.settings.keepaliveTimeout.seconds {
                    worker.logger.debug("HBONE peer did not answer PING; closing", metadata: ["connection.id": "\(id)"])
                    worker.counters.keepaliveTimeouts.increment()
                    close()
                }
            } else {
                pingSentAt = now
                session.ping()
                flush()
            }
        case .closed:
            break
        }
    }

    /// GOAWAY in two steps (`Drain`): the client opens no new tunnels here; open ones finish, then the
    /// connection closes. A connection still in its handshake is drained once the handshake completes.
    public func beginDrain() {
        guard state == .open, drain == .serving else {
            if state == .connecting { close() }
            return
        }
        drain = .noticed(untilAck: session.shutdownNotice())
        if pingSentAt == nil { pingSentAt = worker.loop.now }  // a peer that never acks is closed by the keepalive
        flush()
    }

    /// A protocol error or flood: send what nghttp2 queued and a GOAWAY saying why (best effort: a peer that
    /// does not read gets none), then close.
    private func protocolFailure() {
        countProtocolFailure()
        session.appendFinalFrames(into: output, limit: 16 * 1024)
        while !output.isEmpty, case .bytes(let n) = tls.write(from: output.readable) { output.consume(n) }
        close(lastWords: true)
    }

    private func countProtocolFailure() {
        worker.counters.http2ProtocolErrors.increment()
        worker.logger.debug(
            "HTTP/2 protocol error or flood; closing",
            metadata: ["connection.id": "\(id)", "goaway.code": "\(session.goAwayErrorSent ?? 0)"])
    }

    /// Closes the connection and ends its tunnels; `lastWords` when what was just written (a GOAWAY) must
    /// reach the peer even though it is still sending.
    public func close(lastWords: Bool = false) {
        guard state != .closed else { return }
        let wasOpen = state == .open
        state = .closed
        readWatcher.stop()
        writeWatcher.stop()
        timer.cancel()
        if wasOpen { tls.shutdown() }
        if lastWords { LingeringClose(loop: worker.loop, fd: fd) } else { Socket.close(fd) }
        let open = tunnels
        tunnels.removeAll()
        if role == .server { worker.counters.tunnelsActive.increment(by: -open.count) }
        for tunnel in open.values {
            // The connection died under the tunnel: an error, not a clean end of stream.
            tunnel.closed(code: HTTP2ErrorCode.internalError.rawValue)
            tunnel.notifyHandler()
        }
        // Tunnels that ended just before (a client's RST_STREAM in the same read as its close) were waiting for
        // the notification pass that `flush` runs, which a closed connection never reaches: they hear it now.
        notifyTunnels()
        if role == .server {
            acceptor?.hboneConnectionClosed(self)
        } else {
            worker.releaseLater(self)
            let callback = onClosed
            onClosed = nil
            callback?(self)
        }
    }
}

/// The fields of a CONNECT request that HBONE uses, gathered header by header.
private final class TunnelRequest {
    var method = ""
    /// `:status` of a response (client role).
    var status = 0
    var authority: SocketAddress?
    var authorityText = ""
    var hasProtocol = false
    var forwardedFor: SocketAddress?
    var traceparent: [UInt8] = []
    var baggage: String?
    var destination: Destination?
    /// Who the tunnel is from, built once the request is accepted.
    var facts: PeerFacts?

    func add(name: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer) {
        switch name.count {
        case 7 where name.elementsEqual(":method".utf8):
            method = String(decoding: value, as: UTF8.self)
        case 7 where name.elementsEqual(":status".utf8):
            status = Int(String(decoding: value, as: UTF8.self)) ?? 0
        case 10 where name.elementsEqual(":authority".utf8):
            authorityText = String(decoding: value, as: UTF8.self)
            authority = SocketAddress(authorityText)
        case 9 where name.elementsEqual(":protocol".utf8):
            hasProtocol = true
        case 9 where name.elementsEqual("forwarded".utf8):
            forwardedFor = Self.forwardedFor(value)
        case 11 where name.elementsEqual("traceparent".utf8):
            if value.count <= 128 { traceparent = Array(value) }
        case 7 where name.elementsEqual("baggage".utf8):
            if value.count <= 4096 { baggage = String(decoding: value, as: UTF8.self) }
        default:
            break
        }
    }

    /// The address in `forwarded: for="ip:port";host=...`, as ztunnel writes it (an IP without a port too).
    static func forwardedFor(_ value: UnsafeRawBufferPointer) -> SocketAddress? {
        guard let address = Forwarded.firstFor(value) else { return nil }
        return SocketAddress(address) ?? SocketAddress(ip: address, port: 0)
    }
}
