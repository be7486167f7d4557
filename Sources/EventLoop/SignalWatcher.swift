internal import CLibEV

/// A signal delivered on the default loop's thread instead of in a signal handler.
///
/// Thread: the main thread (default loop) only. Ownership: the main loop's owner.
public final class SignalWatcher {
    private unowned(unsafe) let loop: EventLoop
    private let watcher = UnsafeMutablePointer<ev_signal>.allocate(capacity: 1)
    private let onSignal: () -> Void

    public init(loop: EventLoop, signal: Int32, onSignal: @escaping () -> Void) {
        self.loop = loop
        self.onSignal = onSignal
        wp_ev_signal_init(
            watcher,
            { _, w, _ in
                Unmanaged<SignalWatcher>.fromOpaque(w!.pointee.data).takeUnretainedValue().onSignal()
            }, signal)
        watcher.pointee.data = Unmanaged.passUnretained(self).toOpaque()
        ev_signal_start(loop.raw, watcher)
    }

    deinit {
        ev_signal_stop(loop.raw, watcher)
        watcher.deallocate()
    }
}
