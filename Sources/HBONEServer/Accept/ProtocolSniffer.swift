import EventLoop
import WaypointCore

/// Decides what a tunnel of undeclared protocol carries from its first bytes, as Istio's protocol detection
/// does: an HTTP/1.x request line → the HTTP/1.1 session, the HTTP/2 preface → h2c (routes apply to both);
/// anything else, or nothing within
/// `detectionTimeout` (server-first protocols) → the TCP relay. The bytes read are handed on, not lost.
///
/// Thread: its worker's loop thread only. Ownership: the `ProxyServer` until it hands the stream on.
final class ProtocolSniffer: ByteStreamHandler, DownstreamSession {
    let id: Int
    private unowned(unsafe) let server: ProxyServer
    private let stream: any ByteStream
    private let peer: PeerFacts
    private let destination: Destination
    private let traceparent: [UInt8]
    private var seen: [UInt8] = []
    private lazy var timer = Timer(loop: server.loop) { [unowned(unsafe) self] in self.decide(.tcp) }
    private var done = false

    init(id: Int, stream: any ByteStream, peer: PeerFacts, destination: Destination, traceparent: [UInt8], server: ProxyServer) {
        self.id = id
        self.server = server
        self.stream = stream
        self.peer = peer
        self.destination = destination
        self.traceparent = traceparent
        timer.schedule(after: server.settings.detectionTimeout)
        stream.handler = self
        stream.setReading(true)
    }

    func closeWhenIdle() {
        guard !done else { return }
        done = true
        timer.cancel()
        stream.close(graceful: true)
        server.sessionClosed(id)
    }

    func streamWritable() {}

    func streamReadable() {
        var chunk = [UInt8](repeating: 0, count: 64)
        let result = chunk.withUnsafeMutableBytes { stream.read(into: $0) }
        switch result {
        case .bytes(let n):
            chunk.withUnsafeBytes { received(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
        case .wouldBlock:
            break
        case .eof, .failed:
            decide(.tcp)  // the relay sees the end and finishes cleanly
        }
    }

    /// Bytes read so far (from the stream, or given with the stream).
    func received(_ bytes: UnsafeRawBufferPointer) {
        seen += bytes
        if let kind = Self.classify(seen) { decide(kind) }
    }

    /// `.http1` for an HTTP/1.x request line, `.tcp` for anything else, nil while undecided.
    static func classify(_ bytes: [UInt8]) -> InnerProtocol? {
        // A method token (upper-case letters, at most 16) and a space; "PRI " starts the HTTP/2 preface (h2c).
        for (i, b) in bytes.enumerated() {
            if b == 0x20 { return i == 0 ? .tcp : bytes.starts(with: "PRI ".utf8) ? .http2 : .http1 }
            if !(b >= 0x41 && b <= 0x5A) || i >= 16 { return .tcp }
        }
        return nil
    }

    private func decide(_ kind: InnerProtocol) {
        guard !done else { return }
        done = true
        timer.cancel()
        server.sessionClosed(id)
        seen.withUnsafeBytes { initial in
            if kind == .http1 {
                server.startHTTP(on: stream, peer: peer, destination: destination, traceparent: traceparent, initialInput: initial)
            } else if kind == .http2 {
                server.startH2C(on: stream, peer: peer, destination: destination, traceparent: traceparent, initialInput: initial)
            } else {
                server.startTCP(on: stream, destination: destination, peer: peer, initialInput: initial)
            }
        }
    }
}
