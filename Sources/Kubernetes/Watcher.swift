#if canImport(Glibc)
    import Glibc
#endif
import JSON
import Logging
import Synchronization
import TLS
import WaypointCore

/// What changed in every watched kind since the main thread last took it, written by the watcher threads (the
/// main thread keeps the objects, as parsed specs), with each kind's sync state, counts and restarts.
///
/// Thread: any; a mutex guards the state. Ownership: the runtime and every watcher.
public final class APIObjectStore: Sendable {
    private struct State {
        /// What changed per kind since the reader last took it (`takeChanges`); the reader keeps the objects.
        var pending: [WatchedKind: KindChanges] = [:]
        /// How many objects each kind has.
        var counts: [WatchedKind: Int] = [:]
        /// Kinds whose first list completed, or whose resource does not exist (a CRD not installed).
        var settled: Set<WatchedKind> = []
        /// When the oldest change not yet taken by `takeChangedSince` arrived.
        var changedSince: ContinuousClock.Instant?
        /// Watches (or lists) started again, by `kind namespace` and why.
        var restarts: [WatchedKind: [WatchRestart: Int]] = [:]
        /// Unix time of the last list page or watch event.
        var lastEvent = 0.0
        /// The watcher each kind's objects come from (its token); a kind no longer followed has none, and a
        /// watcher that lost its kind writes nothing more and ends.
        var owners: [WatchedKind: Int] = [:]
        var tokens = 0
    }
    private let state = Mutex(State())
    /// Told (from a watcher thread) whenever the objects change: the runtime's doorbell.
    private let onChange: @Sendable () -> Void

    public init(onChange: @escaping @Sendable () -> Void) { self.onChange = onChange }

    /// What changed in each kind since the last call, for the one reader, which keeps its own copy of the
    /// objects up to date with these: a change costs what it touched, not what the kind holds.
    public func takeChanges() -> [(kind: WatchedKind, changes: KindChanges)] {
        state.withLock { state in
            defer { state.pending = [:] }
            return state.pending.map { ($0.key, $0.value) }
        }
    }

    /// Object counts by kind and namespace (whole collections and single objects together), for metrics.
    public func counts() -> [(kind: String, namespace: String, count: Int)] {
        let totals = state.withLock { state in
            state.counts.reduce(into: [String: (String, String, Int)]()) { totals, entry in
                let key = "\(entry.key.kind) \(entry.key.namespace)"
                totals[key] = (entry.key.kind, entry.key.namespace, (totals[key]?.2 ?? 0) + entry.value)
            }
        }
        return totals.sorted { $0.key < $1.key }.map { ($0.value.0, $0.value.1, $0.value.2) }
    }

    /// Whether every kind in `kinds` has been listed (or found absent) once.
    public func settled(_ kinds: [WatchedKind]) -> Bool {
        state.withLock { state in kinds.allSatisfy(state.settled.contains) }
    }

    /// Restarts by kind and reason, for `waypoint_kubernetes_watch_restarts_total`.
    public func restarts() -> [(kind: WatchedKind, reason: WatchRestart, count: Int)] {
        state.withLock { state in
            state.restarts.flatMap { kind, reasons in reasons.map { (kind, $0.key, $0.value) } }
                .sorted { ($0.kind.path, $0.reason.rawValue) < ($1.kind.path, $1.reason.rawValue) }
        }
    }

    /// Unix time of the last list page or watch event from the API server (0: none yet).
    public var lastEvent: Double { state.withLock { $0.lastEvent } }

    func restarted(_ kind: WatchedKind, _ reason: WatchRestart) {
        state.withLock { state in state.restarts[kind, default: [:]][reason, default: 0] += 1 }
    }

    func heard() {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        state.withLock { state in state.lastEvent = Double(now.tv_sec) + Double(now.tv_nsec) / 1e9 }
    }

    /// When the oldest change since the last call arrived (nil: none since): the runtime takes it when it swaps
    /// in a snapshot with every change so far, to measure event-to-swap latency.
    public func takeChangedSince() -> ContinuousClock.Instant? {
        state.withLock { state in
            defer { state.changedSince = nil }
            return state.changedSince
        }
    }

    /// Makes a new watcher of `kind` its source; returns the watcher's token.
    func register(_ kind: WatchedKind) -> Int {
        state.withLock { state in
            state.tokens += 1
            state.owners[kind] = state.tokens
            return state.tokens
        }
    }

    /// Stops following `kind`: its objects are dropped now (a change), and its watcher ends.
    public func forget(_ kind: WatchedKind) {
        let had = state.withLock { state in
            state.owners[kind] = nil
            state.settled.remove(kind)
            return Self.drop(kind, from: &state)
        }
        if had { onChange() }
    }

    /// Whether the watcher with `token` is still the source of `kind`.
    func owns(_ kind: WatchedKind, _ token: Int) -> Bool { state.withLock { $0.owners[kind] == token } }

    /// `kind`'s objects as its watcher listed them (a change), unless the watcher lost the kind.
    func replace(_ kind: WatchedKind, token: Int, with objects: [String: JSONDocument]) {
        let taken = state.withLock { state in
            guard state.owners[kind] == token else { return false }
            state.pending[kind] = .all(objects)
            state.counts[kind] = objects.count
            state.settled.insert(kind)
            if state.changedSince == nil { state.changedSince = .now }
            return true
        }
        if taken { onChange() }
    }

    /// One object of `kind` as a watch event left it (nil: deleted), unless the watcher lost the kind; `count`:
    /// how many objects the kind has now.
    func update(_ kind: WatchedKind, token: Int, key: String, to object: JSONDocument?, count: Int) {
        let taken = state.withLock { state in
            guard state.owners[kind] == token else { return false }
            switch state.pending.removeValue(forKey: kind) {  // taken out, so that the change below does not copy it
            case .all(var objects)?:
                objects[key] = object
                state.pending[kind] = .all(objects)
            case .some(var objects)?:
                objects.updateValue(object, forKey: key)
                state.pending[kind] = .some(objects)
            case nil:
                state.pending[kind] = .some([key: object])
            }
            state.counts[kind] = count
            if state.changedSince == nil { state.changedSince = .now }
            return true
        }
        if taken { onChange() }
    }

    func absent(_ kind: WatchedKind, token: Int) {
        let had = state.withLock { state in
            guard state.owners[kind] == token else { return false }
            state.settled.insert(kind)
            return Self.drop(kind, from: &state)
        }
        if had { onChange() }
    }

    /// Drops `kind`'s objects; true when it had some (a change).
    private static func drop(_ kind: WatchedKind, from state: inout State) -> Bool {
        let had = (state.counts.removeValue(forKey: kind) ?? 0) > 0
        state.pending[kind] = .all([:])
        if had && state.changedSince == nil { state.changedSince = .now }
        return had
    }
}

/// What changed in one kind since its reader last looked.
public enum KindChanges: Sendable {
    /// Everything (a list, or the kind no longer followed): these are all its objects now, by `namespace/name`.
    case all([String: JSONDocument])
    /// These objects, by `namespace/name`: the new version, or nil when deleted.
    case some([String: JSONDocument?])
}

/// Keeps one kind's objects in an `APIObjectStore` current: LIST (paginated), then WATCH from the list's
/// resourceVersion with bookmarks, as client-go's reflector does. A watch the server ends (its timeout) resumes
/// from the last resourceVersion; 410 Gone lists again; a kind whose resource is absent (404: its CRD is not
/// installed) is skipped with one warning and probed again every `absentProbe`; 401 and 403 say which
/// credential or RBAC rule is missing; every other failure backs off (0.5 s doubling to 30 s, with jitter) and
/// retries forever. The objects are kept whatever fails: a waypoint that lost the API server serves on.
///
/// A watcher ends when the store forgets its kind (`APIObjectStore.forget`): it writes nothing after that, and
/// its thread returns at its next step (at the latest when the server ends the current watch).
///
/// Thread: its own (blocking I/O). Ownership: keeps itself alive until it ends.
public final class KindWatcher: @unchecked Sendable {
    // SAFETY: every member is set in init and only used by the watcher's own thread afterwards.
    private let kind: WatchedKind
    /// Its registration with the store.
    private let token: Int
    private let credentials: APICredentials
    private let context: TLSContext
    private let store: APIObjectStore
    private let logger: Logger
    private let settings: WatchSettings

    public init(
        kind: WatchedKind, credentials: APICredentials, context: TLSContext, store: APIObjectStore, logger: Logger,
        settings: WatchSettings
    ) {
        (self.kind, self.credentials, self.context, self.store, self.logger, self.settings) = (
            kind, credentials, context, store, logger, settings
        )
        token = store.register(kind)
    }

    /// Starts the watcher's thread.
    public func start() {
        ControlThread.start(name: "watch \(kind.kind)") { self.run() }
    }

    private func run() {
        var cache = WatchCache(kind: kind)
        var backoff = Backoff(floor: settings.backoffFloor, ceiling: settings.backoffCeiling)
        var warnedAbsent = false
        while store.owns(kind, token) {
            do throws(APIError) {
                if cache.resourceVersion.isEmpty { try list(&cache) }
                try watch(&cache)
                guard store.owns(kind, token) else { return }
                backoff.reset()
                store.restarted(kind, .closed)
            } catch {
                store.restarted(kind, Self.reason(error.status))
                switch error.status {
                case 404:
                    if !warnedAbsent {
                        logger.warning(
                            "kubernetes: \(kind.kind) is not served by the API server (CRD not installed?); skipped, probed again every \(settings.absentProbe)"
                        )
                    }
                    warnedAbsent = true
                    cache.gone()
                    store.absent(kind, token: token)
                    ControlThread.sleep(settings.absentProbe)
                    continue
                case 410:
                    cache.gone()
                    continue
                case 401:
                    logger.error(
                        "kubernetes: 401 Unauthorized listing \(kind.label): the API server refused the token from \(credentials.source)")
                case 403:
                    logger.error(
                        "kubernetes: 403 Forbidden: the service account may not list and watch \(kind.resource) in namespace \(kind.namespace); grant apiGroups [\"\(kind.group)\"] resources [\"\(kind.resource)\"] verbs [get, list, watch]"
                    )
                default:
                    logger.warning("kubernetes: \(kind.label): \(error); retrying")
                }
                ControlThread.sleep(backoff.next())
            }
        }
    }

    private func list(_ cache: inout WatchCache) throws(APIError) {
        try Self.list(kind, into: &cache, credentials: credentials, context: context, settings: settings) { store.heard() }
        store.replace(kind, token: token, with: cache.takeList())
    }

    /// Lists `kind` completely (every page) into `cache`; `heard` runs for each page.
    static func list(
        _ kind: WatchedKind, into cache: inout WatchCache, credentials: APICredentials, context: TLSContext,
        settings: WatchSettings, heard: () -> Void = {}
    ) throws(APIError) {
        var token: String? = nil
        while true {
            var path = "\(kind.path)\(kind.path.contains("?") ? "&" : "?")limit=\(settings.pageSize)"
            if let token { path += "&continue=\(Self.escape(token))" }
            let response = try APIResponse(credentials: credentials, context: context, path: path, timeout: settings.requestTimeout)
            try Self.check(response)
            let body = try response.readBody()
            let page: JSONDocument
            do { page = try body.withUnsafeBytes { bytes throws(JSONError) in try JSONDocument.parse(bytes) } } catch {
                throw APIError("\(kind.label) list: \(error)")
            }
            heard()
            switch try cache.receivedPage(page, first: token == nil) {
            case .listPage(let next): token = next
            case .watch, .relist: return
            }
        }
    }

    /// Every object of `kinds` as the API server has them now (one list each; a kind it does not serve has
    /// none): what `waypoint explain --kubeconfig` reads.
    public static func listOnce(_ kinds: [WatchedKind], credentials: APICredentials, settings: WatchSettings = WatchSettings())
        throws(APIError) -> [JSONDocument]
    {
        let context = try credentials.tlsContext()
        var objects: [JSONDocument] = []
        for kind in kinds {
            var cache = WatchCache(kind: kind)
            do {
                try list(kind, into: &cache, credentials: credentials, context: context, settings: settings)
            } catch  where error.status == 404 {
                continue
            }
            objects += cache.takeList().sorted { $0.key < $1.key }.map(\.value)
        }
        return objects
    }

    private func watch(_ cache: inout WatchCache) throws(APIError) {
        let path =
            "\(kind.path)\(kind.path.contains("?") ? "&" : "?")watch=1&allowWatchBookmarks=true&resourceVersion=\(Self.escape(cache.resourceVersion))"
            + "&timeoutSeconds=\(Int.random(in: settings.watchSeconds..<2 * settings.watchSeconds))"
        let response = try APIResponse(
            credentials: credentials, context: context, path: path,
            timeout: .seconds(2 * settings.watchSeconds + 30))
        try Self.check(response)
        let parser = JSONParser()
        while let line = try response.nextLine() {
            if line.isEmpty { continue }
            let event: JSONDocument
            do { event = try line.withUnsafeBytes { bytes throws(JSONError) in try parser.parse(bytes) } } catch {
                throw APIError("\(kind.label) watch: \(error)")
            }
            guard store.owns(kind, token) else { return }  // no longer followed
            store.heard()
            let (change, next) = try cache.receivedEvent(event)
            if let change { store.update(kind, token: token, key: change.key, to: change.object, count: cache.count) }
            if next == .relist { throw APIError("resourceVersion too old", status: 410) }
        }
    }

    private static func reason(_ status: Int) -> WatchRestart {
        switch status {
        case 404: return .absent
        case 410: return .gone
        case 401: return .unauthorized
        case 403: return .forbidden
        default: return .error
        }
    }

    /// Turns a non-200 answer into an error carrying its status and the server's message.
    private static func check(_ response: APIResponse) throws(APIError) {
        guard response.status != 200 else { return }
        let body = (try? response.readBody(limit: 64 * 1024)) ?? []
        let message = (try? body.withUnsafeBytes { bytes throws(JSONError) in try JSON.parse(bytes) })?["message"]?.string
        throw APIError("HTTP \(response.status)" + (message.map { ": \($0)" } ?? ""), status: response.status)
    }

    /// Percent-encodes a query value (continue tokens are base64 and may hold `+`, `/`, `=`).
    static func escape(_ value: String) -> String {
        var out = ""
        for byte in value.utf8 {
            switch byte {
            case 0x30...0x39, 0x41...0x5A, 0x61...0x7A, 0x2D, 0x2E, 0x5F, 0x7E: out.unicodeScalars.append(Unicode.Scalar(byte))
            default: out += "%" + String(byte, radix: 16, uppercase: true).leftPadded(2)
            }
        }
        return out
    }
}

/// Why a watcher started over.
public enum WatchRestart: String, Sendable {
    /// The server ended the watch (its timeout): resumed from the last resourceVersion.
    case closed
    /// 410 Gone: listed again.
    case gone
    /// 404: the kind is not served (CRD not installed).
    case absent
    case unauthorized
    case forbidden
    /// Anything else (connection refused, reset, timeout, malformed data): backed off.
    case error
}

/// How the watchers talk to the API server.
public struct WatchSettings: Sendable {
    /// Items per LIST page.
    public var pageSize = 500
    /// The server ends each watch after this long to twice as long, drawn per watch as client-go's reflector
    /// does (5 to 10 minutes by default), so that watchers started together do not all reconnect together.
    public var watchSeconds = 300
    /// Connect, TLS and each read of a LIST.
    public var requestTimeout = Duration.seconds(30)
    public var backoffFloor = Duration.milliseconds(500)
    public var backoffCeiling = Duration.seconds(30)
    /// How often a kind the API server does not serve is looked for again.
    public var absentProbe = Duration.seconds(60)

    public init() {}
}

/// Exponential backoff with jitter: floor, doubling up to the ceiling, each wait drawn from [½, 1] of it.
extension String {
    fileprivate func leftPadded(_ width: Int) -> String { String(repeating: "0", count: max(0, width - count)) + self }
}
