import Filters
import EventLoop
import WaypointCore

/// One connection to an upstream endpoint, over a byte stream: a plaintext TCP socket, or an HBONE tunnel to the
/// endpoint's node when it is in the mesh. Connecting, then serving one exchange at a time for the downstream
/// session it is attached to, then idle in its pool.
///
/// Thread: its worker's loop thread only. Ownership: its pool while idle; the attached `DownstreamConnection`
/// while in use (which holds it strongly; `owner` is the unowned link back, cleared on detach). It holds its pool
/// strongly: a reload can retire the pool while an exchange still uses the connection, which then returns to
/// the retired pool and is closed there.
final class UpstreamConnection: ByteStreamHandler {
    enum State { case connecting, active, idle, closed }

    private let stream: any ByteStream
    let pool: UpstreamPool
    private unowned(unsafe) let loop: EventLoop
    let input: ByteBuffer
    let output: ByteBuffer
    private(set) var state = State.connecting
    /// True when taken from the pool: a failure before any response byte may then be a stale keep-alive race.
    private(set) var reused = false
    unowned(unsafe) var owner: DownstreamConnection?
    private lazy var timer = Timer(loop: loop) { [unowned(unsafe) self] in self.timedOut() }
    private let settings: ProxySettings
    /// Requests this connection has carried (DestinationRule `maxRequestsPerConnection`).
    private(set) var requestsServed = 0
    /// The limits of the backend it was opened for, if it has any: counted in their connections until closed.
    private let limits: ClusterLimits?

    /// `stream` is still connecting: its first writability means connected (or `connectFailed`).
    init(
        stream: any ByteStream, pool: UpstreamPool, loop: EventLoop, settings: ProxySettings, connectTimeout: Duration,
        limits: ClusterLimits?
    ) {
        self.stream = stream
        self.pool = pool
        self.limits = limits
        self.loop = loop
        self.settings = settings
        input = ByteBuffer(capacity: Self.inputSize)
        output = ByteBuffer(capacity: 4 * 1024)
        stream.handler = self
        stream.setWriteInterest(true)  // connect completion is signalled by writability
        timer.schedule(after: connectTimeout)
    }

    /// The input buffer's size for heads and small bodies, and how far it grows while a large body streams.
    static let inputSize = 16 * 1024
    static let maxInputSize = 256 * 1024

    func streamReadable() { readable() }
    func streamWritable() { writable() }

    deinit { if state != .closed { stream.close(graceful: false) } }

    var isOpen: Bool { state == .idle || state == .active }

    func attach(_ owner: DownstreamConnection, reused: Bool) {
        self.owner = owner
        requestsServed += 1
        self.reused = reused
        if state == .idle {
            state = .active
            timer.cancel()
        }
    }

    func becomeIdle() {
        owner = nil
        state = .idle
        input.clear()
        input.shrink(above: Self.inputSize)
        output.clear()
        output.shrink(above: 4 * 1024)  // a streamed request body may have grown it
        stream.setReading(true)
        timer.schedule(after: settings.upstreamIdleTimeout)
    }

    func pauseReading() { stream.setReading(false) }
    func resumeReading() { if state == .active { stream.setReading(true) } }

    /// Writes what `output` holds; arms the write watcher for the rest. Returns false when the connection failed.
    @discardableResult
    func flush() -> Bool {
        guard state == .active else { return true }
        guard stream.writeOut(output) != nil else {
            fail(.reset)
            return false
        }
        return true
    }

    private func writable() {
        if state == .connecting {
            guard !stream.connectFailed else { fail(.connectFailed); return }
            state = .active
            timer.cancel()
            stream.setReading(true)
        }
        if flush() { owner?.upstreamDrained() }
    }

    private func readable() {
        let space = input.writableSpace()
        guard space.count > 0 else { stream.setReading(false); return }
        switch stream.read(into: space) {
        case .bytes(let n):
            input.commitWrite(n)
            // A read that filled the buffer means a body is streaming in: the next read may take more at once
            // (fewer reads, writes and wake-ups per MiB), up to `maxInputSize`; it shrinks back when idle.
            if n == space.count && input.capacity < Self.maxInputSize { input.reserve(input.capacity) }
            if state == .idle {
                dropIdle()  // bytes on an idle connection mean the upstream is confused: never reuse it
                return
            }
            owner?.upstreamReadable()
        case .wouldBlock:
            return
        case .eof, .failed:
            if state == .idle { dropIdle() } else { fail(state == .connecting ? .connectFailed : .reset) }
        }
    }

    /// How an attached connection failed: connecting (refused or timed out), or after it was established.
    enum Failure { case connectFailed, reset }

    private func fail(_ failure: Failure) {
        let owner = self.owner
        close()
        owner?.upstreamFailed(self, failure)
    }

    private func timedOut() {
        switch state {
        case .connecting: fail(.connectFailed)
        case .idle:
            dropIdle()
        case .active, .closed: break
        }
    }

    /// Leaves the pool for good (closed by the upstream, confused, or unused too long).
    private func dropIdle() {
        pool.remove(self)
        close()
    }

    /// Gives up its stream to a relay (the upstream switched protocols): the connection is closed for its pool
    /// and its limits, the stream lives on. Pending output is written first; nil when some could not be.
    func detachStream() -> (any ByteStream)? {
        guard state == .active, flush(), output.isEmpty else { return nil }
        pool.releaseLater(self)
        state = .closed
        pool.connectionClosed(limits: limits)
        timer.cancel()
        stream.handler = nil
        return stream
    }

    func close() {
        guard state != .closed else { return }
        pool.releaseLater(self)  // its owner may drop it while it is still on the call stack
        state = .closed
        pool.connectionClosed(limits: limits)
        stream.setReading(false)
        stream.setWriteInterest(false)
        timer.cancel()
        stream.close(graceful: true)
    }
}
