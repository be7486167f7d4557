internal import CLibEV

/// Readiness of one file descriptor for one direction (read or write).
///
/// Thread: its loop's thread only. Ownership: the connection it serves; the watcher is stopped in `deinit`,
/// so the callback never outlives its owner. The closure is usually `[unowned(unsafe) self]` for that reason.
public final class IOWatcher {
    public enum Direction { case read, write }

    private unowned(unsafe) let loop: EventLoop
    private let watcher = UnsafeMutablePointer<ev_io>.allocate(capacity: 1)
    private let onReady: () -> Void

    public init(loop: EventLoop, fd: Int32, direction: Direction, onReady: @escaping () -> Void) {
        self.loop = loop
        self.onReady = onReady
        let events = direction == .read ? Int32(EV_READ) : Int32(EV_WRITE)
        wp_ev_io_init(
            watcher,
            { _, w, _ in
                Unmanaged<IOWatcher>.fromOpaque(w!.pointee.data).takeUnretainedValue().onReady()
            }, fd, events)
        watcher.pointee.data = Unmanaged.passUnretained(self).toOpaque()
    }

    deinit {
        ev_io_stop(loop.raw, watcher)
        watcher.deallocate()
    }

    public var isActive: Bool { watcher.pointee.active != 0 }

    public func start() { if !isActive { ev_io_start(loop.raw, watcher) } }
    public func stop() { if isActive { ev_io_stop(loop.raw, watcher) } }

    /// Calls the callback on the loop's next iteration as if the fd were ready (for input already buffered
    /// above the socket, which the kernel will not announce).
    public func feed() { ev_feed_event(loop.raw, UnsafeMutableRawPointer(watcher), watcher.pointee.events & Int32(EV_READ | EV_WRITE)) }
}
