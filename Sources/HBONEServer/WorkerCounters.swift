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

    // MARK: HBONE
    public let hboneConnectionsActive = Atomic<Int>(0)
    public let hboneConnectionsTotal = Atomic<Int>(0)
    public let handshakesOK = Atomic<Int>(0)
    /// Failed handshakes, indexed like `handshakeFailureReasons`.
    public let handshakeFailures = CounterArray(labels: WorkerCounters.handshakeFailureReasons)
    public static let handshakeFailureReasons = ["no_certificate", "certificate_rejected", "protocol", "closed", "alpn",
                                                 "identity", "timeout"]
    public let tunnelsActive = Atomic<Int>(0)
    public let tunnelsTotal = Atomic<Int>(0)
    /// CONNECT streams answered with an error, indexed like `tunnelRefusalReasons`.
    public let tunnelRefusals = CounterArray(labels: WorkerCounters.tunnelRefusalReasons)
    public static let tunnelRefusalReasons = ["method", "extended_connect", "bad_authority", "unknown_destination",
                                              "no_healthy_upstream", "draining", "denied"]
    /// Payload bytes through tunnels: from clients (received) and to clients (sent).
    public let tunnelBytesReceived = Atomic<Int>(0)
    public let tunnelBytesSent = Atomic<Int>(0)
    public let keepaliveTimeouts = Atomic<Int>(0)
    /// Connections closed for an HTTP/2 protocol error or a flood (rapid reset, CONTINUATION, SETTINGS/PING).
    public let http2ProtocolErrors = Atomic<Int>(0)
    /// PROXY-protocol connections closed for a missing or malformed header.
    public let proxyHeaderErrors = Atomic<Int>(0)

    // MARK: Authorization
    public let authorizationAllowed = Atomic<Int>(0)
    public let authorizationDenied = Atomic<Int>(0)
    /// Decisions by policy name and result (allow, deny, audit). A lock, but only taken when a policy decided,
    /// and the scrape is its only other user.
    public let policyDecisions = Mutex<[String: Int]>([:])

    public init() {}

    public func countPolicy(_ policy: String, _ result: StaticString) {
        policyDecisions.withLock { $0["\(policy)|\(result)", default: 0] += 1 }
    }

    func countHandshakeFailure(_ reason: String) {
        handshakeFailures.increment(Self.handshakeFailureReasons.firstIndex(of: reason) ?? 2)
    }

    func countTunnelRefusal(_ reason: StaticString) {
        let text = reason.description
        tunnelRefusals.increment(Self.tunnelRefusalReasons.firstIndex(of: text) ?? 0)
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

    init(labels: [String]) {
        self.labels = labels
        storage = .allocate(capacity: labels.count)
        for i in 0..<labels.count { (storage + i).initialize(to: Atomic(0)) }
    }

    deinit {
        storage.deinitialize(count: labels.count)
        storage.deallocate()
    }

    func increment(_ index: Int) { storage[index].increment() }

    public func value(_ index: Int) -> Int { storage[index].value }
}
