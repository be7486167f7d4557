#if canImport(Glibc)
    import Glibc
#endif
import EventLoop
import Kubernetes
import Logging
import TLS
import WaypointConfig

/// The Kubernetes API as a config source beside the files: a watcher per kind and namespace keeps the shared
/// store current; each change rings the main loop, which compiles and swaps a snapshot at most once per
/// `window` (a burst of events, a rollout, becomes one compile).
///
/// Thread: created and read on the main thread; its watchers run on their own. Ownership: the `Runtime`.
final class KubernetesSource {
    struct Options {
        var credentials: APICredentials
        var namespaces: [String]
        var rootNamespace: String
        /// This waypoint's Gateway: only Services bound to it are served.
        var gateway: String
        var settings = WatchSettings()
        /// How long start-up waits for every kind's first list before serving what it has.
        var syncTimeout = Duration.seconds(30)
    }

    /// Where the first lists stand.
    enum Sync: Equatable {
        /// Some kinds are not listed yet; past `deadline` the waypoint serves what it has.
        case listing(deadline: ContinuousClock.Instant)
        case synced
        /// The timeout passed first (the kinds not listed then were logged).
        case timedOut
    }

    let store: APIObjectStore
    /// The collections watched from the start (and for good).
    let kinds: [WatchedKind]
    /// Single Services, their EndpointSlices and ReferenceGrants of other namespaces, watched while routes here
    /// send traffic there (`follow`).
    private var followed: [WatchedKind: KindWatcher] = [:]
    private let namespaces: Set<String>
    /// The waypoint's namespace, where the Secrets it reads are.
    private let ownNamespace: String
    private let credentials: APICredentials
    private let context: TLSContext
    private let settings: WatchSettings
    /// Runs on the main loop after changes, at most once per `window`.
    var onChange: (() -> Void)?
    /// Runs on the main loop once, when every kind was listed or the sync timeout passed.
    var onSynced: (() -> Void)?
    private(set) var sync: Sync = .synced
    private lazy var syncCheck = Timer(loop: loop) { [unowned(unsafe) self] in self.checkSync() }
    private let logger: Logger
    private unowned(unsafe) let loop: EventLoop
    private let doorbell = DoorbellBox()
    private lazy var debounce = Timer(loop: loop) { [unowned(unsafe) self] in self.onChange?() }
    /// Seconds from a change reaching a watcher to the swap of the snapshot with it.
    private(set) var eventToSwap = Histogram(bounds: [0.005, 0.01, 0.025, 0.05, 0.1, 0.125, 0.15, 0.2, 0.25, 0.5, 1, 2.5, 5, 10])

    /// The snapshot with every change so far was swapped in now.
    func swapped() {
        guard let since = store.takeChangedSince() else { return }
        eventToSwap.observe((ContinuousClock.now - since).seconds)
    }

    /// Coalescing window: the first change schedules a compile this long after; later ones join it.
    static let window = Duration.milliseconds(100)

    /// Starts the watchers.
    init(options: Options, loop: EventLoop, logger: Logger) throws(APIError) {
        let context = try options.credentials.tlsContext()
        self.loop = loop
        self.logger = logger
        self.context = context
        credentials = options.credentials
        settings = options.settings
        namespaces = Set(options.namespaces)
        ownNamespace = options.namespaces.first ?? "default"
        let box = doorbell
        store = APIObjectStore { box.ring() }
        var kinds: [WatchedKind] = []
        for namespace in options.namespaces { kinds += WatchedKind.all(in: namespace) }
        if let own = options.namespaces.first { kinds.append(.gateway(named: options.gateway, in: own)) }
        if !options.namespaces.contains(options.rootNamespace) { kinds += WatchedKind.rootPolicies(in: options.rootNamespace) }
        kinds.append(.meshConfig(in: options.rootNamespace))
        self.kinds = kinds
        box.watcher = AsyncWatcher(loop: loop) { [unowned(unsafe) self] in
            if !self.debounce.isActive { self.debounce.schedule(after: Self.window) }
        }
        for kind in kinds {
            KindWatcher(
                kind: kind, credentials: options.credentials, context: context, store: store, logger: logger, settings: options.settings
            )
            .start()
        }
    }

    /// Watches what `references` name outside the watched namespaces (each Service by name, its EndpointSlices by
    /// label and its Pods by its selector; the DestinationRules of its namespace; the ReferenceGrants of a
    /// namespace a Gateway API route points into) and the Secrets named for TLS origination (by name, in the
    /// waypoint's namespace), and stops watching, and drops, what they no longer name. Of another namespace it
    /// lists no Services, EndpointSlices or Pods but those; of Secrets, none but those.
    func follow(_ references: ForeignReferences) {
        var wanted: Set<WatchedKind> = []
        for service in references.services where !namespaces.contains(service.namespace) {
            wanted.formUnion(WatchedKind.service(named: service.name, in: service.namespace))
        }
        for namespace in references.grantNamespaces where !namespaces.contains(namespace) {
            wanted.insert(.referenceGrants(in: namespace))
        }
        for namespace in references.namespaces where !namespaces.contains(namespace) {
            wanted.insert(.destinationRules(in: namespace))
        }
        for pods in references.pods where !namespaces.contains(pods.namespace) {
            wanted.insert(.pods(selectedBy: pods.selector, in: pods.namespace))
        }
        for name in references.secrets { wanted.insert(.secret(named: name, in: ownNamespace)) }
        for kind in followed.keys where !wanted.contains(kind) {
            followed[kind] = nil
            store.forget(kind)
            logger.info("kubernetes: no longer referenced, stopped watching \(kind.label)")
        }
        for kind in wanted.sorted(by: { $0.path < $1.path }) where followed[kind] == nil {
            let watcher = KindWatcher(
                kind: kind, credentials: credentials, context: context, store: store, logger: logger, settings: settings)
            followed[kind] = watcher
            watcher.start()
            logger.info("kubernetes: referenced here (a route, an authorizer, a credential), watching \(kind.label)")
        }
    }

    /// Starts waiting for every kind's first list (at most `timeout`); `onSynced` runs when it is over. The
    /// first lists are not changes: the latency metric starts after them.
    func beginSync(timeout: Duration) {
        sync = .listing(deadline: .now + timeout)
        syncCheck.scheduleRepeating(every: .milliseconds(20))
    }

    private func checkSync() {
        guard case .listing(let deadline) = sync else { return }
        if store.settled(kinds) {
            sync = .synced
        } else if ContinuousClock.now >= deadline {
            sync = .timedOut
            logger.warning("kubernetes: not listed within the sync timeout, serving what arrived: \(missingKinds.joined(separator: ", "))")
        } else {
            return
        }
        syncCheck.cancel()
        _ = store.takeChangedSince()
        onSynced?()
    }

    /// Why the waypoint is not ready yet, while the first lists are under way.
    var waitingFor: String? {
        guard case .listing = sync else { return nil }
        return "kubernetes: waiting for the first list of " + missingKinds.joined(separator: ", ")
    }

    /// The kinds not listed yet, as logs name them.
    private var missingKinds: [String] { kinds.filter { !store.settled([$0]) }.map(\.label) }
}

extension APICredentials {
    /// What a kubeconfig's current context says (`path` names it in errors).
    init(_ file: Kubeconfig, path: String) {
        self.init(
            host: file.host, port: file.port, trustBundle: file.trustBundle, tokenFile: file.tokenFile, token: file.token,
            clientCertificate: file.clientCertificate, clientKey: file.clientKey, source: path)
    }
}

/// The main loop's doorbell for watcher threads: set once, before any watcher runs.
private final class DoorbellBox: @unchecked Sendable {
    // SAFETY: `watcher` is set on the main thread before the watcher threads start, then only read;
    // `AsyncWatcher.send` is thread-safe.
    var watcher: AsyncWatcher?
    func ring() { watcher?.send() }
}

/// A Prometheus histogram kept by one thread.
struct Histogram {
    let bounds: [Double]
    private(set) var counts: [Int]
    private(set) var sum = 0.0
    private(set) var count = 0

    init(bounds: [Double]) {
        self.bounds = bounds
        counts = Array(repeating: 0, count: bounds.count)
    }

    mutating func observe(_ value: Double) {
        for (i, bound) in bounds.enumerated() where value <= bound { counts[i] += 1 }
        sum += value
        count += 1
    }

    /// The exposition lines of `name`: cumulative buckets, `+Inf`, sum and count.
    func lines(_ name: String) -> String {
        var text = ""
        for (bound, n) in zip(bounds, counts) { text += "\(name)_bucket{le=\"\(bound)\"} \(n)\n" }
        text += "\(name)_bucket{le=\"+Inf\"} \(count)\n\(name)_sum \(sum)\n\(name)_count \(count)\n"
        return text
    }
}
