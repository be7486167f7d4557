import EventLoop
import Logging
import Synchronization
import WaypointCore

/// Keeps values that the config names fresh, on a thread of its own (never a worker or the main loop): each
/// wanted key is fetched at once, then again after the refresh its fetch says; a failure keeps the value fetched
/// before and retries with backoff (1 s doubling to `maxBackoff`). A changed value rings the main loop
/// (`onChange`), which compiles the new `values` in. The JWKS fetcher and the DNS resolver are two of these.
///
/// Thread: `want`, `values` and `onChange` on the main thread; fetches on its own. Ownership: the `Runtime`.
final class BackgroundRefresher<Value: Sendable & Equatable>: @unchecked Sendable {
    // SAFETY: the mutable state is behind `state`'s mutex; `doorbell` is set on the main thread before the
    // fetching thread starts and never changed after (that thread only calls its thread-safe `send`).
    /// What one fetch came to.
    enum Outcome {
        case fetched(Value, refreshAfter: Duration)
        case failed(String)
    }

    private struct State {
        /// The keys the config names, and when each is due.
        var due: [String: ContinuousClock.Instant] = [:]
        var failures: [String: Int] = [:]
        var values: [String: Value] = [:]
        var running = false
    }
    private let state = Mutex(State())
    /// Made by the first `want` that names a key (before the thread that rings it starts), so that a runtime
    /// whose start-up fails holds no watcher on its loop.
    private var doorbell: AsyncWatcher?
    private unowned(unsafe) let loop: EventLoop
    private let name: String
    private let maxBackoff: Int
    private let fetch: @Sendable (String) -> Outcome
    /// Told of each fetch on the fetching thread (logs, counters): the key, the outcome, whether it changed.
    private let report: @Sendable (String, Outcome, Bool) -> Void

    /// Runs on the main loop after a value changed.
    var onChange: (() -> Void)? {
        get { callback.body }
        set { callback.body = newValue }
    }
    private let callback = Callback()
    private final class Callback: @unchecked Sendable {
        // SAFETY: set and called on the main thread only.
        var body: (() -> Void)?
    }

    /// `name` names the thread; backoff doubles from 1 s to `maxBackoff` seconds.
    init(
        name: String, loop: EventLoop, maxBackoff: Int, fetch: @escaping @Sendable (String) -> Outcome,
        report: @escaping @Sendable (String, Outcome, Bool) -> Void
    ) {
        self.name = name
        self.loop = loop
        self.maxBackoff = maxBackoff
        self.fetch = fetch
        self.report = report
    }

    /// The values fetched so far, by key.
    var values: [String: Value] { state.withLock { $0.values } }

    /// Fetches `keys` from now on (new ones at once) and forgets the others. Main thread, after start-up.
    func want(_ keys: Set<String>) {
        if doorbell == nil && !keys.isEmpty {
            let callback = callback
            doorbell = AsyncWatcher(loop: loop) { callback.body?() }
        }
        let start = state.withLock { state in
            for key in state.due.keys where !keys.contains(key) {
                state.due[key] = nil
                state.values[key] = nil
                state.failures[key] = nil
            }
            for key in keys where state.due[key] == nil { state.due[key] = .now }
            defer { state.running = state.running || !keys.isEmpty }
            return !state.running && !keys.isEmpty
        }
        if start { ControlThread.start(name: name) { self.run() } }
    }

    private func run() {
        while true {
            let next = state.withLock { state in state.due.filter { $0.value <= .now }.map(\.key).sorted().first }
            guard let key = next else {
                ControlThread.sleep(.milliseconds(100))
                continue
            }
            refresh(key)
        }
    }

    private func refresh(_ key: String) {
        let outcome = fetch(key)
        let changed = state.withLock { state -> Bool in
            guard state.due[key] != nil else { return false }  // no longer wanted
            switch outcome {
            case .failed:
                let failures = (state.failures[key] ?? 0) + 1
                state.failures[key] = failures
                state.due[key] = .now + .seconds(min(maxBackoff, 1 << min(failures - 1, 16)))
                return false
            case .fetched(let value, let refreshAfter):
                state.failures[key] = nil
                state.due[key] = .now + refreshAfter
                guard state.values[key] != value else { return false }
                state.values[key] = value
                return true
            }
        }
        report(key, outcome, changed)
        if changed { doorbell?.send() }
    }
}
