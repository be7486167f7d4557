internal import CLibEV

/// A libev timer, one-shot (`schedule(after:)`) or periodic (`scheduleRepeating(every:)`). Idle timeouts use
/// the periodic form and compare a last-activity stamp, so I/O never has to touch the timer.
///
/// Thread: its loop's thread only. Ownership: its owner keeps it alive; the watcher is stopped in `deinit`.
public final class Timer {
    private unowned(unsafe) let loop: EventLoop
    private let watcher = UnsafeMutablePointer<ev_timer>.allocate(capacity: 1)
    private let onFire: () -> Void
    private var repeating = false

    public init(loop: EventLoop, onFire: @escaping () -> Void) {
        self.loop = loop
        self.onFire = onFire
        wp_ev_timer_init(
            watcher,
            { _, w, _ in
                let timer = Unmanaged<Timer>.fromOpaque(w!.pointee.data).takeUnretainedValue()
                if !timer.repeating { timer.cancel() }
                timer.onFire()
            }, 0, 0)
        watcher.pointee.data = Unmanaged.passUnretained(self).toOpaque()
    }

    deinit {
        ev_timer_stop(loop.raw, watcher)
        watcher.deallocate()
    }

    public var isActive: Bool { watcher.pointee.active != 0 }

    /// Whether the last schedule was `scheduleRepeating`.
    public var isRepeating: Bool { repeating }

    /// Fires once after `delay`, replacing any earlier schedule.
    public func schedule(after delay: Duration) { arm(delay, repeating: false) }

    /// Fires every `interval` until cancelled.
    public func scheduleRepeating(every interval: Duration) { arm(interval, repeating: true) }

    private func arm(_ duration: Duration, repeating: Bool) {
        self.repeating = repeating
        let (seconds, attoseconds) = duration.components
        ev_timer_stop(loop.raw, watcher)
        // ev_timer_again ignores a zero repeat, hence the floor of one microsecond.
        watcher.pointee.repeat = max(Double(seconds) + Double(attoseconds) / 1e18, 0.000_001)
        ev_timer_again(loop.raw, watcher)
    }

    public func cancel() { ev_timer_stop(loop.raw, watcher) }
}

extension Optional where Wrapped == Timer {
    /// Schedules a one-shot timer created on first use (`make` runs only then): timers most requests never
    /// need cost nothing until one does.
    public mutating func schedule(after delay: Duration, creating make: @autoclosure () -> Timer) {
        let timer: Timer
        switch self {
        case .some(let existing): timer = existing
        case .none: timer = make(); self = timer
        }
        timer.schedule(after: delay)
    }
}
