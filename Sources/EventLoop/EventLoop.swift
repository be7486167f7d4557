internal import CLibEV

/// One libev loop. Each worker thread owns one, and the main thread owns the default loop (the only one that
/// may watch signals).
///
/// Thread: every method except `wakeUp`-style watchers (see `AsyncWatcher.send`) is loop-thread only.
/// Ownership: whoever created it; watchers hold it unowned, so it must outlive them.
public final class EventLoop: @unchecked Sendable {
    // SAFETY: the pointer is used only from the loop's own thread, except through AsyncWatcher.send,
    // which libev documents as thread-safe.
    let raw: OpaquePointer
    private let isDefault: Bool

    /// A fresh loop for a worker thread (epoll on Linux).
    public init() {
        guard let loop = ev_loop_new(UInt32(EVFLAG_AUTO) | UInt32(EVFLAG_NOSIGMASK)) else {
            preconditionFailure("ev_loop_new failed")
        }
        raw = loop
        isDefault = false
    }

    private init(defaultLoop: OpaquePointer) {
        raw = defaultLoop
        isDefault = true
    }

    /// The process-wide default loop: the only one that can watch signals.
    public static func makeDefault() -> EventLoop {
        guard let loop = wp_ev_default_loop() else { preconditionFailure("ev_default_loop failed") }
        return EventLoop(defaultLoop: loop)
    }

    deinit {
        if !isDefault { ev_loop_destroy(raw) }
    }

    /// Runs until no active watcher is left (the process exits from a watcher before that).
    public func run() { _ = ev_run(raw, 0) }

    /// Makes `run()` return after the current iteration (loop thread only).
    public func breakLoop() { ev_break(raw, Int32(EVBREAK_ALL)) }

    /// The loop's cached time in seconds; updated once per iteration, so it costs no syscall.
    public var now: Double { ev_now(raw) }
}
