import EventLoop
import WaypointCore

/// A byte-for-byte relay between a downstream stream (a TCP tunnel) and a new upstream TCP connection, with
/// half-close carried both ways and at most one 16 KiB buffer per direction: a side that cannot take more
/// pauses reading from the other. Closed when it moved nothing for the relay idle timeout.
///
/// Thread: its worker's loop thread only. Ownership: the `ProxyServer` (until closed); it owns both ends.
final class TCPRelay: ByteStreamHandler, DownstreamSession {
    let id: Int
    private unowned(unsafe) let server: ProxyServer
    private let downstream: any ByteStream
    private let upstreamFD: Int32
    private var upstreamRead: IOWatcher!
    private var upstreamWrite: IOWatcher!
    private lazy var connectTimer = Timer(loop: server.loop) { [unowned(unsafe) self] in self.connectFailed() }
    private var connected = false
    private let toUpstream = ByteBuffer(lazyCapacity: 16 * 1024)
    private let toDownstream = ByteBuffer(lazyCapacity: 16 * 1024)
    private var downstreamEnded = false
    private var upstreamEnded = false
    private var upstreamShutDown = false
    private var closed = false
    private let idle: RelayIdleTimeout
    /// `istio_tcp_*` series: who, to which service, and the bytes each way.
    private let series: (principal: Int32, service: Int32, mutualTLS: Bool)
    private var bytesReceived = 0
    private var bytesSent = 0

    /// Starts connecting to `upstream`; nil when the socket call itself failed.
    init?(
        id: Int, downstream: any ByteStream, upstream: SocketAddress, initialInput: UnsafeRawBufferPointer?, server: ProxyServer,
        series: (principal: Int32, service: Int32, mutualTLS: Bool)
    ) {
        guard case .success(let fd) = Socket.connect(to: upstream) else { return nil }
        self.id = id
        self.series = series
        self.server = server
        self.downstream = downstream
        upstreamFD = fd
        idle = RelayIdleTimeout(server: server)
        server.counters.upstreamConnectionsTotal.increment()
        upstreamRead = IOWatcher(loop: server.loop, fd: fd, direction: .read) { [unowned(unsafe) self] in self.upstreamReadable() }
        upstreamWrite = IOWatcher(loop: server.loop, fd: fd, direction: .write) { [unowned(unsafe) self] in self.upstreamWritable() }
        connectTimer.schedule(after: server.settings.connectTimeout)
        upstreamWrite.start()
        if let initialInput { toUpstream.append(initialInput); bytesReceived = initialInput.count }
        server.counters.istio.recordTCP(principal: series.principal, service: series.service, mutualTLS: series.mutualTLS, closed: false)
        downstream.handler = self
        idle.start { [unowned(unsafe) self] in self.close(graceful: true) }
        // Read the client only once the upstream is there, so nothing piles up while connecting.
    }

    func closeWhenIdle() {}  // a byte stream has no idle point: it ends when either side ends it

    // MARK: Downstream

    func streamReadable() {
        while !closed && !downstreamEnded {
            let space = toUpstream.writableSpace()
            guard space.count > 0 else { downstream.setReading(false); break }
            switch downstream.read(into: space) {
            case .bytes(let n):
                toUpstream.commitWrite(n)
                bytesReceived += n
                idle.activity()
            case .wouldBlock: flushUpstream(); return
            case .eof:
                downstreamEnded = true
                downstream.setReading(false)
            case .failed: return close(graceful: false)
            }
        }
        flushUpstream()
    }

    func streamWritable() { flushDownstream() }

    private func flushDownstream() {
        guard let written = downstream.writeOut(toDownstream) else { return close(graceful: false) }
        bytesSent += written
        if !toDownstream.isEmpty { return }
        if upstreamEnded { return finishIfDone() }
        if connected { upstreamRead.start() }
    }

    // MARK: Upstream

    private func upstreamWritable() {
        if !connected {
            guard Socket.connectResult(upstreamFD) == 0 else { return connectFailed() }
            connected = true
            connectTimer.cancel()
            upstreamRead.start()
            downstream.setReading(true)
        }
        flushUpstream()
    }

    private func flushUpstream() {
        guard connected, !closed else { return }
        while !toUpstream.isEmpty {
            switch Socket.write(upstreamFD, from: toUpstream.readable) {
            case .bytes(let n): toUpstream.consume(n)
            case .wouldBlock:
                upstreamWrite.start()
                return
            case .eof, .failed:
                return close(graceful: false)
            }
        }
        upstreamWrite.stop()
        if downstreamEnded {
            if !upstreamShutDown { upstreamShutDown = true; Socket.shutdownWrite(upstreamFD) }
            finishIfDone()
        } else {
            downstream.setReading(true)
        }
    }

    private func upstreamReadable() {
        while !closed {
            let space = toDownstream.writableSpace()
            guard space.count > 0 else { upstreamRead.stop(); break }
            switch Socket.read(upstreamFD, into: space) {
            case .bytes(let n):
                toDownstream.commitWrite(n)
                idle.activity()
            case .wouldBlock: return flushDownstream()
            case .eof:
                upstreamEnded = true
                upstreamRead.stop()
                return flushDownstream()
            case .failed:
                return close(graceful: false)
            }
        }
        flushDownstream()
    }

    private func connectFailed() {
        server.counters.upstreamConnectFailures.increment()
        close(graceful: false)
    }

    /// The upstream ended and everything it sent was delivered: end the tunnel cleanly. (The tunnel is not
    /// half-closed towards the client while it keeps sending: an upstream that closed is done in practice, and
    /// the byte stream offers no write-only shutdown.)
    private func finishIfDone() {
        if upstreamEnded && toDownstream.isEmpty { close(graceful: true) }
    }

    private func close(graceful: Bool) {
        guard !closed else { return }
        closed = true
        idle.cancel()
        server.counters.istio.recordTCP(
            principal: series.principal, service: series.service, mutualTLS: series.mutualTLS, closed: true,
            received: bytesReceived, sent: bytesSent)
        upstreamRead.stop()
        upstreamWrite.stop()
        connectTimer.cancel()
        Socket.close(upstreamFD)
        downstream.close(graceful: graceful)
        server.sessionClosed(id)
    }
}
