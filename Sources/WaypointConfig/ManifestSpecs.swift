import Filters
import Regex
import WaypointCore
/// The parts of the users' Kubernetes manifests that waypoint reads, as validated values (`…Spec`).
/// Field names follow the manifests so that `config_dump` and errors read like the YAML.

/// `v1 Service`.
public struct ServiceSpec: Sendable, Equatable {
    /// Namespace and name, hashed once (an endpoint update asks about every Service whether it was touched).
    public let key: ObjectKey
    public var namespace: String { key.namespace }
    public var name: String { key.name }
    public var clusterIP: String?
    public var ports: [ServicePortSpec]
    public var creationTimestamp: String
    /// The Service's `metadata.labels` (its `istio.io/use-waypoint` binding among them).
    public var labels: [String: String]
    /// `spec.selector`: the labels of the Pods behind it.
    public var selector: [String: String]

    public init(
        namespace: String, name: String, clusterIP: String?, ports: [ServicePortSpec], creationTimestamp: String,
        labels: [String: String] = [:], selector: [String: String] = [:]
    ) {
        (key, self.clusterIP, self.ports, self.creationTimestamp) = (ObjectKey(namespace, name), clusterIP, ports, creationTimestamp)
        (self.labels, self.selector) = (labels, selector)
    }
}

/// An object by namespace and name, hashed once when made: asked about thousands of times per endpoint update
/// (is this Service, this slice's Service, among those touched?), hashing both strings each time was most of
/// an update's own work.
public struct ObjectKey: Hashable, Sendable {
    public let namespace: String
    public let name: String
    private let digest: Int

    public init(_ namespace: String, _ name: String) {
        var hasher = Hasher()
        hasher.combine(namespace)
        hasher.combine(name)
        (self.namespace, self.name, digest) = (namespace, name, hasher.finalize())
    }

    public func hash(into hasher: inout Hasher) { hasher.combine(digest) }

    public static func == (a: Self, b: Self) -> Bool { a.digest == b.digest && a.name == b.name && a.namespace == b.namespace }
}

public struct ServicePortSpec: Sendable, Equatable {
    public enum TargetPort: Sendable, Equatable { case number(Int), name(String) }
    public var name: String
    public var port: Int
    public var targetPort: TargetPort
    public var appProtocol: String?
}

/// `discovery.k8s.io/v1 EndpointSlice`.
public struct EndpointSliceSpec: Sendable, Equatable {
    /// Its Service's namespace (the slice's own) and name (label `kubernetes.io/service-name`), hashed once.
    public let service: ObjectKey
    public var namespace: String { service.namespace }
    public var serviceName: String { service.name }
    public var name: String
    public var ports: [(name: String, port: Int)]
    /// `targetRef` names the Pod behind an endpoint (kind Pod only); `zone` and `nodeName` place it.
    public var endpoints: [(addresses: [String], ready: Bool, pod: String?, zone: String?, node: String?)]
    /// Annotation `networking.istio.io/tunnel: http`: the endpoints are in the mesh and reached by HBONE.
    public var tunnel: Bool

    public init(
        namespace: String, name: String, serviceName: String, ports: [(name: String, port: Int)],
        endpoints: [(addresses: [String], ready: Bool, pod: String?, zone: String?, node: String?)], tunnel: Bool = false
    ) {
        (service, self.name, self.ports, self.endpoints, self.tunnel) = (
            ObjectKey(namespace, serviceName), name, ports, endpoints, tunnel
        )
    }

    /// The key Istio uses (as a WorkloadEntry/ServiceEntry endpoint label) for endpoints reached by HBONE.
    public static let tunnelKey = "networking.istio.io/tunnel"

    public static func == (a: Self, b: Self) -> Bool {
        a.service == b.service && a.name == b.name && a.tunnel == b.tunnel
            && a.ports.elementsEqual(b.ports, by: ==) && a.endpoints.elementsEqual(b.endpoints, by: ==)
    }
}

/// `networking.istio.io/v1 ServiceEntry`.
public struct ServiceEntrySpec: Sendable, Equatable {
    public struct Port: Sendable, Equatable {
        public var name: String
        public var number: Int
        public var targetPort: Int?
        public var proto: String?
    }
    public struct Endpoint: Sendable, Equatable {
        public var address: String
        public var ports: [String: Int]
        public var labels: [String: String]
        /// `locality`: `region/zone/subzone`.
        public var locality: Locality?
    }
    /// `resolution`: how the endpoints' addresses are found.
    public enum Resolution: String, Sendable {
        /// `NONE` (the default): passthrough, each of the entry's `addresses` reached as itself (Envoy's original
        /// destination: the address a tunnel names); `STATIC`: the endpoints' IP addresses as given.
        case none = "NONE", `static` = "STATIC"
        /// `DNS`: every address the names (the endpoints', else the hosts) resolve to; `DNS_ROUND_ROBIN`: the
        /// first one only, as Envoy's logical DNS.
        case dns = "DNS", dnsRoundRobin = "DNS_ROUND_ROBIN"

        public var resolvesNames: Bool { self == .dns || self == .dnsRoundRobin }
    }
    public var namespace: String
    public var name: String
    public var hosts: [String]
    public var addresses: [String]
    public var ports: [Port]
    public var endpoints: [Endpoint]
    public var resolution: Resolution = .none

    /// The host names to resolve (lower-case): the endpoints' that are not IP addresses, or the hosts when there
    /// are no endpoints. Empty without DNS resolution.
    public var namesToResolve: [String] {
        guard resolution.resolvesNames else { return [] }
        if endpoints.isEmpty { return hosts.filter { !$0.hasPrefix("*") } }
        return endpoints.map(\.address).filter { SocketAddress(ip: $0, port: 0) == nil }.map { $0.lowercased() }
    }
}

/// `gateway.networking.k8s.io/v1beta1 ReferenceGrant`: lets routes of other namespaces refer to objects of this
/// one (a backendRef to a Service here). Without one, such a reference is refused (`RefNotPermitted`).
public struct ReferenceGrantSpec: Sendable, Equatable {
    public struct From: Sendable, Equatable {
        public var group: String
        public var kind: String
        public var namespace: String
    }
    public struct To: Sendable, Equatable {
        public var group: String
        public var kind: String
        /// Nil: every object of the kind.
        public var name: String?
    }
    public var namespace: String
    public var name: String
    public var from: [From]
    public var to: [To]

    /// Whether a `fromKind` (a Gateway API route) in `fromNamespace` may refer to the `toKind` object `toName`
    /// (core group: "") in this namespace.
    public func permits(fromKind: String, fromNamespace: String, toGroup: String, toKind: String, toName: String) -> Bool {
        from.contains { $0.group == "gateway.networking.k8s.io" && $0.kind == fromKind && $0.namespace == fromNamespace }
            && to.contains { Self.sameGroup($0.group, toGroup) && $0.kind == toKind && ($0.name == nil || $0.name == toName) }
    }

    /// The core group is written "" or "core".
    static func sameGroup(_ a: String, _ b: String) -> Bool { a == b || (a.isEmpty || a == "core") && (b.isEmpty || b == "core") }
}

/// A Kubernetes label selector (`matchLabels` and `matchExpressions`, all of which must hold).
public struct LabelSelector: Sendable, Equatable {
    public enum Operator: String, Sendable, Equatable {
        case `in` = "In", notIn = "NotIn", exists = "Exists", doesNotExist = "DoesNotExist"
    }
    public struct Requirement: Sendable, Equatable {
        public var key: String
        public var op: Operator
        public var values: [String]
    }
    public var matchLabels: [String: String] = [:]
    public var matchExpressions: [Requirement] = []

    public func matches(_ labels: [String: String]) -> Bool {
        matchLabels.allSatisfy { labels[$0.key] == $0.value }
            && matchExpressions.allSatisfy { requirement in
                let value = labels[requirement.key]
                switch requirement.op {
                case .in: return value.map(requirement.values.contains) ?? false
                case .notIn: return value.map { !requirement.values.contains($0) } ?? true
                case .exists: return value != nil
                case .doesNotExist: return value == nil
                }
            }
    }
}

/// `gateway.networking.k8s.io/v1 Gateway`: the waypoint itself.
public struct GatewaySpec: Sendable, Equatable {
    public struct Listener: Sendable, Equatable {
        public var name: String
        public var port: Int
        public var proto: String
        public var hostname: String?
        public var allowedRoutes = AllowedRoutes()
    }
    /// Which routes may attach to a listener: from which namespaces, of which kinds.
    public struct AllowedRoutes: Sendable, Equatable {
        public enum From: Sendable, Equatable {
            /// The Gateway's own namespace (Gateway API's default).
            case same
            case all
            /// Namespaces whose labels the selector matches.
            case selector(LabelSelector)
        }
        public var from = From.same
        /// Route kinds (group `gateway.networking.k8s.io`); nil: HTTPRoute and GRPCRoute, what a waypoint serves.
        public var kinds: [String]?

        public func allows(kind: String, namespace: String, gatewayNamespace: String, namespaceLabels: [String: String]) -> Bool {
            guard (kinds ?? ["HTTPRoute", "GRPCRoute"]).contains(kind) else { return false }
            switch from {
            case .same: return namespace == gatewayNamespace
            case .all: return true
            case .selector(let selector): return selector.matches(namespaceLabels)
            }
        }
    }
    /// Istio's `istio.io/waypoint-for` label: which traffic a waypoint takes.
    public enum TrafficType: String, Sendable, Equatable {
        /// Traffic to Services (Istio's default).
        case service
        /// Traffic addressed to workloads (Pod IPs).
        case workload
        case all
        case none

        public var takesServices: Bool { self == .service || self == .all }
        public var takesWorkloads: Bool { self == .workload || self == .all }
    }
    public var namespace: String
    public var name: String
    public var gatewayClassName: String
    public var listeners: [Listener]
    public var waypointFor = TrafficType.service
}

/// `gateway.networking.k8s.io/v1 HTTPRoute`.
public struct HTTPRouteSpec: Sendable, Equatable {
    public struct ParentRef: Sendable, Equatable {
        public var group: String
        public var kind: String
        public var namespace: String
        public var name: String
        public var port: Int?
        public var sectionName: String?
        public var isService: Bool { kind == "Service" && (group == "" || group == "core") }
        public var isGateway: Bool { kind == "Gateway" && group == "gateway.networking.k8s.io" }
    }
    public struct PathMatchSpec: Sendable, Equatable {
        public var type: String
        public var value: String
        /// `value` compiled, for `RegularExpression` (the parser checks it by compiling it once).
        public var regex: Regex?
    }
    public struct HeaderMatchSpec: Sendable, Equatable {
        public var type: String
        public var name: String
        public var value: String
        /// `value` compiled, for `RegularExpression`.
        public var regex: Regex?
    }
    public struct MatchSpec: Sendable, Equatable {
        public var path: PathMatchSpec?
        public var headers: [HeaderMatchSpec]
        public var method: String?
        /// Same shape as header matches; names are case-sensitive.
        public var queryParams: [HeaderMatchSpec] = []
    }
    public struct BackendRef: Sendable, Equatable {
        public var group: String
        public var kind: String
        public var namespace: String
        public var name: String
        public var port: Int?
        public var weight: Int
        /// `filters` on this backendRef: applied after the rule's own, to requests sent to this backend.
        public var requestHeaders: HeaderModifier? = nil
        public var responseHeaders: HeaderModifier? = nil
        public var unsupportedFilters: [String] = []
    }
    public struct Mirror: Sendable, Equatable {
        public var backend: BackendRef
        public var percent: Double
    }
    /// `rules[].retry` (GEP-1731).
    public struct RetrySpec: Sendable, Equatable {
        public var codes: [Int]
        public var attempts: Int
        public var backoff: Duration?
    }
    public struct Rule: Sendable, Equatable {
        public var matches: [MatchSpec]
        public var backendRefs: [BackendRef]
        /// `timeouts.request`, `timeouts.backendRequest`.
        public var requestTimeout: Duration? = nil
        public var backendRequestTimeout: Duration? = nil
        public var retry: RetrySpec? = nil
        public var requestHeaders: HeaderModifier? = nil
        public var responseHeaders: HeaderModifier? = nil
        /// URLRewrite / RequestRedirect; a ReplacePrefixMatch's matched prefix is filled in per match at compile time.
        public var rewrite: URLRewrite? = nil
        public var redirect: RequestRedirect? = nil
        /// RequestMirror filters: the backend copies go to, and the share of requests copied (percent).
        public var mirrors: [Mirror] = []
        /// Filter types not implemented yet: the rule answers 500, as the specification requires for a filter
        /// that cannot be applied.
        public var unsupportedFilters: [String] = []
    }
    public var namespace: String
    public var name: String
    public var creationTimestamp: String
    public var parentRefs: [ParentRef]
    public var hostnames: [String]
    public var rules: [Rule]
    /// `HTTPRoute`, or `GRPCRoute` for a GRPCRoute read as the HTTP/2 routes it means (`/service/method` paths).
    public var kind = "HTTPRoute"
}

/// `v1 Node`: its labels, whose topology labels place the endpoints on it (locality).
public struct NodeSpec: Sendable, Equatable {
    public var name: String
    public var labels: [String: String]
}

/// `v1 Secret`: what a DestinationRule's `credentialName` names, its keys' bytes.
public struct SecretSpec: Sendable, Equatable {
    public var namespace: String
    public var name: String
    public var data: [String: [UInt8]]

    /// The text under the first of `keys` the Secret has.
    func text(_ keys: String...) -> String? {
        keys.lazy.compactMap { self.data[$0] }.first.map { String(decoding: $0, as: UTF8.self) }
    }
}

/// `v1 Namespace`: its labels (a namespace-wide `istio.io/use-waypoint`).
public struct NamespaceSpec: Sendable, Equatable {
    public var name: String
    public var labels: [String: String]
}

/// `v1 Pod`: its labels and IPs, which DestinationRule subsets select endpoints by (the label `istio-locality`
/// places it, `istio.io/dataplane-mode` puts it in the ambient mesh), and its service account (the identity
/// its ztunnel presents for it).
public struct PodSpec: Sendable, Equatable {
    public var namespace: String
    public var name: String
    public var labels: [String: String]
    public var ips: [String]
    /// `spec.serviceAccountName` (`default` when unset).
    public var serviceAccount = "default"
    /// Istio's destination labels for it (its controller from `metadata.ownerReferences`, app, version, …).
    public var workload = WorkloadLabels()
}

/// `networking.istio.io/v1 DestinationRule`: the parts a waypoint applies.
public struct DestinationRuleSpec: Sendable {
    /// `subsets[]`: endpoints whose labels include `labels`, optionally with a traffic policy of their own.
    public struct Subset: Sendable {
        public var name: String
        public var labels: [String: String]
        /// `trafficPolicy`: each field given replaces the rule's.
        public var policy = Policy()
        /// Its `trafficPolicy.portLevelSettings`, by port number.
        public var portLevel: [Int: Policy] = [:]
    }
    public var namespace: String
    public var name: String
    /// A service's short name, `name.namespace[.svc.cluster.local]`, or a ServiceEntry host.
    public var host: String
    public var outlierDetection: OutlierDetection?
    public var connectionPool: ConnectionPoolSettings?
    public var loadBalancer: LoadBalancer?
    public var subsets: [Subset] = []
    /// `trafficPolicy.tls` with mode SIMPLE or MUTUAL: TLS originated to the host's endpoints.
    public var tls: TLSOrigination?
    /// `trafficPolicy.portLevelSettings`, by port number: for that port, each field given replaces the rule's.
    public var portLevel: [Int: Policy] = [:]
    /// Fields read but not applied yet (`waypoint check` warns about each).
    public var ignoredFields: [String]

    /// The applied fields of a traffic policy.
    public struct Policy: Sendable {
        public var outlierDetection: OutlierDetection?
        public var connectionPool: ConnectionPoolSettings?
        public var loadBalancer: LoadBalancer?
        public var tls: TLSOrigination?
    }

    /// The policy for `port` (of `subset`): the rule's, then its `portLevelSettings` entry's, the subset's and the
    /// subset's port entry's fields, each replacing what came before (Istio merges them field by field, in this
    /// order).
    public func policy(port: Int?, subset: Subset? = nil) -> Policy {
        var merged = Policy(outlierDetection: outlierDetection, connectionPool: connectionPool, loadBalancer: loadBalancer, tls: tls)
        if let port, let level = portLevel[port] { merged.override(with: level) }
        if let subset {
            merged.override(with: subset.policy)
            if let port, let level = subset.portLevel[port] { merged.override(with: level) }
        }
        return merged
    }
}

extension DestinationRuleSpec.Policy {
    /// Each field `other` gives replaces this one's.
    mutating func override(with other: Self) {
        if let value = other.outlierDetection { outlierDetection = value }
        if let value = other.connectionPool { connectionPool = value }
        if let value = other.loadBalancer { loadBalancer = value }
        if let value = other.tls { tls = value }
    }
}

/// DestinationRule `trafficPolicy.tls` for TLS origination: PEM files as paths in the waypoint's file system.
public struct TLSOrigination: Sendable, Equatable {
    /// `disable`: DISABLE or ISTIO_MUTUAL (the mesh's own mTLS, which ambient endpoints get as HBONE): none
    /// originated (a port's entry so turns off the rule's).
    public enum Mode: String, Sendable { case disable = "DISABLE", simple = "SIMPLE", mutual = "MUTUAL" }
    public var mode: Mode
    /// `caCertificates`; nil: the system's trust store.
    public var caCertificates: String?
    public var clientCertificate: String?
    public var privateKey: String?
    /// `credentialName`: a Secret in the waypoint's namespace holding the client certificate and key
    /// (`tls.crt`/`tls.key`, or `cert`/`key`) and the CA (`ca.crt` or `cacert`, else in the Secret `NAME-cacert`),
    /// instead of the three paths.
    public var credentialName: String?
    public var sni: String?
    public var subjectAltNames: [String]
    public var insecureSkipVerify: Bool
}

/// Everything loaded from one set of manifest files, before compilation. A field added here must be added to
/// `onlyEndpoints` too (EndpointUpdate.swift), or its changes would be applied as endpoint updates.
public struct ConfigSpec: Sendable {
    public var services: [ServiceSpec] = []
    public var endpointSlices: [EndpointSliceSpec] = []
    public var serviceEntries: [ServiceEntrySpec] = []
    public var gateways: [GatewaySpec] = []
    public var httpRoutes: [HTTPRouteSpec] = []
    public var virtualServices: [VirtualServiceSpec] = []
    /// TCPRoutes, read as HTTPRoutes without matches or filters (parents and weighted backendRefs only).
    public var tcpRoutes: [HTTPRouteSpec] = []
    public var authorizationPolicies: [AuthorizationPolicySpec] = []
    public var peerAuthentications: [PeerAuthenticationSpec] = []
    public var requestAuthentications: [RequestAuthenticationSpec] = []
    public var destinationRules: [DestinationRuleSpec] = []
    public var pods: [PodSpec] = []
    public var nodes: [NodeSpec] = []
    public var namespaces: [NamespaceSpec] = []
    public var referenceGrants: [ReferenceGrantSpec] = []
    /// The `istio` ConfigMaps' mesh configs (the root namespace's applies).
    public var meshConfigs: [MeshConfigSpec] = []
    /// Secrets DestinationRules name (`credentialName`).
    public var secrets: [SecretSpec] = []
    /// Non-fatal findings (skipped kinds, ignored fields), one line each.
    public var warnings: [String] = []

    public init() {}

    /// Adds what `other` holds (the objects of another file or API object).
    public mutating func append(_ other: ConfigSpec) {
        Self.join(&services, other.services)
        Self.join(&endpointSlices, other.endpointSlices)
        Self.join(&serviceEntries, other.serviceEntries)
        Self.join(&gateways, other.gateways)
        Self.join(&httpRoutes, other.httpRoutes)
        Self.join(&virtualServices, other.virtualServices)
        Self.join(&tcpRoutes, other.tcpRoutes)
        Self.join(&authorizationPolicies, other.authorizationPolicies)
        Self.join(&peerAuthentications, other.peerAuthentications)
        Self.join(&requestAuthentications, other.requestAuthentications)
        Self.join(&destinationRules, other.destinationRules)
        Self.join(&pods, other.pods)
        Self.join(&nodes, other.nodes)
        Self.join(&namespaces, other.namespaces)
        Self.join(&referenceGrants, other.referenceGrants)
        Self.join(&meshConfigs, other.meshConfigs)
        Self.join(&secrets, other.secrets)
        Self.join(&warnings, other.warnings)
    }

    /// `other` after `list`; an empty `list` takes `other`'s storage instead of copying its elements (a merge of the
    /// API's kinds, each in a field of its own, then copies nothing).
    private static func join<Element>(_ list: inout [Element], _ other: [Element]) {
        if list.isEmpty { list = other } else if !other.isEmpty { list += other }
    }
}

/// `networking.istio.io/v1 VirtualService`: the parts a waypoint applies to its services' HTTP traffic.
public struct VirtualServiceSpec: Sendable {
    /// Istio StringMatch: `exact`, `prefix`, `regex`, or empty (`{}`: present).
    public struct StringMatchSpec: Sendable, Equatable {
        public enum Kind: String, Sendable { case exact, prefix, regex, present }
        public var kind: Kind
        public var value: String
        /// `value` compiled, for `regex`.
        public var regex: Regex?
    }
    /// One `http[].match[]` entry; every condition must hold.
    public struct Match: Sendable {
        public var uri: StringMatchSpec?
        public var ignoreUriCase = false
        public var method: StringMatchSpec?
        public var authority: StringMatchSpec?
        public var headers: [(name: String, match: StringMatchSpec)] = []
        public var withoutHeaders: [(name: String, match: StringMatchSpec)] = []
        public var queryParams: [(name: String, match: StringMatchSpec)] = []
        public var port: Int?
        /// Conditions about the caller's pod that a waypoint cannot see (`sourceLabels`, `sourceNamespace`,
        /// `gateways` other than mesh): the match never holds, and `waypoint check` says so.
        public var unsupported: [String] = []
    }
    /// `route[]` entry: `destination` host/port/subset and its weight.
    public struct Destination: Sendable, Equatable {
        public var host: String
        public var port: Int?
        public var subset: String?
        public var weight: Int
        /// `route[].headers`: applied after the rule's `headers`, to requests sent to this destination.
        public var requestHeaders: HeaderModifier? = nil
        public var responseHeaders: HeaderModifier? = nil
    }
    public struct Retries: Sendable {
        public var attempts: Int
        public var perTryTimeout: Duration?
        public var retryOn: String?
        public var retryRemoteLocalities = false
    }
    public struct Fault: Sendable {
        public var delay: Duration?
        public var delayPercent: Double = 100
        public var abortStatus: Int?
        public var abortPercent: Double = 100
    }
    public struct HTTPRule: Sendable {
        public var name: String?
        public var matches: [Match] = []
        public var route: [Destination] = []
        public var redirect: RequestRedirect?
        public var directResponse: (status: Int, body: [UInt8])?
        /// `rewrite.uri` (replaces the matched prefix, else the whole path) and `rewrite.authority`.
        public var rewriteURI: String?
        /// `rewrite.uriRegexRewrite`: every match of the pattern replaced (replacement in PCRE2 syntax).
        public var rewriteRegex: (regex: Regex, replacement: [UInt8])?
        public var rewriteAuthority: String?
        public var requestHeaders: HeaderModifier?
        public var responseHeaders: HeaderModifier?
        public var timeout: Duration?
        public var retries: Retries?
        /// `mirror` + `mirrorPercentage`, and `mirrors[]`: where copies go, and the share copied (percent).
        public var mirrors: [(destination: Destination, percent: Double)] = []
        public var fault: Fault?
        /// Fields read but not applied: the rule answers 500 rather than route differently than asked.
        public var unsupported: [String] = []
        /// Fields ignored with a warning because routing stays right without them.
        public var ignored: [String] = []
    }
    public var namespace: String
    public var name: String
    public var creationTimestamp: String
    public var hosts: [String]
    /// Empty or containing `mesh`: applies to the services' traffic; naming only gateways: not to a waypoint.
    public var gateways: [String]
    public var http: [HTTPRule]
    /// Kinds of traffic described that a waypoint's HTTP routing does not take from a VirtualService.
    public var ignoredSections: [String]
}
