import EventLoop
import WaypointCore

/// A connection on the PROXY-protocol listener (the "sandwich": the node's ztunnel terminated HBONE and passes
/// the tunnel on as plain TCP): reads the PROXY v2 header, takes the identity from TLV 0xD0 and the HBONE
/// target from the destination address, then hands the socket on exactly as an accepted HBONE tunnel.
/// A missing or malformed header, an identity outside the trust domains, or an unknown destination closes
/// the connection before any byte reaches an upstream.
///
/// Thread: its worker's loop thread only. Ownership: the `ProxyServer` until it hands the socket on.
final class ProxyProtocolConnection: DownstreamSession {
    let id: Int
    private unowned(unsafe) let server: ProxyServer
    private let fd: Int32
    private let remote: SocketAddress?
    private var watcher: IOWatcher!
    private lazy var timer = Timer(loop: server.loop) { [unowned(unsafe) self] in self.refuse("no PROXY header in time") }
    private var header: [UInt8] = []
    private var done = false

    init(id: Int, fd: Int32, remote: SocketAddress?, server: ProxyServer) {
        self.id = id
        self.server = server
        self.fd = fd
        self.remote = remote
        watcher = IOWatcher(loop: server.loop, fd: fd, direction: .read) { [unowned(unsafe) self] in self.readable() }
        timer.schedule(after: server.settings.handshakeTimeout)
        watcher.start()
    }

    func closeWhenIdle() {
        guard !done else { return }
        finish()
        Socket.close(fd)
    }

    private func readable() {
        var chunk = [UInt8](repeating: 0, count: 2048)
        let result = chunk.withUnsafeMutableBytes { Socket.read(fd, into: $0) }
        switch result {
        case .bytes(let n): header += chunk[0..<n]
        case .wouldBlock: return
        case .eof, .failed: return refuse("closed before the PROXY header")
        }
        let parsed = header.withUnsafeBytes { ProxyProtocolHeader.parse($0) }
        switch parsed {
        case .incomplete:
            if header.count > ProxyProtocolHeader.maxLength { refuse("PROXY header too long") }
        case .invalid(let reason):
            refuse(reason)
        case .complete(let proxy, let length):
            accept(proxy, rest: Array(header[length...]))
        }
    }

    private func accept(_ proxy: ProxyProtocolHeader, rest: [UInt8]) {
        guard let uri = proxy.identity else { return refuse("no identity TLV (0xD0)") }
        let identity: SpiffeIdentity
        switch SpiffeIdentity.fromCertificate(uris: [uri], trustDomains: server.settings.trustDomains) {
        case .success(let id): identity = id
        case .failure(let rejection): return refuse(rejection.description)
        }
        guard let target = SocketAddress(ip: proxy.destinationIP, port: proxy.destinationPort),
            let destination = server.router.destination(for: target)
        else {
            return refuse("destination \(proxy.destinationIP):\(proxy.destinationPort) is not served here")
        }
        guard destination.cluster < 0 || server.hasReadyEndpoints(destination) else { return refuse("no healthy upstream") }
        finish()
        let source = SocketAddress(ip: proxy.sourceIP, port: proxy.sourcePort)
        let facts = PeerFacts(
            identity: identity, sourceIP: proxy.sourceIP, sourceAddress: source?.description ?? proxy.sourceIP,
            destinationIP: proxy.destinationIP)
        rest.withUnsafeBytes { initial in
            server.startInnerSession(
                on: SocketStream(fd: fd, loop: server.loop), peer: facts, destination: destination,
                traceparent: [], initialInput: initial)
        }
    }

    private func refuse(_ reason: String) {
        guard !done else { return }
        server.counters.proxyHeaderErrors.increment()
        server.logger.debug("PROXY connection refused: \(reason)", metadata: ["client": "\(remote?.description ?? "unknown")"])
        finish()
        Socket.close(fd)
    }

    private func finish() {
        done = true
        watcher.stop()
        timer.cancel()
        server.sessionClosed(id)
    }
}
