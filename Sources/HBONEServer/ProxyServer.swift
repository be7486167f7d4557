import EventLoop
import Logging
import WaypointCore

/// One worker's data plane: its listeners, the client connections they accept, and a keep-alive pool per
/// upstream endpoint. Every connection is owned by one worker for its whole life, so nothing here locks.
///
/// Thread: its worker's loop thread only (create it on that thread). Ownership: the worker.
public final class ProxyServer {
    public let loop: EventLoop
    let router: any RequestRouter
    public let settings: ProxySettings
    public let counters = WorkerCounters()
    let accessLog: AccessLog?
    /// Debug-level events of the data plane (rejected requests, upstream failures); never per successful request.
    let logger: Logger
    private var listeners: [Listener] = []
    private var connections: [Int: DownstreamConnection] = [:]
    private var nextConnectionID = 0
    private var pools: [UpstreamPool] = []
    private var random: FastRandom
    public private(set) var draining = false
    /// Called once, when draining and the last connection has closed.
    public var onDrained: (() -> Void)?

    public init(loop: EventLoop, router: any RequestRouter, settings: ProxySettings, accessLog: Bool, logger: Logger) {
        self.loop = loop
        self.router = router
        self.settings = settings
        self.accessLog = accessLog ? AccessLog(loop: loop) : nil
        self.logger = logger
        var seed = SystemRandomNumberGenerator()
        random = FastRandom(seed: seed.next())
    }

    /// Starts accepting on a listening socket (which this server then owns and closes).
    public func listen(fd: Int32) {
        listeners.append(Listener(loop: loop, fd: fd) { [unowned(unsafe) self] fd, peer in self.accepted(fd, peer) })
    }

    private func accepted(_ fd: Int32, _ peer: SocketAddress?) {
        guard !draining else { Socket.close(fd); return }
        nextConnectionID += 1
        connections[nextConnectionID] = DownstreamConnection(id: nextConnectionID, fd: fd, peer: peer, server: self)
        counters.downstreamConnectionsTotal.increment()
        counters.downstreamConnectionsActive.increment()
    }

    func connectionClosed(_ connection: DownstreamConnection) {
        guard connections.removeValue(forKey: connection.id) != nil else { return }
        counters.downstreamConnectionsActive.increment(by: -1)
        if draining && connections.isEmpty { drained() }
    }

    /// Replaces the endpoint list that `RouteDecision.forward` indexes; pools for addresses still listed
    /// (and their idle connections) carry over, the others retire.
    public func updateEndpoints(_ addresses: [SocketAddress]) {
        var existing: [SocketAddress: UpstreamPool] = [:]
        for pool in pools { existing[pool.address] = pool }
        pools = addresses.map { address in existing.removeValue(forKey: address) ?? UpstreamPool(address: address, server: self) }
        for pool in existing.values { pool.retired = true }
    }

    @inline(__always) func pool(_ endpoint: Int32) -> UpstreamPool? {
        endpoint >= 0 && Int(endpoint) < pools.count ? pools[Int(endpoint)] : nil
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

    /// Stops accepting, closes idle connections and lets in-flight exchanges finish; `onDrained` fires when
    /// the last connection is gone.
    public func beginDrain() {
        guard !draining else { return }
        draining = true
        for listener in listeners { listener.close() }
        listeners.removeAll()
        for pool in pools { pool.closeIdle() }
        for connection in Array(connections.values) { connection.closeWhenIdle() }
        if connections.isEmpty { drained() }
    }


    private func drained() {
        accessLog?.flush()
        let callback = onDrained
        onDrained = nil
        callback?()
    }

    public var activeConnections: Int { connections.count }
}
