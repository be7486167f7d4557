import WaypointCore

/// DestinationRule `trafficPolicy.outlierDetection`: when an endpoint answers with too many consecutive errors
/// it is ejected from its backend for a while (longer each time), within a cap on how much of the backend may
/// be out at once.
///
/// Thread: any (a value). Ownership: the config snapshot, one per backend cluster.
public struct OutlierDetection: Sendable, Equatable {
    /// Consecutive 5xx answers (connect failures count as 5xx, as in Envoy) that eject; nil: not used.
    public var consecutive5xxErrors: Int?
    /// Consecutive 502, 503, 504 answers (and connect failures) that eject; nil: not used.
    public var consecutiveGatewayErrors: Int?
    /// An ejection lasts this times the number of times in a row the endpoint was ejected (see `ejectionTime`).
    public var baseEjectionTime: Duration
    /// At most this share of the backend's endpoints is ejected at once (at least one may always be).
    public var maxEjectionPercent: Int
    /// Envoy's sweep interval: the ejection count decays by one per interval (see `decayed`).
    public var interval: Duration
    /// Below this share of non-ejected endpoints, ejections are ignored (Envoy's panic threshold, which Istio
    /// sets from it); 0, Istio's default: never, so with every endpoint ejected requests get 503.
    public var minHealthPercent: Int

    public init(
        consecutive5xxErrors: Int?, consecutiveGatewayErrors: Int?, baseEjectionTime: Duration = .seconds(30),
        maxEjectionPercent: Int = 10, interval: Duration = .seconds(10), minHealthPercent: Int = 0
    ) {
        self.consecutive5xxErrors = consecutive5xxErrors
        self.consecutiveGatewayErrors = consecutiveGatewayErrors
        self.baseEjectionTime = baseEjectionTime
        self.maxEjectionPercent = maxEjectionPercent
        self.interval = interval
        self.minHealthPercent = minHealthPercent
    }

    /// Envoy's cap on one ejection (`max_ejection_time`, left at its default by Istio).
    public static let maxEjectionTime = Duration.seconds(300)

    /// How long the `count`th ejection in a row lasts: baseEjectionTime × count, at most 300 s (or
    /// baseEjectionTime, when that is longer).
    public func ejectionTime(_ count: Int) -> Duration {
        min(baseEjectionTime * max(count, 1), max(baseEjectionTime, Self.maxEjectionTime))
    }

    /// The ejection count of an endpoint back for `healthy` since its last ejection ended: Envoy lowers it by
    /// one at each interval sweep once the endpoint has been back for baseEjectionTime, so an endpoint that
    /// stays well is ejected briefly again, one that keeps failing for longer and longer.
    public func decayed(_ count: Int, healthyFor healthy: Duration) -> Int {
        guard healthy >= baseEjectionTime, interval > .zero else { return count }
        let sweeps = Int(((healthy - baseEjectionTime) / interval).rounded(.down)) + 1
        return max(0, count - sweeps)
    }

    /// Whether the backend is below `minHealthPercent` with `healthy` of `size` endpoints not ejected.
    public func panics(healthy: Int, size: Int) -> Bool { healthy * 100 < minHealthPercent * size }

    /// How an attempt ended, for the consecutive counts.
    public enum Result: Sendable {
        case success
        case connectFailure
        case status(Int)

        var is5xx: Bool {
            switch self {
            case .success: return false
            case .connectFailure: return true
            case .status(let s): return s >= 500
            }
        }
        var isGatewayError: Bool {
            switch self {
            case .success: return false
            case .connectFailure: return true
            case .status(let s): return (502...504).contains(s)
            }
        }
    }

    /// Updates an endpoint's consecutive counts with `result`; true when they now call for an ejection.
    public func record(_ result: Result, fiveXX: inout Int, gateway: inout Int) -> Bool {
        fiveXX = result.is5xx ? fiveXX + 1 : 0
        gateway = result.isGatewayError ? gateway + 1 : 0
        if let limit = consecutive5xxErrors, limit > 0, fiveXX >= limit { return true }
        if let limit = consecutiveGatewayErrors, limit > 0, gateway >= limit { return true }
        return false
    }

    /// Whether one more endpoint of a backend of `size` may be ejected while `ejected` already are.
    public func mayEject(ejected: Int, size: Int) -> Bool {
        ejected == 0 || (ejected + 1) * 100 <= maxEjectionPercent * size
    }
}

extension OutlierDetection.Result {
    /// How a failed try counts: a reset as 503, a per-try timeout as 504, a gRPC status as its HTTP equivalent
    /// (as in Envoy).
    public init(_ outcome: RetryPolicy.Outcome) {
        switch outcome {
        case .connectFailed: self = .connectFailure
        case .reset, .refusedStream: self = .status(503)
        case .perTryTimeout: self = .status(504)
        case .status(let status): self = .status(status)
        case .grpcStatus(let code): self = .status(OutlierDetection.httpStatus(forGRPC: code))
        }
    }
}

extension OutlierDetection {
    /// gRPC's status codes as HTTP statuses (Envoy's mapping, which its outlier detection counts).
    public static func httpStatus(forGRPC code: Int) -> Int {
        switch code {
        case 0: return 200
        case 1: return 499
        case 3, 9, 11: return 400
        case 4: return 504
        case 5: return 404
        case 6, 10: return 409
        case 7: return 403
        case 8: return 429
        case 12: return 501
        case 14: return 503
        case 16: return 401
        default: return 500
        }
    }
}
