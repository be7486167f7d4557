import Synchronization

/// DestinationRule `trafficPolicy.connectionPool`, the parts applied. The limits hold for the whole proxy, as
/// Envoy's circuit breakers do (per backend and process, not per worker): see `ClusterLimits`.
///
/// Thread: any (a value). Ownership: the config snapshot, one per backend cluster.
public struct ConnectionPoolSettings: Sendable, Equatable {
    /// `tcp.connectTimeout`: replaces the proxy's `--connect-timeout` for this backend.
    public var connectTimeout: Duration?
    /// `http.maxRequestsPerConnection`: an upstream connection is closed after serving this many requests.
    public var maxRequestsPerConnection: Int?
    /// `http.maxRetries`: retries in flight to this backend; beyond it a failure is returned as is.
    public var maxRetries: Int?
    /// `tcp.maxConnections`: HTTP/1.1 connections opened for this backend; a request that would need another
    /// waits for one to free up.
    public var maxConnections: Int?
    /// `http.http1MaxPendingRequests`: requests waiting for a connection; beyond it, 503 at once.
    public var maxPendingRequests: Int?
    /// `http.http2MaxRequests` (Envoy's `max_requests`, for HTTP/1.1 too): requests in flight to this backend;
    /// beyond it, 503 at once.
    public var maxRequests: Int?

    public init(
        connectTimeout: Duration? = nil, maxRequestsPerConnection: Int? = nil, maxRetries: Int? = nil,
        maxConnections: Int? = nil, maxPendingRequests: Int? = nil, maxRequests: Int? = nil
    ) {
        self.connectTimeout = connectTimeout
        self.maxRequestsPerConnection = maxRequestsPerConnection
        self.maxRetries = maxRetries
        self.maxConnections = maxConnections
        self.maxPendingRequests = maxPendingRequests
        self.maxRequests = maxRequests
    }
}

/// A backend's connection-pool settings and the proxy-wide counts they are checked against: connections
/// opened for the backend, requests waiting for one, requests and retries in flight. Every worker counts
/// into the same object (atomics; touched only by exchanges of a backend that has limits).
///
/// Thread: any. Ownership: the config snapshot, one per backend cluster with a `connectionPool`; an exchange
/// or connection that counted into one keeps it until it has counted out, so a reload never unbalances them.
public final class ClusterLimits: Sendable {
    public let settings: ConnectionPoolSettings
    public let connections = Atomic<Int>(0)
    public let pending = Atomic<Int>(0)
    public let requests = Atomic<Int>(0)
    public let retries = Atomic<Int>(0)

    public init(_ settings: ConnectionPoolSettings) { self.settings = settings }

    /// A request waiting for a connection; false (not counted) when `maxPendingRequests` already wait.
    public func enterPending() -> Bool { Self.enter(pending, limit: settings.maxPendingRequests) }
    public func leavePending() { pending.wrappingSubtract(1, ordering: .relaxed) }

    /// A request in flight; false (not counted) when `maxRequests` are.
    public func enterRequest() -> Bool { Self.enter(requests, limit: settings.maxRequests) }
    public func leaveRequest() { requests.wrappingSubtract(1, ordering: .relaxed) }

    /// A retry in flight; false (not counted) when `maxRetries` are.
    public func enterRetry() -> Bool { Self.enter(retries, limit: settings.maxRetries) }
    public func leaveRetry() { retries.wrappingSubtract(1, ordering: .relaxed) }

    public func connectionOpened() { connections.wrappingAdd(1, ordering: .relaxed) }
    public func connectionClosed() { connections.wrappingSubtract(1, ordering: .relaxed) }

    /// Whether a new connection may be opened for this backend now (`maxConnections` not reached).
    public var mayOpenConnection: Bool {
        settings.maxConnections.map { connections.load(ordering: .relaxed) < $0 } ?? true
    }

    private static func enter(_ counter: borrowing Atomic<Int>, limit: Int?) -> Bool {
        let before = counter.wrappingAdd(1, ordering: .relaxed).oldValue
        guard let limit, before >= limit else { return true }
        counter.wrappingSubtract(1, ordering: .relaxed)
        return false
    }
}
