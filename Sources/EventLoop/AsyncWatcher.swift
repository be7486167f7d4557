internal import CLibEV

/// Wakes a loop from another thread (libev `ev_async`): the worker inbox's doorbell.
///
/// Thread: `send()` from any thread; the callback runs on the loop's thread. Ownership: the loop's owner.
public final class AsyncWatcher: @unchecked Sendable {
    // SAFETY: only `send()` is called off the loop thread, and ev_async_send is documented as thread-safe.
    private unowned(unsafe) let loop: EventLoop
    private let watcher = UnsafeMutablePointer<ev_async>.allocate(capacity: 1)
    private let onWake: () -> Void

    public init(loop: EventLoop, onWake: @escaping () -> Void) {
        self.loop = loop
        self.onWake = onWake
        wp_ev_async_init(watcher) { _, w, _ in
            Unmanaged<AsyncWatcher>.fromOpaque(w!.pointee.data).takeUnretainedValue().onWake()
        }
        watcher.pointee.data = Unmanaged.passUnretained(self).toOpaque()
        ev_async_start(loop.raw, watcher)
    }

    deinit {
        ev_async_stop(loop.raw, watcher)
        watcher.deallocate()
    }

    /// Any thread.
    public func send() { ev_async_send(loop.raw, watcher) }

}
