import Filters
import JWT
import TLS
import WaypointCore
import HTTPRouter

/// One upstream destination (a service port or a ServiceEntry host port) and its ready endpoints.
public struct Cluster: Sendable {
    /// `namespace/service:port` or `host:port`.
    public let name: String
    /// Indices into `Snapshot.endpoints`; only ready endpoints are listed.
    public internal(set) var endpoints: [Int32]
    /// A passthrough ServiceEntry's (`resolution: NONE`): `endpoints` are its addresses, and a request goes to
    /// the one its tunnel named (`Destination.originalEndpoint`), never to another.
    public internal(set) var originalDestination = false
    /// From a DestinationRule on the service, if any.
    public var outlierDetection: OutlierDetection? = nil
    public var connectionPool: ConnectionPoolSettings? = nil
    /// The proxy-wide counts `connectionPool` is checked against: made with the snapshot, one per cluster
    /// (a subset's limits are its own, as an Envoy cluster's are).
    public internal(set) var limits: ClusterLimits? = nil
    /// Istio's default is LEAST_REQUEST.
    public var loadBalancer = LoadBalancer.leastRequest
    /// For `.consistentHash`: the ring over `endpoints`.
    public var ring: HashRing? = nil
    /// With locality load balancing: `endpoints` grouped by nearness to the waypoint, nearest first (at
    /// least two tiers); nil: all equally near.
    public var tiers: [[Int32]]? = nil
}

/// A backendRef after resolution: a cluster index, or -1 for a reference to nothing (500 when picked).
public struct WeightedCluster: Sendable {
    public let cluster: Int32
    public let weight: UInt32
    /// The rule's policy with this backendRef's own filters applied after the rule's; nil: the rule's.
    public var policy: ForwardPolicy? = nil
}

/// Where a matched rule sends the request.
public struct BackendSet: Sendable {
    public let clusters: [WeightedCluster]
    public let totalWeight: UInt32
    /// `namespace/name` of the route, or `namespace/service` for a service's default route.
    public let route: String
    /// Retries and timeouts of the rule.
    public let policy: ForwardPolicy
    /// VirtualService `fault.abort`: this share of requests is answered with the status instead.
    public let abort: (status: Int, percent: Double)?

    public init(
        clusters: [WeightedCluster], totalWeight: UInt32, route: String, policy: ForwardPolicy = .standard,
        abort: (status: Int, percent: Double)? = nil
    ) {
        self.clusters = clusters
        self.totalWeight = totalWeight
        self.route = route
        self.policy = policy
        self.abort = abort
    }

    /// The entry a weighted draw lands on for `point` in `0..<totalWeight` (weight-0 entries are never chosen).
    @inline(__always)
    public func entry(at point: UInt32) -> Int {
        var point = point
        for (index, entry) in clusters.enumerated() {
            if point < entry.weight { return index }
            point -= entry.weight
        }
        return clusters.count - 1
    }
}

/// What a route rule leads to.
public enum RouteAction: Sendable {
    case forward(BackendSet)
    /// RequestRedirect: answered with a 3xx.
    case redirect(RequestRedirect)
    /// A fixed answer: a rule without backendRefs answers 500 (Gateway API: no forwarding, no filter).
    case reply(LocalReply)
    /// VirtualService `directResponse`: this status and body.
    case respond(status: Int, body: [UInt8])
}

/// The key of a service port in `Snapshot.tcpRoutes`.
@inline(__always)
public func tcpRouteKey(_ virtualHost: Int32, _ port: UInt16) -> UInt64 { UInt64(UInt32(bitPattern: virtualHost)) << 16 | UInt64(port) }

/// Everything needed to route, compiled once per config load and shared read-only by all workers.
///
/// Immutable; a stream keeps the snapshot it started with, so a reload never changes a request in flight.
/// Thread: any. Ownership: the main thread creates it and posts it to each worker; the last holder frees it.
public final class Snapshot: Sendable {
    public let generation: UInt64
    /// Snapshots of one lineage (one full compile, then endpoint updates) share their virtual hosts, policies
    /// and clusters (by index), and an endpoint index keeps its address: new endpoints are appended. A worker
    /// patches its pools instead of rebuilding them.
    public let lineage: UInt64
    /// Within a lineage: endpoints (below the previous snapshot's count) whose transport or workload changed.
    public let revisedEndpoints: [Int32]
    public let routes: RouteTable<RouteAction>
    public let clusters: [Cluster]
    /// Every distinct endpoint address; workers keep one connection pool per entry.
    public let endpoints: [SocketAddress]
    /// Parallel to `endpoints`: plaintext, or for an endpoint in the mesh HBONE to its node's port 15008 (and the
    /// identity its certificate must name).
    public let endpointTransports: [EndpointTransport]
    /// The service accounts `EndpointTransport.hbone` indexes (within a lineage only added to).
    public let peerAccounts: [ServiceAccountName]
    /// Parallel to `endpoints`: the workload behind an endpoint whose Pod is known (Istio's destination labels).
    public let endpointWorkloads: [Int32]
    /// The distinct workloads `endpointWorkloads` indexes (within a lineage only added to).
    public let workloads: [WorkloadLabels]
    /// Service VIPs and ServiceEntry addresses an HBONE tunnel's `:authority` may name (`destination(for:)`).
    public let destinations: [SocketAddress: Destination]
    /// The workload addresses a tunnel may name. Apart from `destinations` and plain data, so that an endpoint
    /// update copies and frees no strings: with `destinations` a copy of 10,000 workload entries was a third of
    /// an update's cost.
    public let workloadAddresses: [SocketAddress: WorkloadAddress]
    /// TCPRoute backends of a service port, by `tcpRouteKey(virtualHost, port)`: where its byte streams go.
    public let tcpRoutes: [UInt64: BackendSet]
    /// Per virtual host (index into `routes.virtualHosts`): the AuthorizationPolicies that apply.
    public let authorization: [PolicySet]
    /// For requests whose host matches no virtual host: the waypoint-wide policies.
    public let unmatchedHostPolicies: PolicySet
    /// Per virtual host: the RequestAuthentication JWT rules that apply (nil: none).
    public let authentication: [RequestAuthenticator?]
    /// For requests whose host matches no virtual host: the waypoint-wide JWT rules.
    public let unmatchedHostAuthentication: RequestAuthenticator?
    /// Whether any JWT rules apply anywhere (else requests skip looking).
    public let hasAuthentication: Bool
    /// Per virtual host: PeerAuthentication STRICT, so plaintext requests are refused.
    public let strictMTLS: [Bool]
    /// Per virtual host: the destination service as Istio's metrics name it (fqdn, name, namespace).
    public let services: [(fqdn: String, name: String, namespace: String)]
    /// The mesh config's external authorizers (CUSTOM policies' `provider` indexes them).
    public let authorizers: [ExternalAuthorizer]
    /// DestinationRules' TLS origination (`EndpointTransport.tls` indexes it; nil: unusable, connections fail).
    public let upstreamTLS: [UpstreamTLS?]
    /// The active config as JSON, for the admin `/config_dump`: rendered when asked (rendering it with every
    /// compile cost ~40 % of a load for 1,000 services, measured under API churn).
    public var dump: String { dumpValue.rendered() }
    /// The same, as a value (the runtime adds what it knows of the config's sources).
    public var dumpValue: JSONValue { dumpSource() }
    private let dumpSource: @Sendable () -> JSONValue
    /// Findings that did not stop the load (skipped kinds, unresolved references).
    public let warnings: [String]

    /// What an HBONE tunnel's `:authority` names: a service or entry address first, else a workload's; nil for
    /// anything else, which is refused (never an open relay).
    public func destination(for address: SocketAddress) -> Destination? {
        if let found = destinations[address] { return found }
        guard let workload = workloadAddresses[address] else { return nil }
        let text = address.description
        return Destination(
            virtualHost: -1, port: address.port, cluster: -1, endpoint: workload.endpoint, innerProtocol: workload.innerProtocol,
            name: text, host: text)
    }

    init(
        generation: UInt64, lineage: UInt64, routes: RouteTable<RouteAction>, clusters: [Cluster], endpoints: [SocketAddress],
        endpointTransports: [EndpointTransport], peerAccounts: [ServiceAccountName], workloads: [WorkloadLabels],
        endpointWorkloads: [Int32], revisedEndpoints: [Int32],
        destinations: [SocketAddress: Destination], workloadAddresses: [SocketAddress: WorkloadAddress], tcpRoutes: [UInt64: BackendSet],
        authorization: [PolicySet],
        unmatchedHostPolicies: PolicySet, authentication: [RequestAuthenticator?], unmatchedHostAuthentication: RequestAuthenticator?,
        strictMTLS: [Bool], services: [(fqdn: String, name: String, namespace: String)], authorizers: [ExternalAuthorizer],
        upstreamTLS: [UpstreamTLS?], dump: @escaping @Sendable () -> JSONValue, warnings: [String]
    ) {
        self.services = services
        self.generation = generation
        self.lineage = lineage
        self.revisedEndpoints = revisedEndpoints
        self.routes = routes
        self.clusters = clusters
        self.endpoints = endpoints
        self.endpointTransports = endpointTransports
        self.peerAccounts = peerAccounts
        self.endpointWorkloads = endpointWorkloads
        self.workloads = workloads
        self.destinations = destinations
        self.workloadAddresses = workloadAddresses
        self.tcpRoutes = tcpRoutes
        self.authorization = authorization
        self.unmatchedHostPolicies = unmatchedHostPolicies
        self.authentication = authentication
        self.unmatchedHostAuthentication = unmatchedHostAuthentication
        hasAuthentication = unmatchedHostAuthentication != nil || authentication.contains { $0 != nil }
        self.strictMTLS = strictMTLS
        self.authorizers = authorizers
        self.upstreamTLS = upstreamTLS
        self.dumpSource = dump
        self.warnings = warnings
    }
}

/// A workload address a tunnel may name: its endpoint, and the protocol its port carries.
public struct WorkloadAddress: Sendable, Equatable {
    public let endpoint: Int32
    public let innerProtocol: InnerProtocol
}
