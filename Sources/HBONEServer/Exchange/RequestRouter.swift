import EventLoop
import Filters
import WaypointCore

/// Where the data plane sends one request, and what named it for telemetry: decided by the code that knows
/// the config.
public struct RouteDecision {
    public enum Action {
        /// Forward to the endpoint with this index in the list given to `ProxyServer.updateEndpoints`.
        /// `route` names the matched route for the access log; `cluster` is where a retry picks another endpoint
        /// (-1: none, a workload address); `policy` holds the route's retries and timeouts.
        case forward(endpoint: Int32, route: String, cluster: Int32, policy: ForwardPolicy)
        /// Answer locally.
        case reply(LocalReply)
        /// Answer with a redirect (RequestRedirect): `status` 3xx and the `location` built from the request.
        case redirect(status: Int, location: [UInt8])
        /// Answer with this status and body (VirtualService `directResponse`, fault abort), after `delay` when
        /// one is given (a fault delay that also applies: Envoy's fault filter delays first, then aborts).
        case respond(status: Int, body: [UInt8], delay: Duration?)
    }

    public var action: Action
    /// The AuthorizationPolicy that allowed or denied the request, and the destination service, whatever the
    /// action.
    public var labels: RouteLabels
    /// A CUSTOM policy's external authorizer, asked before `action` is taken (which assumes it allows).
    public var check: ExternalCheck?

    public init(_ action: Action, labels: RouteLabels = RouteLabels(), check: ExternalCheck? = nil) {
        self.action = action
        self.labels = labels
        self.check = check
    }
}

/// One request's check with an external authorizer (a CUSTOM AuthorizationPolicy): whom to ask and what. A class,
/// so that a decision without one stays small (one nil reference on the hot path).
///
/// Thread: its exchange's. Ownership: the decision, then the exchange until the answer.
public final class ExternalCheck {
    public let authorizer: ExternalAuthorizer
    /// The CUSTOM policy that called for it.
    public let policy: String
    /// What is sent: the HTTP check request, or the gRPC `CheckRequest` message.
    public let request: [UInt8]

    public init(authorizer: ExternalAuthorizer, policy: String, request: [UInt8]) {
        self.authorizer = authorizer
        self.policy = policy
        self.request = request
    }
}

/// What a routing decision names for telemetry.
///
/// Thread: its exchange's. Ownership: a value inside the decision, then the exchange's record.
public struct RouteLabels: Sendable {
    /// The AuthorizationPolicy that allowed or denied the request, nil when none decided.
    public var policy: String?
    /// The destination service, interned in the worker's `IstioMetrics` (-1: unknown).
    public var service: Int32 = -1

    public init() {}
}

/// Where a request's tries went, for picking the next one as Istio has Envoy do: a retry avoids every endpoint
/// tried before (the previous-hosts predicate, up to 5 picks), and with `retryRemoteLocalities` the locality
/// tiers tried (the previous-priorities plugin with Istio's update frequency of 2: the first two tries use the
/// normal tier loads, the third and fourth leave out the tiers of the first two, the fifth those of the first
/// four, and so on; when every tier is left out, none is).
///
/// Thread: its exchange's. Ownership: the exchange (a value; its array allocates only once a retry happens).
public struct RetryHistory: Sendable {
    /// Endpoints tried so far.
    public var endpoints: [Int32] = []
    /// The policy's `retryRemoteLocalities`.
    public var remoteLocalities = false
    /// Bit n: a try went to tier n.
    public var tiersTried: UInt8 = 0
    /// The tiers the next picks leave out.
    public var tiersExcluded: UInt8 = 0

    public init() {}

    /// Starts over for a new request (nothing to release when the last one never retried).
    public mutating func start(remoteLocalities: Bool) {
        if !endpoints.isEmpty { self = RetryHistory() }
        self.remoteLocalities = remoteLocalities
    }
}

/// Decides where each request and each HBONE tunnel goes. One instance per worker.
///
/// A class-bound existential: the data plane makes one indirect call per request through it (a few
/// nanoseconds), which keeps the data plane free of the config's types without `@inlinable` plumbing.
/// Thread: its worker's loop thread only.
public protocol RequestRouter: AnyObject {
    /// Authorizes and routes a request: by its Host header, or, inside a tunnel, by the tunnel's `destination`.
    /// `peer` is who sent it (the principal is nil on the plaintext listener). A denial is a `.reply`.
    /// A tunnel's `destination` from an earlier snapshot is looked up again by its address and replaced, so that
    /// the tunnel's next requests find it current.
    func route(_ head: RequestHead, _ bytes: UnsafeRawBufferPointer, destination: inout Destination?, peer: PeerFacts) -> RouteDecision
    /// The interned destination service of a tunnel's destination (-1 for a workload address).
    func service(of destination: Destination) -> Int32
    /// Authorizes a byte-stream (TCP) tunnel to `destination` before anything reaches the upstream: only
    /// connection attributes are known (Istio: DENY rules with HTTP-only fields match, ALLOW rules with them do not).
    func authorizeTCP(to destination: Destination, peer: PeerFacts) -> Bool
    /// What a tunnel's `:authority` names, or nil when the waypoint serves no such address.
    func destination(for address: SocketAddress) -> Destination?
    /// Whether the destination's own cluster has a ready endpoint (a workload address always has one).
    func isReachable(_ destination: Destination) -> Bool
    /// The snapshot routing now: the indices in a decision are in its numbering.
    var generation: UInt64 { get }
    /// Brings a cluster and an endpoint index held since snapshot `generation` into the current numbering (a reload
    /// may renumber clusters, an endpoint update give an index to another address): the cluster by its name, the
    /// endpoint by its address; -1 for what is gone or can no longer be told. `generation` becomes the current one.
    func renumber(cluster: inout Int32, endpoint: inout Int32, since generation: inout UInt64)
    /// For a retry after a try at `failed`: a ready endpoint of `cluster` not tried before when there is one
    /// (always `failed` for a consistent-hash backend, unless it was ejected: Istio's retry policy there; a fresh
    /// pick when `failed` is -1).
    /// Records `failed` in `history`.
    func alternateEndpoint(cluster: Int32, failed: Int32, history: inout RetryHistory) -> Int32
    /// The backend's connection-pool limits (DestinationRule) with their proxy-wide counts, nil when none.
    func limits(cluster: Int32) -> ClusterLimits?
    /// How an attempt to `endpoint` of `cluster` ended, for outlier detection (ejections).
    func reportAttempt(endpoint: Int32, cluster: Int32, result: OutlierDetection.Result)
    /// An endpoint for a byte-stream (TCP) tunnel, or nil when the destination has no ready endpoint.
    func pickEndpoint(for destination: Destination) -> Int32?
    /// An endpoint of `cluster` by its load balancer (a mirror's target, an authorizer), nil when it has none ready
    /// or passes through (no tunnel named an address of it).
    func pickEndpoint(inCluster cluster: Int32) -> Int32?
    /// The ready endpoints of `cluster` (for its connection limit).
    func endpoints(inCluster cluster: Int32) -> [Int32]
}
