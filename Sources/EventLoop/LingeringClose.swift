/// Closes a socket after a last write the peer must see (a GOAWAY): closing with unread input makes the
/// kernel send RST, and an RST makes the peer drop what it has not read yet. So our side ends first (FIN after
/// the data), the peer's input is read and dropped until it ends too or `timeout` passes, then the socket
/// closes (nginx's lingering close).
///
/// Thread: its loop's thread only. Ownership: keeps itself alive until the socket is closed.
public final class LingeringClose {
    private let fd: Int32
    private unowned(unsafe) let loop: EventLoop
    private lazy var reader = IOWatcher(loop: loop, fd: fd, direction: .read) { [unowned(unsafe) self] in self.drain() }
    private lazy var timer = Timer(loop: loop) { [unowned(unsafe) self] in self.finish() }
    private var retained: LingeringClose?

    @discardableResult
    public init(loop: EventLoop, fd: Int32, timeout: Duration = .seconds(2)) {
        self.fd = fd
        self.loop = loop
        Socket.shutdownWrite(fd)
        retained = self
        timer.schedule(after: timeout)
        reader.start()
        drain()
    }

    private func drain() {
        withUnsafeTemporaryAllocation(byteCount: 16 * 1024, alignment: 16) { scratch in
            while true {
                switch Socket.read(fd, into: scratch) {
                case .bytes: continue
                case .wouldBlock: return
                case .eof, .failed: return finish()
                }
            }
        }
    }

    private func finish() {
        guard retained != nil else { return }
        reader.stop()
        timer.cancel()
        Socket.close(fd)
        retained = nil
    }
}
