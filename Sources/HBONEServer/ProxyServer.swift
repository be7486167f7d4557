import EventLoop
import Filters
import Logging
import TLS
import WaypointCore

/// Something the server tracks per downstream stream (an HTTP/1.1 session, a TCP relay, a sniffer).
protocol DownstreamSession: AnyObject {
    var id: Int { get }
    /// Drain: finish what is in flight, then close.
    func closeWhenIdle()
}

/// One worker's data plane: its listeners, the client connections they accept (plaintext, HBONE), the
/// sessions running over them, and a keep-alive pool per upstream endpoint. Every connection is owned by one worker for its whole life, so nothing here locks.
///
/// Thread: its worker's loop thread only (create it on that thread). Ownership: the worker.
public final class ProxyServer: TunnelAcceptor {
    /// What its connections share (the fields below are the same objects, kept here for the data plane's reach).
    public let context: WorkerContext
    public let loop: EventLoop
    let router: any RequestRouter
    /// The router's `generation`, kept here so that an exchange checks the indices it holds with a load, not a
    /// call through the router (several per request). Set by whoever replaces the router's snapshot, at once.
    public var routingGeneration: UInt64
    public let settings: ProxySettings
    public let counters: WorkerCounters
    let accessLog: AccessLog?
    /// Debug-level events of the data plane (rejected requests, upstream failures); never per successful request.
    let logger: Logger
    private var listeners: [Listener] = []
    private var sessions: [Int: any DownstreamSession] = [:]
    private var hboneConnections: [Int: HBONEConnection] = [:]
    private var nextConnectionID = 0
    /// The server-side TLS context for new HBONE connections (replaced when the certificate rotates).
    public var tlsContext: TLSContext?
    /// The client-side context (the same certificate) for HBONE to upstream endpoints in the mesh.
    public var clientTLSContext: TLSContext?
    /// The upstream side: endpoints' connection pools, connection limits and the requests waiting on them, mirrors.
    public let upstreams: UpstreamClusters
    /// Calls to external authorizers (CUSTOM AuthorizationPolicies), made on the first check.
    lazy var externalAuthorization = ExternalAuthorization(server: self)

    public private(set) var draining = false
    /// Retries this worker may still make, per backend.
    var retryBudget = RetryBudget()
    var random: FastRandom
    /// Called once, when draining and the last connection has closed.
    public var onDrained: (() -> Void)?

    public init(
        loop: EventLoop, router: any RequestRouter, settings: ProxySettings, accessLog: Bool, logger: Logger,
        counters: WorkerCounters = WorkerCounters()
    ) {
        self.loop = loop
        self.counters = counters
        self.router = router
        routingGeneration = router.generation
        self.settings = settings
        self.accessLog = accessLog ? AccessLog(loop: loop) : nil
        self.logger = logger
        context = WorkerContext(loop: loop, settings: settings, counters: counters, logger: logger)
        upstreams = UpstreamClusters(worker: context)
        var seed = SystemRandomNumberGenerator()
        random = FastRandom(seed: seed.next())
    }

    /// Keeps `object` alive until the end of this loop iteration.
    public func releaseLater(_ object: AnyObject) { context.releaseLater(object) }

    /// True for `percent` % of calls (Istio and Gateway API percentages, to 0.0001 %).
    func roll(_ percent: Double) -> Bool {
        percent >= 100 || Double(random.next() % 1_000_000) < percent * 10_000
    }

    /// Starts accepting on a listening socket (which this server then owns and closes).
    public func listen(fd: Int32) {
        listeners.append(Listener(loop: loop, fd: fd) { [unowned(unsafe) self] fd, peer in self.accepted(fd, peer) })
    }

    /// Starts accepting PROXY-protocol v2 connections (the sandwich mode) on a listening socket.
    public func listenProxyProtocol(fd: Int32) {
        listeners.append(
            Listener(loop: loop, fd: fd) { [unowned(unsafe) self] fd, peer in
                guard !self.draining else { Socket.close(fd); return }
                self.nextConnectionID += 1
                self.counters.downstreamConnectionsTotal.increment()
                self.counters.downstreamConnectionsActive.increment()
                self.sessions[self.nextConnectionID] = ProxyProtocolConnection(
                    id: self.nextConnectionID, fd: fd, remote: peer, server: self)
            })
    }

    private func accepted(_ fd: Int32, _ peer: SocketAddress?) {
        guard !draining else { Socket.close(fd); return }
        let facts = PeerFacts(identity: nil, sourceIP: peer?.ip ?? "unknown", sourceAddress: peer?.description ?? "unknown")
        counters.downstreamConnectionsTotal.increment()
        startHTTP(on: SocketStream(fd: fd, loop: loop), peer: facts, destination: nil, traceparent: [], initialInput: nil)
    }

    /// Takes an accepted HBONE connection (handed over by the thread that balances them across workers).
    public func adoptHBONE(fd: Int32, peer: SocketAddress?) {
        guard !draining, let context = tlsContext else {
            counters.hboneConnectionsTotal.increment()  // counted as adopted, so the balancer's tally stays right
            Socket.close(fd)
            return
        }
        nextConnectionID += 1
        guard
            let connection = HBONEConnection(
                id: nextConnectionID, fd: fd, remote: peer, context: context, worker: self.context, acceptor: self)
        else {
            Socket.close(fd)
            return
        }
        hboneConnections[connection.id] = connection
        counters.hboneConnectionsActive.increment()
        counters.hboneConnectionsTotal.increment()
    }

    func hboneConnectionClosed(_ connection: HBONEConnection) {
        guard let closed = hboneConnections.removeValue(forKey: connection.id) else { return }
        releaseLater(closed)
        counters.hboneConnectionsActive.increment(by: -1)
        checkDrained()
    }

    // MARK: - Sessions

    /// Runs what the destination's protocol calls for over an accepted tunnel. `initialInput`: bytes that
    /// arrived with the PROXY header.
    /// `tcpAuthorized`: the HBONE CONNECT already authorized a TCP destination (before answering 200).
    func startInnerSession(
        on stream: any ByteStream, peer: PeerFacts, destination: Destination, traceparent: [UInt8],
        initialInput: UnsafeRawBufferPointer?, tcpAuthorized: Bool = false
    ) {
        switch destination.innerProtocol {
        case .http1:
            startHTTP(on: stream, peer: peer, destination: destination, traceparent: traceparent, initialInput: initialInput)
        case .http2:
            startH2C(on: stream, peer: peer, destination: destination, traceparent: traceparent, initialInput: initialInput)
        case .tcp:
            startTCP(on: stream, destination: destination, peer: peer, initialInput: initialInput, authorized: tcpAuthorized)
        case .detect:
            nextConnectionID += 1
            let sniffer = ProtocolSniffer(
                id: nextConnectionID, stream: stream, peer: peer, destination: destination,
                traceparent: traceparent, server: self)
            sessions[sniffer.id] = sniffer
            counters.downstreamConnectionsActive.increment()
            if let initialInput, !initialInput.isEmpty { sniffer.received(initialInput) }
        }
    }

    func startHTTP(
        on stream: any ByteStream, peer: PeerFacts, destination: Destination?, traceparent: [UInt8],
        initialInput: UnsafeRawBufferPointer?, protocol: StaticString = "HTTP/1.1"
    ) {
        nextConnectionID += 1
        let session = DownstreamConnection(
            id: nextConnectionID, stream: stream, peer: peer, destination: destination,
            traceparent: traceparent, initialInput: initialInput, protocol: `protocol`, server: self)
        sessions[session.id] = session
        counters.downstreamConnectionsActive.increment()
        session.start()
    }

    func startH2C(
        on stream: any ByteStream, peer: PeerFacts, destination: Destination?, traceparent: [UInt8],
        initialInput: UnsafeRawBufferPointer?
    ) {
        nextConnectionID += 1
        counters.downstreamConnectionsActive.increment()
        let session = H2CProxySession(
            id: nextConnectionID, stream: stream, peer: peer, destination: destination,
            traceparent: traceparent, initialInput: initialInput, server: self)
        sessions[session.id] = session
    }

    func startTCP(
        on stream: any ByteStream, destination: Destination, peer: PeerFacts, initialInput: UnsafeRawBufferPointer?,
        authorized: Bool = false
    ) {
        // Authorized before the upstream is dialed: a denied TCP tunnel never sends a byte upstream.
        guard authorized || router.authorizeTCP(to: destination, peer: peer) else {
            logger.debug(
                "TCP tunnel denied by authorization", metadata: ["destination": "\(destination.name)", "client": "\(peer.sourceAddress)"])
            stream.close(graceful: false)
            return
        }
        nextConnectionID += 1
        guard let endpoint = router.pickEndpoint(for: destination), let pool = upstreams.pool(endpoint),
            let relay = TCPRelay(
                id: nextConnectionID, downstream: stream, upstream: pool.address, initialInput: initialInput, server: self,
                series: (
                    counters.istio.intern(source: peer),
                    router.service(of: destination), peer.identity != nil
                ))
        else {
            counters.upstreamConnectFailures.increment()
            stream.close(graceful: false)
            return
        }
        sessions[relay.id] = relay
        counters.downstreamConnectionsActive.increment()
    }

    /// The session under `id` became `session` (an HTTP/1.1 connection that switched protocols, now a relay).
    func replaceSession(_ id: Int, with session: any DownstreamSession) {
        if let old = sessions.updateValue(session, forKey: id) { releaseLater(old) }
    }

    func sessionClosed(_ id: Int) {
        guard let closed = sessions.removeValue(forKey: id) else { return }
        releaseLater(closed)
        counters.downstreamConnectionsActive.increment(by: -1)
        checkDrained()
    }

    func destination(for address: SocketAddress) -> Destination? { router.destination(for: address) }

    func hasReadyEndpoints(_ destination: Destination) -> Bool { router.isReachable(destination) }

    func authorizeTCP(to destination: Destination, peer: PeerFacts) -> Bool { router.authorizeTCP(to: destination, peer: peer) }

    /// Takes a new snapshot's endpoints (see `UpstreamClusters.updateEndpoints`); its cluster indices may differ,
    /// so the retry budgets start over.
    public func updateEndpoints(_ endpoints: UpstreamEndpoints) {
        retryBudget.reset()
        upstreams.updateEndpoints(endpoints, server: self)
    }

    /// The same endpoints grown or revised in place (`UpstreamClusters.patchEndpoints`); clusters kept their
    /// indices, so the retry budgets carry on.
    public func patchEndpoints(_ endpoints: UpstreamEndpoints, revised: [Int32]) {
        upstreams.patchEndpoints(endpoints, revised: revised, server: self)
    }

    /// A random v4 UUID for `x-request-id`, from a per-worker generator (no syscall, no lock).
    func writeRequestID(_ out: ByteBuffer) {
        let high = random.next() & 0xFFFF_FFFF_FFFF_0FFF | 0x0000_0000_0000_4000
        let low = random.next() & 0x3FFF_FFFF_FFFF_FFFF | 0x8000_0000_0000_0000
        out.appendHex(high >> 32, width: 8)
        out.append(0x2D)
        out.appendHex((high >> 16) & 0xFFFF, width: 4)
        out.append(0x2D)
        out.appendHex(high & 0xFFFF, width: 4)
        out.append(0x2D)
        out.appendHex(low >> 48, width: 4)
        out.append(0x2D)
        out.appendHex(low & 0xFFFF_FFFF_FFFF, width: 12)
    }

    /// Stops accepting and lets in-flight exchanges finish; `onDrained` fires when the last connection is gone.
    /// HTTP/1.1 keep-alive connections answer their next request with `connection: close`; those still idle
    /// after `settings.drainIdleGrace` are closed then (closing an idle connection races a request the client
    /// may be sending on it, so it is left a moment to send one). HBONE connections get GOAWAY.
    public func beginDrain() {
        guard !draining else { return }
        draining = true
        for listener in listeners { listener.close() }
        listeners.removeAll()
        upstreams.closeIdle()
        for connection in Array(hboneConnections.values) { connection.beginDrain() }
        let grace = Timer(loop: loop) { [unowned(unsafe) self] in
            for session in Array(self.sessions.values) { session.closeWhenIdle() }
        }
        grace.schedule(after: settings.drainIdleGrace)
        drainGrace = grace
        checkDrained()
    }

    private var drainGrace: Timer?

    private func checkDrained() {
        if draining && sessions.isEmpty && hboneConnections.isEmpty { drained() }
    }

    private func drained() {
        accessLog?.flush()
        let callback = onDrained
        onDrained = nil
        callback?()
    }

    public var activeConnections: Int { sessions.count + hboneConnections.count }
}
