import EventLoop
import JWT
import Kubernetes
import Logging
import Synchronization
import WaypointCore

/// Fetches the key sets that RequestAuthentication `jwksUri`s name, on a thread of its own (never a worker or
/// the main loop): at once when a URI appears, then every `refresh` (istiod's default, 20 minutes). A failure
/// keeps the keys last fetched and retries with backoff (1 s doubling to a minute). New keys ring the main
/// loop, which compiles them in (`keys`).
///
/// Thread: `want` and `keys` on the main thread; fetches on its own. Ownership: the `Runtime`.
final class JWKSFetcher: @unchecked Sendable {
    // SAFETY: the mutable state is behind `state`'s mutex; `doorbell` is set on the main thread before the fetching
    // thread starts and never changed after (that thread only calls its thread-safe `send`).
    private struct State {
        /// The URIs the config names, and when each is due.
        var due: [String: ContinuousClock.Instant] = [:]
        var failures: [String: Int] = [:]
        /// What each URI answered last, as text and as keys.
        var fetched: [String: (text: [UInt8], keys: JSONWebKeySet)] = [:]
        var running = false
    }
    private let state = Mutex(State())
    /// Made by the first `want` that names a URI (before the thread that rings it starts), so that a runtime
    /// whose start-up fails holds no watcher on its loop.
    private var doorbell: AsyncWatcher?
    private unowned(unsafe) let loop: EventLoop
    private let logger: Logger
    private let refresh: Duration
    /// PEM roots for `https://` URIs.
    private let trustBundle: String

    /// Runs on the main loop after new keys arrived.
    var onChange: (() -> Void)? {
        get { callback.body }
        set { callback.body = newValue }
    }
    private let callback = Callback()
    private final class Callback: @unchecked Sendable {
        // SAFETY: set and called on the main thread only.
        var body: (() -> Void)?
    }

    init(loop: EventLoop, logger: Logger, refresh: Duration = .seconds(20 * 60), trustBundle: String) {
        self.loop = loop
        self.logger = logger
        self.refresh = refresh
        self.trustBundle = trustBundle
    }

    /// The key sets fetched so far, by URI.
    var keys: [String: JSONWebKeySet] { state.withLock { $0.fetched.mapValues(\.keys) } }

    /// Fetches `uris` from now on (new ones at once) and forgets the others. Main thread, after start-up.
    func want(_ uris: Set<String>) {
        if doorbell == nil && !uris.isEmpty {
            let callback = callback
            doorbell = AsyncWatcher(loop: loop) { callback.body?() }
        }
        let start = state.withLock { state in
            for uri in state.due.keys where !uris.contains(uri) {
                state.due[uri] = nil
                state.fetched[uri] = nil
                state.failures[uri] = nil
            }
            for uri in uris where state.due[uri] == nil { state.due[uri] = .now }
            defer { state.running = state.running || !uris.isEmpty }
            return !state.running && !uris.isEmpty
        }
        if start { ControlThread.start(name: "jwks") { self.run() } }
    }

    private func run() {
        while true {
            let next = state.withLock { state in state.due.filter { $0.value <= .now }.map(\.key).sorted().first }
            guard let uri = next else {
                ControlThread.sleep(.milliseconds(100))
                continue
            }
            fetch(uri)
        }
    }

    private func fetch(_ uri: String) {
        var failure: String? = nil
        var fetched: ([UInt8], JSONWebKeySet)? = nil
        do {
            let text = try Kubernetes.fetch(url: uri, trustBundle: trustBundle)
            do { fetched = (text, try JSONWebKeySet(json: String(decoding: text, as: UTF8.self))) } catch { failure = "\(error)" }
        } catch {
            failure = "\(error)"
        }
        let changed = state.withLock { state -> Bool in
            guard state.due[uri] != nil else { return false }  // no longer wanted
            guard let (text, keys) = fetched else {
                let failures = (state.failures[uri] ?? 0) + 1
                state.failures[uri] = failures
                state.due[uri] = .now + .seconds(min(60, 1 << min(failures - 1, 6)))
                return false
            }
            state.failures[uri] = nil
            state.due[uri] = .now + refresh
            guard state.fetched[uri]?.text != text else { return false }
            state.fetched[uri] = (text, keys)
            return true
        }
        if let reason = failure {
            logger.warning("jwks: cannot fetch \(uri) (\(reason)); keeping the keys fetched before, if any; retrying")
        }
        if changed {
            logger.info("jwks: new keys from \(uri)")
            doorbell?.send()
        }
    }
}
