import Filters
import TLS
import EventLoop
import WaypointCore

/// Keep-alive connections to one endpoint, owned by one worker: idle ones are reused most-recently-used first
/// (the warmest, least likely to have been closed by the upstream). For an endpoint in the mesh, each
/// connection is an HBONE tunnel (`CONNECT endpointIP:port` to the endpoint's node at port 15008, with the
/// waypoint's own certificate); the tunnels share a few HBONE connections, each carrying many of them.
///
/// Thread: its worker's loop thread only. Ownership: the `ProxyServer`, which keeps one pool per endpoint
/// address across config reloads; a pool dropped by a reload is `retired` and closes connections as they return.
final class UpstreamPool {
    let address: SocketAddress
    /// Plaintext, HBONE (to `peer`), or TLS originated with `tls`.
    let transport: EndpointTransport
    /// For HBONE: the identity the endpoint's node must present (nil: any of an accepted trust domain).
    let peer: ServiceAccountName?
    /// The DestinationRule's TLS origination for a `.tls` endpoint (nil: unusable, every connect fails).
    let tls: UpstreamTLS?
    /// The endpoint's Pod as Istio's destination labels name it (interned in the worker's metrics), -1 unknown.
    var destinationWorkload: Int32 = -1
    let addressText: String
    /// HBONE connections to the endpoint's node (tunnel pools only).
    private var hboneConnections: [HBONEConnection] = []
    /// The HTTP/2 connections for h2c exchanges to this endpoint, opened on demand: usually one; more while the
    /// newest is full, and ones that take no more streams (spent, GOAWAY) stay here until their last ends.
    private var h2c: [H2CUpstream] = []
    private unowned(unsafe) let server: ProxyServer
    private var idle: [UpstreamConnection] = []
    /// Exchanges (HTTP/1.1 and h2c) of this worker attached to this endpoint now.
    var requestsInFlight = 0
    /// HTTP/1.1 connections open (idle or in use) from this worker to this endpoint.
    private(set) var openConnections = 0
    var hasIdleConnection: Bool { !idle.isEmpty }
    var retired = false {
        didSet {
            guard retired else { return }
            closeIdle()
            for upstream in h2c { upstream.retire() }
        }
    }

    init(address: SocketAddress, transport: EndpointTransport, peer: ServiceAccountName?, tls: UpstreamTLS?, server: ProxyServer) {
        self.peer = peer
        self.address = address
        self.transport = transport
        self.tls = tls
        self.addressText = address.description
        self.server = server
    }

    /// An idle connection (marked reused) or a new one being connected, counted in the backend's `limits`;
    /// nil when the socket call itself failed. The connect timeout is the backend's (DestinationRule), else the proxy's.
    func checkout(for owner: DownstreamConnection, limits: ClusterLimits?) -> UpstreamConnection? {
        while let connection = idle.popLast() {
            if connection.isOpen {
                connection.attach(owner, reused: true)
                return connection
            }
        }
        guard let stream = openStream() else { return nil }
        server.counters.upstreamConnectionsTotal.increment()
        openConnections += 1
        if let limits { server.upstreams.limitedConnectionOpened(limits) }
        let connection = UpstreamConnection(
            stream: stream, pool: self, loop: server.loop, settings: server.settings,
            connectTimeout: limits?.settings.connectTimeout ?? server.settings.connectTimeout, limits: limits)
        connection.attach(owner, reused: false)
        return connection
    }

    /// An HTTP/2 connection to the endpoint that takes another stream, opened when none does. A new one counts
    /// in the backend's `limits` (DestinationRule `tcp.maxConnections`) and carries at most
    /// `maxRequestsPerConnection` streams.
    func h2cUpstream(limits: ClusterLimits?) -> H2CUpstream? {
        if let open = h2c.last(where: { $0.canTakeStream }) { return open }
        guard let stream = openStream(http2: true) else { return nil }
        server.counters.upstreamConnectionsTotal.increment()
        let upstream = H2CUpstream(
            stream: stream, pool: self,
            maxStreams: limits?.settings.maxRequestsPerConnection.flatMap { $0 > 0 ? $0 : nil })
        if let limits { server.upstreams.limitedConnectionOpened(limits) }
        upstream.onClosed = { [unowned(unsafe) self, unowned(unsafe) upstream] in
            self.h2c.removeAll { $0 === upstream }
            if let limits { self.server.upstreams.limitedConnectionClosed(limits) }
        }
        h2c.append(upstream)
        return upstream
    }

    /// Whether an h2c exchange of a backend with `limits` may have a stream here now: a connection takes one, this
    /// worker has none to the endpoint yet (Envoy's rule against starvation), or the backend may open another.
    func h2cHasCapacity(_ limits: ClusterLimits) -> Bool {
        h2c.isEmpty || h2c.contains { $0.canTakeStream } || limits.mayOpenConnection
    }

    /// A new stream to the endpoint (a mirrored request's, a check's, or a pooled connection's): a socket, TLS over
    /// one (offering ALPN `h2` when it will carry `http2`), or an HBONE tunnel.
    func openStream(http2: Bool = false) -> (any ByteStream)? {
        switch transport {
        case .plaintext: return openSocket()
        case .hbone: return openTunnel()
        case .tls:
            guard let tls, case .success(let fd) = Socket.connect(to: address) else { return nil }
            guard let stream = TLSStream(fd: fd, loop: server.loop, settings: tls, http2: http2) else {
                Socket.close(fd)
                return nil
            }
            return stream
        }
    }

    private func openSocket() -> (any ByteStream)? {
        guard case .success(let fd) = Socket.connect(to: address) else { return nil }
        return SocketStream(fd: fd, loop: server.loop, connecting: true)
    }

    /// A new tunnel on an HBONE connection with room, or on a new connection to the endpoint's node.
    private func openTunnel() -> (any ByteStream)? {
        if let open = hboneConnections.last(where: { $0.canOpenTunnel }), let tunnel = open.openTunnel(authority: addressText) {
            return tunnel
        }
        guard let context = server.clientTLSContext,
            case let node = address.with(port: server.settings.upstreamHBONEPort),
            let connection = HBONEConnection.connect(to: node, context: context, worker: server.context, expectedPeer: peer)
        else { return nil }
        connection.onClosed = { [unowned(unsafe) self] closed in self.hboneConnections.removeAll { $0 === closed } }
        hboneConnections.append(connection)
        return connection.openTunnel(authority: addressText)
    }

    func releaseLater(_ object: AnyObject) { server.releaseLater(object) }

    /// Takes back a connection whose exchange ended cleanly.
    func checkin(_ connection: UpstreamConnection) {
        guard !retired, !server.draining else { connection.close(); return }
        connection.becomeIdle()
        idle.append(connection)
        server.upstreams.capacityFreed()
    }

    /// A connection of this pool closed: room for another (DestinationRule `tcp.maxConnections`).
    func connectionClosed(limits: ClusterLimits?) {
        openConnections -= 1
        if let limits { server.upstreams.limitedConnectionClosed(limits) }
        server.upstreams.capacityFreed()
    }

    /// Called by an idle connection that the upstream closed or that timed out.
    func remove(_ connection: UpstreamConnection) {
        if let index = idle.firstIndex(where: { $0 === connection }) { idle.remove(at: index) }
    }

    func closeIdle() {
        let connections = idle
        idle.removeAll()
        for c in connections { c.close() }
        for connection in hboneConnections where connection.tunnelCount == 0 { connection.close() }
    }
}
