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
public final class ProxyServer {
    public let loop: EventLoop
    let router: any RequestRouter
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
    /// Where TLS records are decrypted before HTTP/2 takes them: one per worker, since a read is processed
    /// completely before the next.
    let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: 32 * 1024, alignment: 16)
    /// Connections and sessions that closed during this loop iteration. They are released just before the loop
    /// blocks, never inside their own call stack: a connection that closes from deep in a callback (a failed
    /// write in a flush) must stay valid until that stack unwinds.
    private var closedObjects: [AnyObject] = []
    private var releaser: PrepareWatcher?
    /// Readiness for tunnels whose HTTP/2 stream has closed (see `Tunnel.requestNotification`).
    let closedTunnels: ClosedTunnelNotifier
    private var pools: [UpstreamPool] = []

    public private(set) var draining = false
    /// Exchanges retrying now (the retry budget's floor).
    private var retriesInFlight = 0
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
        self.settings = settings
        self.accessLog = accessLog ? AccessLog(loop: loop) : nil
        self.logger = logger
        closedTunnels = ClosedTunnelNotifier(loop: loop)
        var seed = SystemRandomNumberGenerator()
        random = FastRandom(seed: seed.next())
        releaser = PrepareWatcher(loop: loop) { [unowned(unsafe) self] in
            if !self.closedObjects.isEmpty { self.closedObjects.removeAll(keepingCapacity: true) }
        }
    }

    /// Keeps `object` alive until the end of this loop iteration (see `closedObjects`).
    public func releaseLater(_ object: AnyObject) { closedObjects.append(object) }

    /// True for `percent` % of calls (Istio and Gateway API percentages, to 0.0001 %).
    func roll(_ percent: Double) -> Bool {
        percent >= 100 || Double(random.next() % 1_000_000) < percent * 10_000
    }

    // MARK: Connection limits (DestinationRule circuit breaking, proxy-wide counts)

    /// This worker's requests waiting for a connection of a backend at its `tcp.maxConnections`, oldest
    /// first, by the backend's limits.
    private var waiting: [ObjectIdentifier: (limits: ClusterLimits, queue: [Exchange])] = [:]
    /// Wakes waiters on the next loop iteration after a connection of this worker frees up (never inside the
    /// caller's stack); while any wait, also every few milliseconds, for connections other workers close.
    private lazy var capacityTimer = Timer(loop: loop) { [unowned(unsafe) self] in self.wakeWaiters() }
    static let waiterRecheck = Duration.milliseconds(5)

    /// Connections this worker has open for each backend with limits (its share of their proxy-wide count).
    private var limitedConnections: [ObjectIdentifier: Int] = [:]

    func limitedConnectionOpened(_ limits: ClusterLimits) {
        limits.connectionOpened()
        limitedConnections[ObjectIdentifier(limits), default: 0] += 1
    }

    func limitedConnectionClosed(_ limits: ClusterLimits) {
        limits.connectionClosed()
        let key = ObjectIdentifier(limits)
        limitedConnections[key, default: 1] -= 1
        if limitedConnections[key] == 0 { limitedConnections[key] = nil }
    }

    /// Whether an exchange to `endpoint` may have a connection now: an idle one here; none at all from this
    /// worker to the endpoint (Envoy's rule: a pool may always open its first connection, or its waiters could
    /// starve while other workers hold the limit); or room for one more that this worker may take.
    func hasConnectionCapacity(endpoint: Int32, limits: ClusterLimits) -> Bool {
        guard let pool = pool(endpoint) else { return true }
        if pool.hasIdleConnection || pool.openConnections == 0 { return true }
        return limits.mayOpenConnection && !(fairShare(limits).map { $0.held >= $0.share } ?? false)
    }

    /// Whether this worker should give a connection of the backend back rather than keep it: it holds more than
    /// its fair share while requests on other workers wait for one. Without this, the worker that happened to
    /// open the connections first would keep them all and serve its clients faster.
    func shouldReleaseConnection(_ limits: ClusterLimits) -> Bool { fairShare(limits).map { $0.held > $0.share } ?? false }

    /// The backend's connections this worker holds and its fair share of the limit (limit ÷ workers, at least
    /// one), when requests on other workers wait for a connection; nil when none do (or without a limit).
    private func fairShare(_ limits: ClusterLimits) -> (held: Int, share: Int)? {
        guard settings.workers > 1, let limit = limits.settings.maxConnections else { return nil }
        let key = ObjectIdentifier(limits)
        guard limits.pending.load(ordering: .relaxed) > (waiting[key]?.queue.count ?? 0) else { return nil }
        return (limitedConnections[key] ?? 0, max(1, limit / settings.workers))
    }

    /// Queues a request for a connection of the backend; false when `maxPendingRequests` already wait.
    func enqueue(_ exchange: Exchange, limits: ClusterLimits) -> Bool {
        guard limits.enterPending() else { return false }
        waiting[ObjectIdentifier(limits), default: (limits, [])].queue.append(exchange)
        if !capacityTimer.isActive { capacityTimer.schedule(after: Self.waiterRecheck) }
        return true
    }

    func dequeue(_ exchange: Exchange, limits: ClusterLimits?) {
        guard let limits, let index = waiting[ObjectIdentifier(limits)]?.queue.firstIndex(where: { $0 === exchange }) else { return }
        waiting[ObjectIdentifier(limits)]?.queue.remove(at: index)
        limits.leavePending()
    }

    func upstreamCapacityFreed() {
        if !waiting.isEmpty { capacityTimer.schedule(after: .zero) }
    }

    /// Lets the oldest waiter of each backend go on while the backend has capacity.
    private func wakeWaiters() {
        for key in Array(waiting.keys) {
            while let first = waiting[key]?.queue.first, first.resumeIfCapacity() {
                waiting[key]?.queue.removeFirst()
                waiting[key]?.limits.leavePending()
            }
            if waiting[key]?.queue.isEmpty == true { waiting[key] = nil }
        }
        if !waiting.isEmpty { capacityTimer.schedule(after: Self.waiterRecheck) }
    }

    /// Drops the answers of mirrored HTTP/2 requests.
    let h2cMirrorSink = H2CMirrorSink()

    /// Mirrored requests in flight (bounded: beyond `maxMirrors` a copy is skipped, never queued).
    private var mirrors: [ObjectIdentifier: MirrorRequest] = [:]
    static let maxMirrors = 256

    /// Sends a copy of a request (its upstream head, then `body`) to `endpoint`, answer dropped.
    func sendMirror(head: UnsafeRawBufferPointer, body: UnsafeRawBufferPointer, to endpoint: Int32) {
        guard mirrors.count < Self.maxMirrors, let pool = pool(endpoint), let stream = pool.openStream() else {
            counters.mirrorsSkipped.increment()
            return
        }
        let request = ByteBuffer(capacity: head.count + body.count + 64)
        ForwardingHeaders.writeMirrorHead(head, into: request)
        request.append(body)
        let mirror = MirrorRequest(stream: stream, request: request, server: self)
        mirrors[ObjectIdentifier(mirror)] = mirror
        counters.mirrorRequests.increment()
    }

    func mirrorEnded(_ mirror: MirrorRequest) {
        if let ended = mirrors.removeValue(forKey: ObjectIdentifier(mirror)) { releaseLater(ended) }
    }

    deinit { scratch.deallocate() }

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
        guard let connection = HBONEConnection(id: nextConnectionID, fd: fd, remote: peer, context: context, server: self) else {
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
        initialInput: UnsafeRawBufferPointer? = nil, tcpAuthorized: Bool = false
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
        initialInput: UnsafeRawBufferPointer?
    ) {
        nextConnectionID += 1
        let session = DownstreamConnection(
            id: nextConnectionID, stream: stream, peer: peer, destination: destination,
            traceparent: traceparent, initialInput: initialInput, server: self)
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
        guard let endpoint = router.pickEndpoint(for: destination), let pool = pool(endpoint),
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

    /// Whether a destination's own cluster has a ready endpoint (a tunnel to a service without one gets 503).
    func hasReadyEndpoints(_ destination: Destination) -> Bool { router.isReachable(destination) }

    /// Replaces the endpoint list that `RouteDecision.forward` indexes; pools for addresses still listed
    /// (and their idle connections) carry over, the others retire.
    /// `transports[i]`: how endpoint i is reached (plaintext, or HBONE to a given identity); `workloads[i]`: its
    /// Pod's labels for Istio's metrics. Called with each new snapshot, whose cluster indices may differ: the
    /// retry budgets (by cluster) start over.
    public func updateEndpoints(_ addresses: [SocketAddress], transports: [EndpointTransport], workloads: [WorkloadLabels?]) {
        retryTokens.removeAll()
        var existing: [SocketAddress: UpstreamPool] = [:]
        for pool in pools { existing[pool.address] = pool }
        pools = zip(addresses, transports).map { address, transport in
            if let pool = existing[address], pool.transport == transport {
                existing[address] = nil
                return pool
            }
            return UpstreamPool(address: address, transport: transport, server: self)
        }
        for pool in existing.values { pool.retired = true }
        for (pool, workload) in zip(pools, workloads) {
            pool.destinationWorkload = workload.map { counters.istio.intern(destination: $0) } ?? -1
        }
    }

    /// Requests this worker has in flight to the endpoint (LEAST_REQUEST load balancing).
    public func requestsInFlight(_ endpoint: Int32) -> Int { pool(endpoint)?.requestsInFlight ?? 0 }

    @inline(__always) func pool(_ endpoint: Int32) -> UpstreamPool? {
        endpoint >= 0 && Int(endpoint) < pools.count ? pools[Int(endpoint)] : nil
    }

    /// Retry budget per backend cluster: each first attempt earns 0.2 of a retry (up to a burst of 100), each
    /// retry spends one, so retries add at most 20% to a service's load; below 3 retries in flight one is
    /// always allowed (the floor), so a quiet service can still retry.
    private var retryTokens: [Int32: Double] = [:]

    /// The request goes upstream for the first time: it joins the backend's requests in flight (the caller
    /// entered `limits`) and the retry budget's base; one that may be retried earns budget.
    func exchangeStarted(_ record: inout ExchangeRecord, mayRetry: Bool) {
        record.inFlight = true
        if mayRetry { retryTokens[record.cluster] = min((retryTokens[record.cluster] ?? 0) + 0.2, 100) }
    }

    /// The request leaves the counts it joined upstream (it is over, or its connection closed under it): the
    /// backend's requests in flight and, if it retried, the retries in flight.
    func exchangeEnded(_ record: inout ExchangeRecord, limits: ClusterLimits?) {
        guard record.inFlight else { return }
        record.inFlight = false
        limits?.leaveRequest()
        guard record.attempt > 1 else { return }
        retriesInFlight -= 1
        limits?.leaveRetry()
    }

    /// Admits a retry of the record's try that ended with `outcome`, as far as the proxy goes: the backend's
    /// retry budget and, for the request's first retry, its `maxRetries` in flight. An admitted retry is counted
    /// (and the try reported to outlier detection). A refused one is counted too, and the record keeps why.
    func admitRetry(_ outcome: RetryPolicy.Outcome, of record: inout ExchangeRecord, limits: ClusterLimits?) -> Bool {
        if let tokens = retryTokens[record.cluster], tokens >= 1 {
            retryTokens[record.cluster] = tokens - 1
        } else if retriesInFlight >= 3 {
            counters.retryBudgetExhausted.increment()
            counters.istio.recordRetry(service: record.labels.service, .budgetExhausted)
            record.retryNote = "not retried: retry budget exhausted"
            return false
        }
        if record.attempt == 1 {
            guard limits?.enterRetry() ?? true else {
                counters.retryOverflow.increment()
                record.retryNote = "not retried: maxRetries in flight"
                return false
            }
            retriesInFlight += 1
        }
        router.reportAttempt(endpoint: record.endpoint, cluster: record.cluster, result: OutlierDetection.Result(outcome))
        counters.countRetry(outcome)
        counters.istio.recordRetry(service: record.labels.service, .started)
        return true
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
        for pool in pools { pool.closeIdle() }
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
