import Filters

/// The retry budget per backend cluster: each first try that may be retried earns 0.2 of a retry (up to a burst
/// of 100), each retry spends one, so retries add at most 20% to a service's load; below 3 retries in flight one
/// is always allowed (the floor), so a quiet service can still retry.
///
/// Thread: its worker's loop thread only. Ownership: a value in the worker's `ProxyServer`.
struct RetryBudget {
    private var tokens: [Int32: Double] = [:]
    /// Exchanges retrying now.
    private var retriesInFlight = 0

    /// A new snapshot: cluster indices may differ, so the budgets start over.
    mutating func reset() { tokens.removeAll() }

    /// A first try that may be retried went to `cluster`.
    mutating func earn(_ cluster: Int32) { tokens[cluster] = min((tokens[cluster] ?? 0) + 0.2, 100) }

    /// Takes a retry of `cluster` from its budget, or from the floor; false when both are spent.
    mutating func spend(_ cluster: Int32) -> Bool {
        guard let left = tokens[cluster], left >= 1 else { return retriesInFlight < 3 }
        tokens[cluster] = left - 1
        return true
    }

    /// An exchange made its first retry (it counts until it ends).
    mutating func retryStarted() { retriesInFlight += 1 }

    /// The exchange leaves the counts it joined upstream (it is over, or its connection closed under it): the
    /// backend's requests in flight and, if it retried, the retries in flight.
    mutating func leave(_ record: inout ExchangeRecord, limits: ClusterLimits?) {
        guard record.inFlight else { return }
        record.inFlight = false
        limits?.leaveRequest()
        guard record.attempt > 1 else { return }
        retriesInFlight -= 1
        limits?.leaveRetry()
    }
}
