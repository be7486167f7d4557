import EventLoop
import WaypointCore

/// A listening socket on a worker's loop: accepts until the kernel has no more pending connections, and hands
/// each one to `onAccept`. Stops (and closes the socket) on `close()`, as a drain begins.
///
/// Thread: its loop's thread only. Ownership: the worker's `ProxyServer` (plaintext), or the `Runtime` for the
/// HBONE listener, whose connections it balances across workers.
public final class Listener {
    private let fd: Int32
    private var watcher: IOWatcher?
    private let onAccept: (Int32, SocketAddress?) -> Void

    public init(loop: EventLoop, fd: Int32, onAccept: @escaping (Int32, SocketAddress?) -> Void) {
        self.fd = fd
        self.onAccept = onAccept
        watcher = IOWatcher(loop: loop, fd: fd, direction: .read) { [unowned(unsafe) self] in self.acceptPending() }
        watcher?.start()
    }

    deinit { close() }

    private func acceptPending(limit: Int = 64) {
        // Bounded so one busy listener cannot starve the loop's other work.
        for _ in 0..<limit {
            guard let (fd, peer) = Socket.accept(self.fd) else { return }
            onAccept(fd, peer)
        }
    }

    /// Stops listening. Connections already in the accept queue are taken first: closing a listener resets
    /// them (with SO_REUSEPORT, Linux hands them to a sibling socket instead only when `net.ipv4.tcp_migrate_req`
    /// is 1), and a rolling update must not lose them.
    public func close() {
        guard watcher != nil else { return }
        acceptPending(limit: .max)
        watcher = nil
        Socket.close(fd)
    }
}
