import EventLoop

/// Ends a byte relay that moved no byte either way for the relay idle timeout (`ProxySettings.relayIdleTimeout`),
/// and counts it: a periodic check of a last-activity stamp, so that moving bytes costs one store and never
/// touches the timer.
///
/// Thread: its loop's thread only. Ownership: its relay, which cancels it when it closes.
final class RelayIdleTimeout {
    private unowned(unsafe) let loop: EventLoop
    private let counters: WorkerCounters
    private let timeout: Duration?
    private var lastActivity: Double
    private var timer: Timer?

    init(server: ProxyServer) {
        loop = server.loop
        counters = server.counters
        timeout = server.settings.relayIdleTimeout
        lastActivity = loop.now
    }

    /// Starts watching; `onIdle` runs once, when the relay moved nothing for the timeout.
    func start(onIdle: @escaping () -> Void) {
        guard let timeout else { return }
        let limit = timeout.seconds
        let timer = Timer(loop: loop) { [unowned(unsafe) self] in
            guard self.loop.now - self.lastActivity >= limit else { return }
            self.cancel()
            self.counters.relayIdleTimeouts.increment()
            onIdle()
        }
        timer.scheduleRepeating(every: max(timeout / 4, .milliseconds(50)))
        self.timer = timer
    }

    /// Bytes moved.
    func activity() { lastActivity = loop.now }

    func cancel() { timer?.cancel() }
}
