import WaypointCore

/// After `101 Switching Protocols` (a WebSocket, say): the client's stream and the upstream's relay bytes both
/// ways, whatever they are. A side's end of stream is passed on once what it sent is delivered (half-close); the
/// relay closes when both directions ended, at once when either fails, or when it moved nothing for the relay idle
/// timeout. At most one buffer per direction: a side that cannot take more pauses reading from the other.
///
/// Thread: its worker's loop thread only. Ownership: the `ProxyServer` (it replaces the HTTP/1.1 session under
/// the same id); it owns both streams.
final class ByteRelay: DownstreamSession {
    /// One side: its stream and the bytes waiting to be written to it.
    final class End: ByteStreamHandler {
        let stream: any ByteStream
        let pending: ByteBuffer
        /// It sent its end of stream.
        var ended = false
        /// The other side's end was passed on to it.
        var shutDown = false
        unowned(unsafe) var relay: ByteRelay?

        init(_ stream: any ByteStream, pending: ByteBuffer) {
            self.stream = stream
            self.pending = pending
        }

        func streamReadable() { relay?.pump(from: self) }
        func streamWritable() { relay?.drain(into: self) }
    }

    let id: Int
    private unowned(unsafe) let server: ProxyServer
    private let client: End
    private let upstream: End
    /// Bytes from the client and to it, through the relay.
    private var received = 0
    private var sent = 0
    private var closed = false
    private let idle: RelayIdleTimeout
    /// Told once, with the relay's byte counts, when it closes.
    private let onClosed: (_ received: Int, _ sent: Int) -> Void

    /// `toClient` and `toUpstream`: what is already waiting for each side (the 101 head, bytes read past the heads).
    init(
        id: Int, client: any ByteStream, upstream: any ByteStream, toClient: ByteBuffer, toUpstream: ByteBuffer, server: ProxyServer,
        onClosed: @escaping (_ received: Int, _ sent: Int) -> Void
    ) {
        self.id = id
        self.server = server
        self.client = End(client, pending: toClient)
        self.upstream = End(upstream, pending: toUpstream)
        self.onClosed = onClosed
        idle = RelayIdleTimeout(server: server)
        for end in [self.client, self.upstream] {
            end.relay = self
            end.stream.handler = end
        }
        idle.start { [unowned(unsafe) self] in self.close(graceful: true) }
    }

    /// Sends what waits and starts reading both sides.
    func start() {
        drain(into: client)
        drain(into: upstream)
    }

    func closeWhenIdle() {}  // a relay has no idle point: it ends when either side ends it

    private func other(_ end: End) -> End { end === client ? upstream : client }

    fileprivate func pump(from source: End) {
        let sink = other(source)
        reading: while !closed && !source.ended {
            let space = sink.pending.writableSpace()
            guard space.count > 0 else { source.stream.setReading(false); break }
            switch source.stream.read(into: space) {
            case .bytes(let n):
                sink.pending.commitWrite(n)
                idle.activity()
                if source === client { received += n }
            case .wouldBlock: break reading
            case .eof:
                source.ended = true
                source.stream.setReading(false)
            case .failed: return close(graceful: false)
            }
        }
        drain(into: sink)
    }

    fileprivate func drain(into sink: End) {
        guard !closed else { return }
        guard let written = sink.stream.writeOut(sink.pending) else { return close(graceful: false) }
        if sink === client { sent += written }
        guard sink.pending.isEmpty else { return }
        let source = other(sink)
        guard source.ended else { return source.stream.setReading(true) }
        // Everything the ended side sent is delivered: its end goes on; both directions ended, the relay is done.
        if !sink.shutDown {
            sink.shutDown = true
            sink.stream.shutdownWrite()
        }
        if client.shutDown && upstream.shutDown { close(graceful: true) }
    }

    private func close(graceful: Bool) {
        guard !closed else { return }
        closed = true
        idle.cancel()
        for end in [client, upstream] {
            end.stream.setReading(false)
            end.stream.setWriteInterest(false)
            end.stream.close(graceful: graceful)
        }
        onClosed(received, sent)
        server.sessionClosed(id)
    }
}
