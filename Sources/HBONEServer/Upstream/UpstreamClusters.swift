import EventLoop
import Filters
import WaypointCore

/// One worker's upstream side: a keep-alive pool per endpoint (indexed as `RouteDecision` names endpoints), the
/// backends' connection limits (DestinationRule circuit breaking, counted proxy-wide) with the requests waiting
/// for a connection, and the mirrored requests in flight.
///
/// Thread: its worker's loop thread only. Ownership: its `ProxyServer`.
public final class UpstreamClusters {
    private unowned(unsafe) let worker: WorkerContext
    private var pools: [UpstreamPool] = []

    init(worker: WorkerContext) { self.worker = worker }

    /// Replaces the endpoint list that `RouteDecision.forward` indexes; pools for addresses still listed
    /// (and their idle connections) carry over, the others retire.
    /// `transports[i]`: how endpoint i is reached (plaintext, or HBONE to a given identity);
    /// `workloads[workloadOf[i]]`: its Pod's labels for Istio's metrics (-1: none known).
    func updateEndpoints(
        _ addresses: [SocketAddress], transports: [EndpointTransport], workloads: [WorkloadLabels], workloadOf: [Int32],
        server: ProxyServer
    ) {
        var existing: [SocketAddress: UpstreamPool] = [:]
        for pool in pools { existing[pool.address] = pool }
        pools = zip(addresses, transports).map { address, transport in
            if let pool = existing[address], pool.transport == transport {
                existing[address] = nil
                return pool
            }
            return UpstreamPool(address: address, transport: transport, server: server)
        }
        for pool in existing.values { pool.retired = true }
        let interned = intern(workloads)
        for (pool, workload) in zip(pools, workloadOf) { pool.destinationWorkload = workload >= 0 ? interned[Int(workload)] : -1 }
    }

    /// The same endpoint list grown or revised in place (a snapshot of the same lineage): indices below the
    /// pools' count kept their address; pools of `revised` endpoints take their new transport (a new pool) or
    /// workload; the endpoints past the end are new.
    func patchEndpoints(
        _ addresses: [SocketAddress], transports: [EndpointTransport], workloads: [WorkloadLabels], workloadOf: [Int32],
        revised: [Int32], server: ProxyServer
    ) {
        let interned = intern(workloads)
        for endpoint in revised where Int(endpoint) < pools.count {
            let i = Int(endpoint)
            if pools[i].transport != transports[i] {
                pools[i].retired = true
                pools[i] = UpstreamPool(address: addresses[i], transport: transports[i], server: server)
            }
            pools[i].destinationWorkload = workloadOf[i] >= 0 ? interned[Int(workloadOf[i])] : -1
        }
        for i in pools.count..<addresses.count {
            let pool = UpstreamPool(address: addresses[i], transport: transports[i], server: server)
            pool.destinationWorkload = workloadOf[i] >= 0 ? interned[Int(workloadOf[i])] : -1
            pools.append(pool)
        }
    }

    /// The workloads' ids in this worker's Istio metrics.
    private func intern(_ workloads: [WorkloadLabels]) -> [Int32] {
        workloads.map { worker.counters.istio.intern(destination: $0) }
    }

    /// Requests this worker has in flight to the endpoint (LEAST_REQUEST load balancing).
    public func requestsInFlight(_ endpoint: Int32) -> Int { pool(endpoint)?.requestsInFlight ?? 0 }

    @inline(__always) func pool(_ endpoint: Int32) -> UpstreamPool? {
        endpoint >= 0 && Int(endpoint) < pools.count ? pools[Int(endpoint)] : nil
    }

    /// Draining: idle keep-alive connections close now.
    func closeIdle() {
        for pool in pools { pool.closeIdle() }
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
