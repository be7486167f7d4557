import EventLoop
import WaypointCore

/// One TCP connection to an upstream endpoint: connecting, then serving one exchange at a time for the
/// downstream connection it is attached to, then idle in its pool.
///
/// Thread: its worker's loop thread only. Ownership: its pool while idle; the attached `DownstreamConnection`
/// while in use (which holds it strongly; `owner` is the unowned link back, cleared on detach). It holds its pool
/// strongly: a reload can retire the pool while an exchange still uses the connection, which then returns to
/// the retired pool and is closed there.
final class UpstreamConnection {
    enum State { case connecting, active, idle, closed }

    let fd: Int32
    let pool: UpstreamPool
    private unowned(unsafe) let loop: EventLoop
    let input: ByteBuffer
    let output: ByteBuffer
    private(set) var state = State.connecting
    /// True when taken from the pool: a failure before any response byte may then be a stale keep-alive race.
    private(set) var reused = false
    unowned(unsafe) var owner: DownstreamConnection?
    private var readWatcher: IOWatcher!
    private var writeWatcher: IOWatcher!
    private var timer: Timer!
    private let settings: ProxySettings

    init(fd: Int32, pool: UpstreamPool, loop: EventLoop, settings: ProxySettings) {
        self.fd = fd
        self.pool = pool
        self.loop = loop
        self.settings = settings
        input = ByteBuffer(capacity: 16 * 1024)
        output = ByteBuffer(capacity: 4 * 1024)
        readWatcher = IOWatcher(loop: loop, fd: fd, direction: .read) { [unowned(unsafe) self] in self.readable() }
        writeWatcher = IOWatcher(loop: loop, fd: fd, direction: .write) { [unowned(unsafe) self] in self.writable() }
        timer = Timer(loop: loop) { [unowned(unsafe) self] in self.timedOut() }
        writeWatcher.start()  // connect completion is signalled by writability
        timer.schedule(after: settings.connectTimeout)
    }

    deinit { close() }

    var isOpen: Bool { state == .idle || state == .active }

    func attach(_ owner: DownstreamConnection, reused: Bool) {
        self.owner = owner
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
        output.clear()
        readWatcher.start()
        timer.schedule(after: settings.upstreamIdleTimeout)
    }

    func pauseReading() { readWatcher.stop() }
    func resumeReading() { if state == .active { readWatcher.start() } }

    /// Writes what `output` holds; arms the write watcher for the rest. Returns false when the connection failed.
    @discardableResult
    func flush() -> Bool {
        guard state == .active else { return true }
        while !output.isEmpty {
            switch Socket.write(fd, from: output.readable) {
            case .bytes(let n): output.consume(n)
            case .wouldBlock:
                writeWatcher.start()
                return true
            case .eof, .failed:
                fail(.reset)
                return false
            }
        }
        writeWatcher.stop()
        return true
    }

    private func writable() {
        if state == .connecting {
            let error = Socket.connectResult(fd)
            guard error == 0 else { fail(.connectFailed); return }
            state = .active
            timer.cancel()
            readWatcher.start()
        }
        if flush() { owner?.upstreamDrained() }
    }

    private func readable() {
        let space = input.writableSpace()
        guard space.count > 0 else { readWatcher.stop(); return }
        switch Socket.read(fd, into: space) {
        case .bytes(let n):
            input.commitWrite(n)
            if state == .idle {
                dropIdle()  // bytes on an idle connection mean the upstream is confused: never reuse it
                return
            }
            owner?.upstreamReadable()
        case .wouldBlock:
            return
        case .eof, .failed:
            if state == .idle { dropIdle() } else { fail(.reset) }
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

    func close() {
        guard state != .closed else { return }
        state = .closed
        readWatcher.stop()
        writeWatcher.stop()
        timer.cancel()
        Socket.close(fd)
    }
}
