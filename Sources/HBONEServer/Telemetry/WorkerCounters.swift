import Filters
import Synchronization

/// One worker's counters. The worker is the only writer, so an increment is a relaxed load and store (two
/// plain moves on x86, no locked instruction); the admin scrape reads them from another thread and sums the
/// workers. No counter is shared between workers.
///
/// Thread: written on the worker's loop thread, read from any. Ownership: the worker's `ProxyServer`.
public final class WorkerCounters: Sendable {
    public let downstreamConnectionsTotal = Atomic<Int>(0)
    public let downstreamConnectionsActive = Atomic<Int>(0)
    /// Responses sent downstream, by status class.
    public let responses1xx = Atomic<Int>(0)
    public let responses2xx = Atomic<Int>(0)
    public let responses3xx = Atomic<Int>(0)
    public let responses4xx = Atomic<Int>(0)
    public let responses5xx = Atomic<Int>(0)
    public let upstreamConnectionsTotal = Atomic<Int>(0)
    public let upstreamConnectFailures = Atomic<Int>(0)
    /// Responses cut off because the upstream failed after the head was sent.
    public let upstreamResetsMidResponse = Atomic<Int>(0)
    /// Byte relays closed for moving nothing within the relay idle timeout.
    public let relayIdleTimeouts = Atomic<Int>(0)

    // MARK: HBONE
    public let hboneConnectionsActive = Atomic<Int>(0)
    public let hboneConnectionsTotal = Atomic<Int>(0)
    public let handshakesOK = Atomic<Int>(0)
    /// Failed handshakes, indexed like `handshakeFailureReasons`.
    public let handshakeFailures = CounterArray(labels: WorkerCounters.handshakeFailureReasons)
    public static let handshakeFailureReasons = [
        "no_certificate", "certificate_rejected", "protocol", "closed", "alpn",
        "identity", "timeout",
    ]
    public let tunnelsActive = Atomic<Int>(0)
    public let tunnelsTotal = Atomic<Int>(0)
    /// CONNECT streams answered with an error or reset unopened, indexed like `tunnelRefusalReasons`.
    public let tunnelRefusals = CounterArray(labels: WorkerCounters.tunnelRefusalReasons)
    public static let tunnelRefusalReasons = [
        "method", "extended_connect", "bad_authority", "unknown_destination",
        "no_healthy_upstream", "draining", "denied", "too_many_streams",
        "header_list_too_large",
    ]
    /// Payload bytes through tunnels: from clients (received) and to clients (sent).
    public let tunnelBytesReceived = Atomic<Int>(0)
    public let tunnelBytesSent = Atomic<Int>(0)
    public let keepaliveTimeouts = Atomic<Int>(0)
    /// Connections closed because the client sent no HTTP/2 preface within the handshake timeout.
    public let prefaceTimeouts = Atomic<Int>(0)
    /// Connections closed for an HTTP/2 protocol error or a flood (rapid reset, CONTINUATION, SETTINGS/PING).
    public let http2ProtocolErrors = Atomic<Int>(0)
    /// PROXY-protocol connections closed for a missing or malformed header.
    public let proxyHeaderErrors = Atomic<Int>(0)

    // MARK: Retries
    /// Retries started, by what triggered them, indexed like `retryReasons`.
    public let retries = CounterArray(labels: WorkerCounters.retryReasons)
    public static let retryReasons = ["connect_failure", "reset", "refused_stream", "status", "grpc_status", "per_try_timeout"]
    /// Exchanges that succeeded (2xx-4xx) after at least one retry.
    public let retriesSucceeded = Atomic<Int>(0)
    /// Retries not made because the budget was spent.
    public let retryBudgetExhausted = Atomic<Int>(0)

    /// Requests refused (503) because the backend's connections and pending queue were full, or a pending one waited
    /// past the connect timeout (DestinationRule `tcp.maxConnections`, `http.http1MaxPendingRequests`).
    public let upstreamOverflow = Atomic<Int>(0)
    /// Retries not made because the backend's `maxRetries` were in flight.
    public let retryOverflow = Atomic<Int>(0)
    /// Endpoints ejected by outlier detection.
    public let outlierEjections = Atomic<Int>(0)
    /// Copies sent to a mirror, and copies not sent (too many in flight, body beyond the bound, no endpoint).
    public let mirrorRequests = Atomic<Int>(0)
    public let mirrorsSkipped = Atomic<Int>(0)
    /// Requests answered by a VirtualService `fault.abort`, and requests held by its `fault.delay`.
    public let faultAborts = Atomic<Int>(0)
    public let faultDelays = Atomic<Int>(0)

    // MARK: Authorization
    public let authorizationAllowed = Atomic<Int>(0)
    public let authorizationDenied = Atomic<Int>(0)
    /// Denials because ALLOW policies applied and none matched.
    public let authorizationNoAllowMatched = Atomic<Int>(0)
    /// Requests refused because their JWT was not valid (RequestAuthentication).
    public let jwtRejected = Atomic<Int>(0)
    /// External authorization checks (CUSTOM policies) by result, indexed like `externalCheckResults`: allowed,
    /// denied, and failed (unreachable, timed out, 5xx, unreadable) then denied or (`failOpen`) allowed.
    public let externalChecks = CounterArray(labels: ExternalCheckResult.allCases.map(\.label))

    /// How an external authorization check ended.
    public enum ExternalCheckResult: Int, CaseIterable, Sendable {
        case allowed, denied, failedDenied, failedAllowed

        public var label: String { ["allowed", "denied", "failed_denied", "failed_allowed"][rawValue] }
    }
    /// Decisions by policy: the worker counts into the current `CounterArray` (no lock); a config swap folds
    /// its counts into `retired` under the lock, which the scrape also takes.
    private let policyCounts = Mutex<(current: CounterArray?, retired: [String: Int])>((nil, [:]))

    /// Istio's standard request and TCP metrics (series by label set).
    public let istio: IstioMetrics

    public init(istioSeries: Int = 2000) { istio = IstioMetrics(capacity: istioSeries) }

    /// Worker thread, at a config swap: a fresh array for `labels` (`policy|result` per entry).
    public func publishPolicyCounters(labels: [String]) -> CounterArray {
        let fresh = CounterArray(labels: labels)
        policyCounts.withLock { state in
            if let old = state.current {
                for (i, label) in old.labels.enumerated() where old.value(i) > 0 { state.retired[label, default: 0] += old.value(i) }
            }
            state.current = fresh
        }
        return fresh
    }

    /// Any thread: totals by `policy|result`.
    public func policyDecisionTotals() -> [String: Int] {
        policyCounts.withLock { state in
            var totals = state.retired
            if let current = state.current {
                for (i, label) in current.labels.enumerated() where current.value(i) > 0 { totals[label, default: 0] += current.value(i) }
            }
            return totals
        }
    }

    func countHandshakeFailure(_ reason: String) {
        handshakeFailures.increment(Self.handshakeFailureReasons.firstIndex(of: reason) ?? 2)
    }

    func countTunnelRefusal(_ reason: StaticString) {
        let text = reason.description
        tunnelRefusals.increment(Self.tunnelRefusalReasons.firstIndex(of: text) ?? 0)
    }

    func countRetry(_ outcome: RetryPolicy.Outcome) {
        switch outcome {
        case .connectFailed: retries.increment(0)
        case .reset: retries.increment(1)
        case .refusedStream: retries.increment(2)
        case .status: retries.increment(3)
        case .grpcStatus: retries.increment(4)
        case .perTryTimeout: retries.increment(5)
        }
    }

    @inline(__always) func countResponse(_ status: Int) {
        switch status / 100 {
        case 1: responses1xx.increment()
        case 2: responses2xx.increment()
        case 3: responses3xx.increment()
        case 4: responses4xx.increment()
        default: responses5xx.increment()
        }
    }
}

extension Atomic where Value == Int {
    /// Single-writer increment: not atomic against other writers, which by design there are none.
    @inline(__always) public func increment(by delta: Int = 1) {
        store(load(ordering: .relaxed) &+ delta, ordering: .relaxed)
    }

    @inline(__always) public var value: Int { load(ordering: .relaxed) }
}

/// A fixed set of labelled single-writer counters (one per label).
///
/// Thread: written on the worker's loop thread, read from any. Ownership: `WorkerCounters`.
public final class CounterArray: @unchecked Sendable {
    // SAFETY: the storage is allocated once and only accessed through atomics.
    public let labels: [String]
    private let storage: UnsafeMutablePointer<Atomic<Int>>

    public init(labels: [String]) {
        self.labels = labels
        storage = .allocate(capacity: labels.count)
        for i in 0..<labels.count { (storage + i).initialize(to: Atomic(0)) }
    }

    deinit {
        storage.deinitialize(count: labels.count)
        storage.deallocate()
    }

    public func increment(_ index: Int) { storage[index].increment() }

    public func value(_ index: Int) -> Int { storage[index].value }
}
