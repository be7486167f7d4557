internal import CLibEV

/// Runs just before the loop blocks for I/O: where a worker flushes its batched access-log lines, so that
/// logging costs one write per loop iteration instead of one per request.
///
/// Thread: its loop's thread only. Ownership: its owner keeps it alive.
public final class PrepareWatcher {
    private unowned(unsafe) let loop: EventLoop
    private let watcher = UnsafeMutablePointer<ev_prepare>.allocate(capacity: 1)
    private let onPrepare: () -> Void

    public init(loop: EventLoop, onPrepare: @escaping () -> Void) {
        self.loop = loop
        self.onPrepare = onPrepare
        wp_ev_prepare_init(watcher) { _, w, _ in
            Unmanaged<PrepareWatcher>.fromOpaque(w!.pointee.data).takeUnretainedValue().onPrepare()
        }
        watcher.pointee.data = Unmanaged.passUnretained(self).toOpaque()
        ev_prepare_start(loop.raw, watcher)
        ev_unref(loop.raw)  // never keeps the loop alive by itself
    }

    deinit {
        ev_ref(loop.raw)
        ev_prepare_stop(loop.raw, watcher)
        watcher.deallocate()
    }
}
