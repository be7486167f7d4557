import EventLoop

/// Keep-alive connections to one endpoint, owned by one worker: idle ones are reused most-recently-used first
/// (the warmest, least likely to have been closed by the upstream).
///
/// Thread: its worker's loop thread only. Ownership: the `ProxyServer`, which keeps one pool per endpoint
/// address across config reloads; a pool dropped by a reload is `retired` and closes connections as they return.
final class UpstreamPool {
    let address: SocketAddress
    let addressText: String
    private unowned(unsafe) let server: ProxyServer
    private var idle: [UpstreamConnection] = []
    var retired = false {
        didSet { if retired { closeIdle() } }
    }

    init(address: SocketAddress, server: ProxyServer) {
        self.address = address
        self.addressText = address.description
        self.server = server
    }

    /// An idle connection (marked reused) or a new one being connected; nil when the socket call itself failed.
    func checkout(for owner: DownstreamConnection) -> UpstreamConnection? {
        while let connection = idle.popLast() {
            if connection.isOpen {
                connection.attach(owner, reused: true)
                return connection
            }
        }
        guard case .success(let fd) = Socket.connect(to: address) else { return nil }
        server.counters.upstreamConnectionsTotal.increment()
        let connection = UpstreamConnection(fd: fd, pool: self, loop: server.loop, settings: server.settings)
        connection.attach(owner, reused: false)
        return connection
    }

    /// Takes back a connection whose exchange ended cleanly.
    func checkin(_ connection: UpstreamConnection) {
        guard !retired, !server.draining else { connection.close(); return }
        connection.becomeIdle()
        idle.append(connection)
    }

    /// Called by an idle connection that the upstream closed or that timed out.
    func remove(_ connection: UpstreamConnection) {
        if let index = idle.firstIndex(where: { $0 === connection }) { idle.remove(at: index) }
    }

    func closeIdle() {
        let connections = idle
        idle.removeAll()
        for c in connections { c.close() }
    }
}
