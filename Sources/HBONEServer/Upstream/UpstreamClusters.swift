import EventLoop
import Filters
import TLS
import WaypointCore

/// A snapshot's endpoints as the upstream side needs them, parallel arrays indexed as `RouteDecision` names
/// endpoints.
public struct UpstreamEndpoints: Sendable {
    public var addresses: [SocketAddress] = []
    /// How each is reached: plaintext, HBONE to a given identity, or TLS the waypoint originates.
    public var transports: [EndpointTransport] = []
    /// What `EndpointTransport.hbone` indexes: the identities mesh endpoints answer as.
    public var peers: [ServiceAccountName] = []
    /// The distinct workloads behind them (Istio's destination labels).
    public var workloads: [WorkloadLabels] = []
    /// Per endpoint: its index in `workloads` (-1: its Pod is not known).
    public var workloadOf: [Int32] = []
    /// What `EndpointTransport.tls` indexes: DestinationRules' TLS origination.
    public var tls: [UpstreamTLS?] = []

    public init(
        addresses: [SocketAddress], transports: [EndpointTransport], peers: [ServiceAccountName], workloads: [WorkloadLabels],
        workloadOf: [Int32], tls: [UpstreamTLS?]
    ) {
        (self.addresses, self.transports, self.peers, self.workloads, self.workloadOf, self.tls) = (
            addresses, transports, peers, workloads, workloadOf, tls
        )
    }

    /// Endpoint `i`'s HBONE peer: the identity its node must present (nil for any, or for other transports).
    func peer(of i: Int) -> ServiceAccountName? {
        guard case .hbone(let index) = transports[i], index >= 0, Int(index) < peers.count else { return nil }
        return peers[Int(index)]
    }

    /// Whether `pool` reaches endpoint `i` as listed: the same kind of transport, HBONE peer and TLS settings
    /// object (not the same indices, which a full compile renumbers).
    func reaches(_ i: Int, as pool: UpstreamPool) -> Bool {
        switch (pool.transport, transports[i]) {
        case (.plaintext, .plaintext): return true
        case (.hbone, .hbone): return pool.peer == peer(of: i)
        case (.tls, .tls): return pool.tls === tls(of: i)
        default: return false
        }
    }

    /// Endpoint `i`'s TLS origination (nil for other transports, or an unusable rule).
    func tls(of i: Int) -> UpstreamTLS? {
        guard case .tls(let index) = transports[i], index >= 0, Int(index) < tls.count else { return nil }
        return tls[Int(index)]
    }

    init() {}
}

/// One worker's upstream side: a keep-alive pool per endpoint (indexed as `RouteDecision` names endpoints), the
/// backends' connection limits (DestinationRule circuit breaking, counted proxy-wide) with the requests waiting
/// for a connection, and the mirrored requests in flight.
///
/// Thread: its worker's loop thread only. Ownership: its `ProxyServer`.
public final class UpstreamClusters {
    private unowned(unsafe) let worker: WorkerContext
    /// Per endpoint: its pool, made when a request first goes there (most endpoints of a large namespace never
    /// see this worker's traffic, and a pool costs ~250 bytes).
    private var pools: [UpstreamPool?] = []
    /// The snapshot's endpoints, to make pools from.
    private var endpoints = UpstreamEndpoints()
    /// Per endpoint: its workload's id in this worker's Istio metrics (-1: unknown).
    private var workloadIDs: [Int32] = []
    private unowned(unsafe) var server: ProxyServer?

    init(worker: WorkerContext) { self.worker = worker }

    /// Replaces the endpoint list that `RouteDecision.forward` indexes; pools for addresses still listed
    /// (and their idle connections) carry over, the others retire.
    func updateEndpoints(_ endpoints: UpstreamEndpoints, server: ProxyServer) {
        take(endpoints, server)
        var existing: [SocketAddress: UpstreamPool] = [:]
        for case let pool? in pools { existing[pool.address] = pool }
        pools = endpoints.addresses.enumerated().map { i, address in
            // a pool keeps its connections only with the same transport (peer, TLS settings object)
            guard let pool = existing[address], endpoints.reaches(i, as: pool) else { return nil }
            existing[address] = nil
            pool.destinationWorkload = workloadIDs[i]
            return pool
        }
        for pool in existing.values { pool.retired = true }
    }

    /// The same endpoint list grown or revised in place (a snapshot of the same lineage): indices below the
    /// pools' count kept their address unless `revised`; pools of `revised` endpoints take their new address or
    /// transport (a new pool) or workload; the endpoints past the end are new.
    func patchEndpoints(_ endpoints: UpstreamEndpoints, revised: [Int32], server: ProxyServer) {
        take(endpoints, server)
        for endpoint in revised where Int(endpoint) < pools.count {
            guard let pool = pools[Int(endpoint)] else { continue }
            let i = Int(endpoint)
            if pool.address != endpoints.addresses[i] || !endpoints.reaches(i, as: pool) {
                pool.retired = true
                pools[Int(endpoint)] = nil
            } else {
                pool.destinationWorkload = workloadIDs[Int(endpoint)]
            }
        }
        pools += repeatElement(nil, count: endpoints.addresses.count - pools.count)
    }

    private func take(_ endpoints: UpstreamEndpoints, _ server: ProxyServer) {
        let interned = endpoints.workloads.map { worker.counters.istio.intern(destination: $0) }
        (self.endpoints, self.server) = (endpoints, server)
        workloadIDs = endpoints.workloadOf.map { $0 >= 0 ? interned[Int($0)] : -1 }
    }

    /// Requests this worker has in flight to the endpoint (LEAST_REQUEST load balancing).
    public func requestsInFlight(_ endpoint: Int32) -> Int {
        endpoint >= 0 && Int(endpoint) < pools.count ? pools[Int(endpoint)]?.requestsInFlight ?? 0 : 0
    }

    /// The endpoint's pool, made on first use.
    @inline(__always) func pool(_ endpoint: Int32) -> UpstreamPool? {
        guard endpoint >= 0 && Int(endpoint) < pools.count else { return nil }
        return pools[Int(endpoint)] ?? makePool(Int(endpoint))
    }

    private func makePool(_ i: Int) -> UpstreamPool? {
        guard let server else { return nil }
        let pool = UpstreamPool(
            address: endpoints.addresses[i], transport: endpoints.transports[i], peer: endpoints.peer(of: i), tls: endpoints.tls(of: i),
            server: server)
        pool.destinationWorkload = workloadIDs[i]
        pools[i] = pool
        return pool
    }

    /// Draining: idle keep-alive connections close now.
    func closeIdle() {
        for case let pool? in pools { pool.closeIdle() }
    }

    // MARK: Connection limits (DestinationRule circuit breaking, proxy-wide counts)

    /// This worker's requests waiting for a connection of a backend at its `tcp.maxConnections`, oldest
    /// first, by the backend's limits.
    private var waiting: [ObjectIdentifier: (limits: ClusterLimits, queue: [Exchange])] = [:]
    /// Wakes waiters on the next loop iteration after a connection of this worker frees up (never inside the
    /// caller's stack); while any wait, also every few milliseconds, for connections other workers close.
    private lazy var capacityTimer = Timer(loop: worker.loop) { [unowned(unsafe) self] in self.wakeWaiters() }
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
        guard worker.settings.workers > 1, let limit = limits.settings.maxConnections else { return nil }
        let key = ObjectIdentifier(limits)
        guard limits.pending.load(ordering: .relaxed) > (waiting[key]?.queue.count ?? 0) else { return nil }
        return (limitedConnections[key] ?? 0, max(1, limit / worker.settings.workers))
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

    func capacityFreed() {
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
            worker.counters.mirrorsSkipped.increment()
            return
        }
        let request = ByteBuffer(capacity: head.count + body.count + 64)
        ForwardingHeaders.writeMirrorHead(head, into: request)
        request.append(body)
        let mirror = MirrorRequest(stream: stream, request: request, clusters: self, loop: worker.loop)
        mirrors[ObjectIdentifier(mirror)] = mirror
        worker.counters.mirrorRequests.increment()
    }

    func mirrorEnded(_ mirror: MirrorRequest) {
        if let ended = mirrors.removeValue(forKey: ObjectIdentifier(mirror)) { worker.releaseLater(ended) }
    }
}
