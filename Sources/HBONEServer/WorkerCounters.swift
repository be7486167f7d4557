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

    public init() {}

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
