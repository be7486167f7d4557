import EventLoop
import HTTP2
import WaypointCore

/// An HTTP/2 session over a `ByteStream`, without TLS: h2c inside an HBONE tunnel (server role) or to an
/// upstream (client role, prior knowledge). It moves bytes between the stream and the session and keeps
/// nghttp2 from being re-entered: a flush asked for from inside the session's callbacks runs after they return.
///
/// Thread: its worker's loop thread only. Ownership: the session that owns it (the h2c proxy session or an
/// upstream pool); it owns its stream.
final class HTTP2Channel: ByteStreamHandler {
    let stream: any ByteStream
    private(set) var session: HTTP2Session!
    private let output = ByteBuffer(lazyCapacity: 16 * 1024)
    private var inSession = false
    private var flushing = false
    private var needsFlush = false
    private(set) var closed = false
    /// Bytes arrived from the peer: it was reached (a failure after this is a reset, not a connect failure).
    private(set) var heardFromPeer = false
    /// Called once when the channel closes (stream ended, protocol error, or `close`).
    var onClosed: (() -> Void)?

    /// `extendedConnect`: a server that takes RFC 8441 extended CONNECT (WebSocket over HTTP/2).
    init(stream: any ByteStream, role: HTTP2Session.Role, delegate: any HTTP2SessionDelegate, extendedConnect: Bool = false) {
        self.stream = stream
        var settings = HTTP2Settings()
        settings.enableConnectProtocol = extendedConnect
        session = HTTP2Session(role: role, settings: settings, delegate: delegate)
        stream.handler = self
        stream.setReading(true)
    }

    /// Feeds bytes already read from the stream (protocol detection's); false on a protocol error.
    func receive(_ bytes: UnsafeRawBufferPointer) {
        inSession = true
        let ok = session.receive(bytes)
        inSession = false
        if !ok { failed() } else { flush() }
    }

    func streamReadable() {
        // A stack buffer, not the worker's shared scratch: reading a tunnel can happen while another session's
        // bytes are still being parsed further up the stack.
        withUnsafeTemporaryAllocation(byteCount: 16 * 1024, alignment: 16) { buffer in
            for _ in 0..<16 where !closed {
                switch stream.read(into: buffer) {
                case .bytes(let n):
                    heardFromPeer = true
                    inSession = true
                    let ok = session.receive(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
                    inSession = false
                    if !ok { return failed() }
                case .wouldBlock:
                    return flush()
                case .eof, .failed:
                    return close()
                }
            }
            flush()
        }
    }

    func streamWritable() { flush() }

    /// Sends what the session has; safe to call from anywhere (deferred while inside the session).
    func flush() {
        guard !closed else { return }
        guard !inSession && !flushing else { needsFlush = true; return }
        flushing = true
        defer { flushing = false }
        repeat {
            needsFlush = false
            while true {
                if output.isEmpty {
                    inSession = true
                    let ok = session.send(into: output, limit: 64 * 1024)
                    inSession = false
                    guard ok else { return close() }
                    if output.isEmpty { break }
                }
                guard stream.writeOut(output) != nil else { return close() }
                if !output.isEmpty { return }
            }
        } while needsFlush && !closed
        if !session.isAlive { close() }
    }

    /// A protocol error or flood: what nghttp2 still has and a GOAWAY saying why, then close.
    private func failed() {
        session.appendFinalFrames(into: output, limit: 16 * 1024)
        while !output.isEmpty, case .bytes(let n) = stream.write(from: output.readable) { output.consume(n) }
        close()
    }

    func close() {
        guard !closed else { return }
        closed = true
        stream.setReading(false)
        stream.setWriteInterest(false)
        stream.close(graceful: true)
        let callback = onClosed
        onClosed = nil
        callback?()
    }
}
