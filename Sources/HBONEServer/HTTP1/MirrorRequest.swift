import EventLoop
import WaypointCore

/// A copy of a request sent to a mirror endpoint (HTTPRoute RequestMirror, VirtualService `mirror`): written
/// with `connection: close`, its answer read and dropped. It never touches the exchange it copies, so a slow
/// or failing mirror cannot slow or fail the real request.
///
/// Thread: its worker's loop thread only. Ownership: the server's set of mirrors in flight, until it ends.
final class MirrorRequest: ByteStreamHandler {
    private let stream: any ByteStream
    private let pending: ByteBuffer
    private unowned(unsafe) let clusters: UpstreamClusters
    private let loop: EventLoop
    private lazy var timer = Timer(loop: loop) { [unowned(unsafe) self] in self.end() }
    private var ended = false

    /// Mirrors are bounded in time as well as number: one that gets no end within this is dropped.
    static let timeout: Duration = .seconds(30)

    init(stream: any ByteStream, request: ByteBuffer, clusters: UpstreamClusters, loop: EventLoop) {
        self.stream = stream
        self.pending = request
        self.clusters = clusters
        self.loop = loop
        timer.schedule(after: Self.timeout)
        stream.handler = self
        stream.setReading(true)
        stream.setWriteInterest(true)
    }

    func streamWritable() {
        guard !ended else { return }
        if stream.connectFailed { return end() }
        if stream.writeOut(pending) == nil { end() }
    }

    func streamReadable() {
        guard !ended else { return }
        withUnsafeTemporaryAllocation(byteCount: 16 * 1024, alignment: 1) { scratch in
            while !ended {
                switch stream.read(into: scratch) {
                case .bytes: continue  // the mirror's answer is dropped
                case .wouldBlock: return
                case .eof, .failed: end()
                }
            }
        }
    }

    private func end() {
        guard !ended else { return }
        ended = true
        timer.cancel()
        stream.close(graceful: false)
        clusters.mirrorEnded(self)
    }
}
