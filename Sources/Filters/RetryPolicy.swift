import WaypointCore

/// When and how a failed attempt is tried again: the pure half of retries (Envoy's split: "would retry?" here,
/// budget and timers in the data plane).
///
/// Thread: any (a value). Ownership: the settings (Istio's default) or, later, a route.
public struct RetryPolicy: Sendable, Equatable {
    /// Istio's retry conditions (Envoy's `retry_on`).
    public struct RetryOn: OptionSet, Sendable {
        public let rawValue: UInt16
        public init(rawValue: UInt16) { self.rawValue = rawValue }
        /// The upstream could not be connected to (refused, unreachable, timed out).
        public static let connectFailure = RetryOn(rawValue: 1)
        /// The upstream closed or reset before a response head.
        public static let reset = RetryOn(rawValue: 2)
        /// A response status listed in `retriableStatusCodes`.
        public static let retriableStatusCodes = RetryOn(rawValue: 4)
        /// Any 5xx response (Envoy's `5xx`).
        public static let serverError = RetryOn(rawValue: 8)
        /// 502, 503 and 504 (Envoy's `gateway-error`).
        public static let gatewayError = RetryOn(rawValue: 16)
        /// The attempt ran past its per-try timeout (Gateway API: `backendRequest` timeouts are retried).
        public static let perTryTimeout = RetryOn(rawValue: 32)
        /// The HTTP/2 upstream refused the stream (RST_STREAM or GOAWAY with REFUSED_STREAM): it did not process it.
        public static let refusedStream = RetryOn(rawValue: 64)
        /// gRPC statuses in a trailers-only response: CANCELLED (1), DEADLINE_EXCEEDED (4), RESOURCE_EXHAUSTED (8),
        /// INTERNAL (13), UNAVAILABLE (14).
        public static let grpcCancelled = RetryOn(rawValue: 128)
        public static let grpcDeadlineExceeded = RetryOn(rawValue: 256)
        public static let grpcResourceExhausted = RetryOn(rawValue: 512)
        public static let grpcInternal = RetryOn(rawValue: 1024)
        public static let grpcUnavailable = RetryOn(rawValue: 2048)
    }

    /// What an attempt ended with, as far as retrying cares.
    public enum Outcome: Equatable, Sendable {
        case connectFailed
        case reset
        /// An HTTP/2 upstream refused the stream (REFUSED_STREAM).
        case refusedStream
        case status(Int)
        /// A gRPC response that is only headers, with this `grpc-status`.
        case grpcStatus(Int)
        case perTryTimeout
    }

    /// Retries after the first try (Istio: `attempts`; total tries ≤ 1 + this).
    public var maxRetries: Int
    public var retryOn: RetryOn
    public var retriableStatusCodes: [Int]
    /// Exponential backoff with full jitter: try n waits a random time in [0, min(cap, base·2ⁿ⁻¹)).
    public var backoffBase: Duration
    public var backoffCap: Duration
    /// A request whose head and body exceed this is not kept for replay, so it is not retried.
    public var replayBound: Int
    /// VirtualService `retryRemoteLocalities`: with locality load balancing, later retries leave the
    /// localities already tried (Envoy's previous-priorities retry plugin, as Istio configures it).
    public var retryRemoteLocalities = false

    public init(
        maxRetries: Int, retryOn: RetryOn, retriableStatusCodes: [Int] = [], backoffBase: Duration = .milliseconds(25),
        backoffCap: Duration = .milliseconds(250), replayBound: Int = 64 * 1024
    ) {
        self.maxRetries = maxRetries
        self.retryOn = retryOn
        self.retriableStatusCodes = retriableStatusCodes
        self.backoffBase = backoffBase
        self.backoffCap = backoffCap
        self.replayBound = replayBound
    }

    /// Istio's default for every route without a retry policy (istio/istio `route/retry/retry.go`): 2 retries on
    /// `connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes` with 503, each to another host
    /// when one is ready. (refused-stream, unavailable and cancelled are HTTP/2 and gRPC conditions.)
    public static let istioDefault = RetryPolicy(
        maxRetries: 2,
        retryOn: [
            .connectFailure, .refusedStream, .grpcUnavailable,
            .grpcCancelled, .retriableStatusCodes,
        ],
        retriableStatusCodes: [503])

    /// Gateway API HTTPRoute `retry` (GEP-1731): `attempts` retries after the first try, on the listed `codes`
    /// and on connect errors, resets and `backendRequest` timeouts; `backoff` is the base interval.
    public static func gatewayAPI(codes: [Int], attempts: Int, backoff: Duration?) -> RetryPolicy {
        RetryPolicy(
            maxRetries: attempts, retryOn: [.connectFailure, .reset, .retriableStatusCodes, .perTryTimeout],
            retriableStatusCodes: codes, backoffBase: backoff ?? .milliseconds(25),
            backoffCap: max(.milliseconds(250), (backoff ?? .zero) * 10))
    }

    /// Istio VirtualService `retries`: up to `attempts` retries on the `retryOn` conditions (Envoy's names; numbers
    /// are retriable status codes); without `retryOn`, Istio's default conditions. `5xx` and `gateway-error`
    /// include connect failures, resets (a refused stream is one) and per-try timeouts, as in Envoy; `retriable-4xx`
    /// is 409. HTTP/2 and gRPC conditions (`refused-stream`, `cancelled`, ...) never occur on an HTTP/1.1 attempt;
    /// `retriable-headers` and `envoy-ratelimited` never hold here.
    public static func istio(attempts: Int, retryOn: String?, remoteLocalities: Bool = false) -> RetryPolicy {
        guard let retryOn else {
            var policy = istioDefault
            policy.maxRetries = attempts
            policy.retryRemoteLocalities = remoteLocalities
            return policy
        }
        var conditions: RetryOn = []
        var codes: [Int] = []
        for item in retryOn.split(separator: ",") {
            let name = item.filter { $0 != " " }
            if let code = Int(name) { codes.append(code); continue }
            switch name {
            case "5xx": conditions.formUnion([.serverError, .connectFailure, .reset, .perTryTimeout])
            case "gateway-error": conditions.formUnion([.gatewayError, .connectFailure, .reset, .perTryTimeout])
            case "reset": conditions.formUnion([.reset, .perTryTimeout])
            case "connect-failure", "reset-before-request": conditions.insert(.connectFailure)
            case "retriable-4xx": codes.append(409)
            case "retriable-status-codes": conditions.insert(.retriableStatusCodes)
            case "refused-stream": conditions.insert(.refusedStream)
            case "cancelled": conditions.insert(.grpcCancelled)
            case "deadline-exceeded": conditions.insert(.grpcDeadlineExceeded)
            case "resource-exhausted": conditions.insert(.grpcResourceExhausted)
            case "internal": conditions.insert(.grpcInternal)
            case "unavailable": conditions.insert(.grpcUnavailable)
            default: break
            }
        }
        if !codes.isEmpty { conditions.insert(.retriableStatusCodes) }
        var policy = RetryPolicy(maxRetries: attempts, retryOn: conditions, retriableStatusCodes: codes)
        policy.retryRemoteLocalities = remoteLocalities
        return policy
    }

    /// Whether this outcome calls for another try (attempt counts and budgets aside).
    public func wouldRetry(_ outcome: Outcome) -> Bool {
        switch outcome {
        case .connectFailed: return retryOn.contains(.connectFailure)
        case .reset: return retryOn.contains(.reset)
        case .refusedStream: return !retryOn.isDisjoint(with: [.refusedStream, .reset])
        case .perTryTimeout: return retryOn.contains(.perTryTimeout)
        case .grpcStatus(let code):
            switch code {
            case 1: return retryOn.contains(.grpcCancelled)
            case 4: return retryOn.contains(.grpcDeadlineExceeded)
            case 8: return retryOn.contains(.grpcResourceExhausted)
            case 13: return retryOn.contains(.grpcInternal)
            case 14: return retryOn.contains(.grpcUnavailable)
            default: return false
            }
        case .status(let status):
            if retryOn.contains(.retriableStatusCodes) && retriableStatusCodes.contains(status) { return true }
            if retryOn.contains(.serverError) && status >= 500 && status <= 599 { return true }
            return retryOn.contains(.gatewayError) && (502...504).contains(status)
        }
    }

    /// The wait before retry number `retry` (1 for the first retry); `random` is a uniform 64-bit value.
    public func backoff(retry: Int, random: UInt64) -> Duration {
        let ceiling = min(backoffCap, backoffBase * (1 << min(max(retry - 1, 0), 16)))
        let (seconds, attoseconds) = ceiling.components
        let nanos = UInt64(seconds) * 1_000_000_000 + UInt64(attoseconds / 1_000_000_000)
        guard nanos > 0 else { return .zero }
        return .nanoseconds(Int64(random % nanos))
    }
}

/// How a matched route forwards: its retry policy (nil: the proxy's default), timeouts and header filters.
/// Shared by every request of the route.
///
/// Thread: any (immutable). Ownership: the config snapshot.
public final class ForwardPolicy: Sendable {
    public let retry: RetryPolicy?
    /// All tries together (Gateway API `timeouts.request`); on expiry 504.
    public let requestTimeout: Duration?
    /// Each try (`timeouts.backendRequest`); on expiry the try counts as failed (retried when the policy says so).
    public let perTryTimeout: Duration?
    /// The rule's RequestHeaderModifier and ResponseHeaderModifier filters.
    public let requestHeaders: HeaderModifier?
    public let responseHeaders: HeaderModifier?
    /// The rule's URLRewrite filter.
    public let rewrite: URLRewrite?
    /// RequestMirror filters / VirtualService `mirror(s)`: for each, a copy of its share of requests goes to a
    /// cluster (an index into the snapshot's clusters), answer dropped. At most 32.
    public let mirrors: [(cluster: Int32, percent: Double)]
    /// VirtualService `fault.delay`: this share of requests waits this long before it is forwarded.
    public let delay: (duration: Duration, percent: Double)?

    public init(
        retry: RetryPolicy?, requestTimeout: Duration?, perTryTimeout: Duration?,
        requestHeaders: HeaderModifier? = nil, responseHeaders: HeaderModifier? = nil, rewrite: URLRewrite? = nil,
        mirrors: [(cluster: Int32, percent: Double)] = [], delay: (duration: Duration, percent: Double)? = nil
    ) {
        self.delay = delay
        self.rewrite = rewrite
        self.mirrors = Array(mirrors.prefix(32))
        self.retry = retry
        self.requestTimeout = requestTimeout
        self.perTryTimeout = perTryTimeout
        self.requestHeaders = requestHeaders
        self.responseHeaders = responseHeaders
    }

    /// This policy with a backend's own header filters applied after the rule's (per-backendRef filters,
    /// VirtualService `route[].headers`).
    public func addingHeaders(request: HeaderModifier?, response: HeaderModifier?) -> ForwardPolicy {
        ForwardPolicy(
            retry: retry, requestTimeout: requestTimeout, perTryTimeout: perTryTimeout,
            requestHeaders: .combining(requestHeaders, then: request), responseHeaders: .combining(responseHeaders, then: response),
            rewrite: rewrite, mirrors: mirrors, delay: delay)
    }

    /// This policy with `request` applied before the rule's request header filters (what RequestAuthentication
    /// changes: the token's header removed, claims as headers; Envoy's jwt_authn runs before the router).
    public func applying(first request: HeaderModifier) -> ForwardPolicy {
        ForwardPolicy(
            retry: retry, requestTimeout: requestTimeout, perTryTimeout: perTryTimeout,
            requestHeaders: .combining(request, then: requestHeaders), responseHeaders: responseHeaders, rewrite: rewrite,
            mirrors: mirrors, delay: delay)
    }

    /// This policy with each mirror's cluster index mapped by `renumber` (a reload renumbered the clusters).
    public func renumberingMirrors(_ renumber: (Int32) -> Int32) -> ForwardPolicy {
        ForwardPolicy(
            retry: retry, requestTimeout: requestTimeout, perTryTimeout: perTryTimeout, requestHeaders: requestHeaders,
            responseHeaders: responseHeaders, rewrite: rewrite, mirrors: mirrors.map { (renumber($0.cluster), $0.percent) },
            delay: delay)
    }

    /// No route-level policy: the proxy's default retries, no timeouts.
    public static let standard = ForwardPolicy(retry: nil, requestTimeout: nil, perTryTimeout: nil)
}
