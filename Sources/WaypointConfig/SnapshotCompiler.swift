import Filters
import HTTPRouter
import JWT
import Regex
import TLS
import WaypointCore

/// Turns a validated `ConfigSpec` into an immutable `Snapshot`: resolves services to endpoints, attaches
/// routes to their parents and sorts rules by precedence. Everything is checked before anything is switched.
///
/// Size: the compilation passes share one working state (`CompileState`, ~680 lines with it); VirtualServices
/// compile in their own file.
public struct SnapshotCompiler {
    /// The namespace that bare service names (`Host: reviews`) resolve in.
    public var namespace: String
    /// The cluster DNS suffix of `name.ns.svc.<domain>`.
    public var clusterDomain = "cluster.local"
    /// Istio's root namespace: its AuthorizationPolicies and PeerAuthentications without selector are mesh-wide.
    public var rootNamespace = "istio-system"
    /// Apply namespace-wide and root-namespace AuthorizationPolicies (no targetRefs) to the waypoint, which
    /// Istio's own waypoints ignore (a namespace default-deny silently does nothing there).
    public var layeredAuthorization = true
    /// DENY and CUSTOM rules also match the request's hardened path (`PolicySet.evaluate`); off: exactly Istio.
    public var hardenedDenyPaths = true
    /// Where the waypoint itself runs (`--locality`): with it, backends with outlier detection prefer
    /// endpoints nearby (Istio's locality load balancing); nil: every endpoint is equally near.
    public var locality: Locality?
    /// This waypoint's Gateway (`--gateway`, in `namespace`) when only the Services bound to it are served, as
    /// Istio decides from `istio.io/use-waypoint` (on the Service, else its Namespace; `none` opts out) and
    /// `istio.io/use-waypoint-namespace`; nil: every Service given is served (files).
    public var gateway: String?
    /// This waypoint's own Gateway name (`--gateway`, in `namespace`), whatever serves: AuthorizationPolicies
    /// whose targetRef is a Gateway, and routes whose parentRef is one, apply only when they name it.
    public var gatewayName = "waypoint"
    /// The key sets fetched so far for RequestAuthentication `jwksUri`s, by URI.
    public var jwks: [String: JSONWebKeySet] = [:]
    /// The addresses resolved so far for ServiceEntry host names (`resolution: DNS`), by lower-case name.
    public var resolvedNames: [String: [String]] = [:]

    public init(namespace: String) { self.namespace = namespace }

    /// Whether a Gateway reference names this waypoint.
    func isOwnGateway(namespace: String, name: String) -> Bool { namespace == self.namespace && name == gatewayName }

    /// Whether `service` sends its traffic to this waypoint (always, without `gateway`): its Gateway's
    /// `istio.io/waypoint-for` takes Services, and the Service (else its Namespace) names it.
    func isBound(_ service: ServiceSpec, namespaces: [String: [String: String]], waypointFor: GatewaySpec.TrafficType) -> Bool {
        guard gateway != nil else { return true }
        return waypointFor.takesServices && names(labels: service.labels, in: service.namespace, namespaces: namespaces)
    }

    /// Whether the workload with `labels` (a Pod's, or a ServiceEntry endpoint's) in `namespace` sends the traffic
    /// addressed to it to this waypoint (always, without `gateway`): Istio's `istio.io/waypoint-for` takes
    /// workloads (`workload` or `all`; the default, `service`, does not), and the Pod (else its Namespace) names it.
    func isBound(
        workload labels: [String: String], in namespace: String, namespaces: [String: [String: String]],
        waypointFor: GatewaySpec.TrafficType
    )
        -> Bool
    {
        guard gateway != nil else { return true }
        return waypointFor.takesWorkloads && names(labels: labels, in: namespace, namespaces: namespaces)
    }

    /// Whether `istio.io/use-waypoint` in `labels`, else on the Namespace, names this waypoint (`none` opts out;
    /// `istio.io/use-waypoint-namespace`, beside the label that applies, for a waypoint in another namespace).
    private func names(labels: [String: String], in objectNamespace: String, namespaces: [String: [String: String]]) -> Bool {
        let own = labels["istio.io/use-waypoint"]
        let namespaceLabels = namespaces[objectNamespace] ?? [:]
        guard let name = own ?? namespaceLabels["istio.io/use-waypoint"], name != "none" else { return false }
        let waypointNamespace = (own != nil ? labels : namespaceLabels)["istio.io/use-waypoint-namespace"] ?? objectNamespace
        return name == gateway && waypointNamespace == namespace
    }

    /// `previous`: the snapshot this one replaces; a backend with the same name and connection-pool settings
    /// keeps its `ClusterLimits`, so what is in flight stays counted (as Envoy keeps a cluster that CDS did
    /// not change), whatever else the reload changed.
    public func compile(_ spec: ConfigSpec, generation: UInt64, previous: Snapshot? = nil) -> Snapshot {
        compileKeepingState(spec, generation: generation, previous: previous).snapshot
    }
}

/// An endpoint reached with other TLS settings (index; -1 plaintext) than its own.
struct EndpointVariant: Hashable {
    var endpoint: Int32
    var tls: Int32
}

/// Working state of one compilation.
struct CompileState {
    var spec: ConfigSpec
    let compiler: SnapshotCompiler
    var clusters: [Cluster] = []
    var endpoints: [SocketAddress] = []
    /// Per endpoint: plaintext, or HBONE (in the mesh) and to whom.
    var endpointTransports: [EndpointTransport] = []
    /// The service accounts `EndpointTransport.hbone` names (within a lineage only added to).
    var peerAccounts: [ServiceAccountName] = []
    var peerAccountIndex: [ServiceAccountName: Int32] = [:]
    /// Per endpoint: its Pod's workload (index into `workloads`; -1: the Pod is not known).
    var endpointWorkloads: [Int32] = []
    /// Every distinct workload behind an endpoint (a Deployment's thousand Pods are one entry).
    var workloads: [WorkloadLabels] = []
    var workloadIndex: [WorkloadLabels: Int32] = [:]
    var endpointIndex: [SocketAddress: Int32] = [:]
    /// Labels of the workload behind each endpoint (from its Pod, or its ServiceEntry endpoint), for subsets.
    var endpointLabels: [Int32: [String: String]] = [:]
    /// Where each endpoint runs, when known.
    var endpointLocality: [Int32: Locality] = [:]
    /// Per endpoint: how many clusters list it (subsets not counted). 0: dead; -1: dead and in `freeEndpoints`,
    /// until a new address takes its index or the next full compile.
    var endpointRefs: [Int32] = []
    /// Indices of dead endpoints, which an endpoint update gives to the next new addresses (the workers see them
    /// among the revised endpoints), so that churn neither grows the tables nor forces full compiles.
    var freeEndpoints: [Int32] = []
    /// Per cluster with DestinationRule subsets: each subset's cluster and the labels it selects.
    var subsets: [Int32: [(cluster: Int32, labels: [String: String])]] = [:]
    /// Endpoints reached another way than their address's own endpoint (a subset's own TLS), by that endpoint
    /// and the TLS settings' index (-1: plaintext). Same address and workload, an index of their own.
    var endpointVariants: [EndpointVariant: Int32] = [:]
    /// See `Snapshot.lineage`.
    var lineage: UInt64 = 0
    /// "ns/name:port" and "host:port" → cluster index.
    var clusterIndex: [String: Int32] = [:]
    var virtualHosts: [VirtualHost<RouteAction>] = []
    var names: [(String, Int)] = []
    var warnings: [String] = []
    var dumpHosts: [JSONValue] = []
    /// HBONE `:authority` → destination: service VIPs and ServiceEntry addresses (they win over workloads').
    var destinations: [SocketAddress: Destination] = [:]
    /// HBONE `:authority` → a workload address's endpoint.
    var workloadAddresses: [SocketAddress: WorkloadAddress] = [:]
    /// During a full build: an address a cluster binds stays a workload's though another does not.
    var building = true
    var tcpRoutes: [UInt64: BackendSet] = [:]
    /// Who each virtual host belongs to: (kind, namespace, name).
    var hostOwners: [(kind: String, namespace: String, name: String)] = []
    /// Per virtual host: (fqdn, name, namespace) for Istio's destination_service labels.
    var services: [(fqdn: String, name: String, namespace: String)] = []
    var authorization: [PolicySet] = []
    var unmatchedHostPolicies = PolicySet.empty
    /// The mesh config's external authorizers, their clusters resolved (CUSTOM policies index them).
    var authorizers: [ExternalAuthorizer] = []
    /// TLS origination settings of DestinationRules (`EndpointTransport.tls` indexes them; nil: unusable, so
    /// connections fail), and which by the Service (`ns/name`) or ServiceEntry host they apply to.
    var upstreamTLS: [UpstreamTLS?] = []
    var upstreamTLSIndex: [String: Int32] = [:]
    var authentication: [RequestAuthenticator?] = []
    var unmatchedHostAuthentication: RequestAuthenticator?
    var strictMTLS: [Bool] = []
    /// Labels by Namespace name (ambient membership, waypoint binding, `allowedRoutes` selectors); an endpoint
    /// update never changes Namespaces.
    let namespaceLabels: [String: [String: String]]
    /// Which traffic this waypoint takes (its own Gateway's `istio.io/waypoint-for`); an endpoint update never
    /// changes Gateways.
    let waypointFor: GatewaySpec.TrafficType

    init(spec: ConfigSpec, compiler: SnapshotCompiler) {
        self.spec = spec
        self.compiler = compiler
        namespaceLabels = Dictionary(spec.namespaces.map { ($0.name, $0.labels) }) { _, last in last }
        waypointFor = spec.gateways.first { compiler.isOwnGateway(namespace: $0.namespace, name: $0.name) }?.waypointFor ?? .service
    }

    /// The endpoints of `members` whose workload carries every label of a DestinationRule subset's `labels`.
    func members(_ members: [Int32], selectedBy labels: [String: String]) -> [Int32] {
        members.filter { endpoint in
            let own = endpointLabels[endpoint] ?? [:]
            return labels.allSatisfy { own[$0.key] == $0.value }
        }
    }

    /// Appends a warning unless the same text is already there (a rule compiled once per port warns once).
    mutating func warnOnce(_ text: String) {
        if !warnings.contains(text) { warnings.append(text) }
    }

    mutating func build() {
        warnAboutVirtualServices()
        buildUpstreamTLS()
        buildServiceClusters()
        buildServiceEntryClusters()
        applyDestinationRules()
        groupByLocality()
        buildGatewayHosts()
        buildServiceHosts()
        buildServiceEntryHosts()
        building = false
        buildExternalAuthorizers()
        buildAuthorization()
        buildRequestAuthentication()
        buildPeerAuthentication()
    }

    /// What a DestinationRule's host names: a Service (`ns/name`) or a ServiceEntry host; nil when neither.
    func target(of rule: DestinationRuleSpec) -> String? {
        let parts = rule.host.split(separator: ".")
        if let service = spec.services.first(where: { s in
            let fqdn = "\(s.name).\(s.namespace).svc.\(compiler.clusterDomain)"
            return rule.host == fqdn || rule.host == "\(s.name).\(s.namespace)" || rule.host == "\(s.name).\(s.namespace).svc"
                || (parts.count == 1 && s.name == rule.host && s.namespace == rule.namespace)
        }) {
            return "\(service.namespace)/\(service.name)"
        }
        return spec.serviceEntries.contains(where: { $0.hosts.contains(rule.host) }) ? rule.host : nil
    }

    /// DestinationRules' TLS origination: a client context per rule, built here (off the workers) from its PEM
    /// files, the system's trust store without `caCertificates`. A file that cannot be used is a warning and
    /// the rule's connections fail (503), never plaintext.
    /// A port's `portLevelSettings` TLS is keyed `target:port` (-1: none originated there, whatever the rule says).
    mutating func buildUpstreamTLS() {
        for rule in spec.destinationRules {
            guard let target = target(of: rule) else { continue }
            if let tls = rule.tls, upstreamTLSIndex[target] == nil { addUpstreamTLS(tls, rule: rule, key: target) }
            for (port, policy) in rule.portLevel {
                if let tls = policy.tls, upstreamTLSIndex["\(target):\(port)"] == nil {
                    addUpstreamTLS(tls, rule: rule, key: "\(target):\(port)")
                }
            }
        }
    }

    /// The TLS origination of `rule` (or of one of its ports) under `key`.
    mutating func addUpstreamTLS(_ tls: TLSOrigination, rule: DestinationRuleSpec, key: String) {
        guard tls.mode != .disable else {
            upstreamTLSIndex[key] = -1
            return
        }
        upstreamTLSIndex[key] = Int32(upstreamTLS.count)
        let label = "DestinationRule \(rule.namespace)/\(rule.name)"
        let (trust, certificate, privateKey, noTrust, noClient) = credentials(of: tls)
        guard trust != nil || tls.insecureSkipVerify, tls.mode == .simple || (certificate != nil && privateKey != nil) else {
            warnings.append("\(label): trafficPolicy.tls: \(trust == nil ? noTrust : noClient): connections fail")
            upstreamTLS.append(nil)
            return
        }
        do {
            let context = try TLSContext(
                httpsClientTrusting: trust ?? "", certificate: certificate, key: privateKey, verifyPeer: !tls.insecureSkipVerify,
                source: "\(label) trafficPolicy.tls")
            upstreamTLS.append(
                UpstreamTLS(
                    context: context, serverName: tls.sni ?? serverName(of: rule), subjectAltNames: tls.subjectAltNames,
                    verify: !tls.insecureSkipVerify))
        } catch {
            warnings.append("\(label): \(error): connections fail")
            upstreamTLS.append(nil)
        }
    }

    /// The PEM texts of a TLS origination: its files (regular files only: a DestinationRule from the API must not
    /// make the main thread read /dev/zero or a FIFO), or its `credentialName` Secret in the waypoint's namespace
    /// (the CA from the Secret `NAME-cacert` first, as Istio's SDS looks); and what to say when the CA, or the
    /// client certificate and key, are missing.
    func credentials(
        of tls: TLSOrigination
    ) -> (trust: String?, certificate: String?, key: String?, noTrust: String, noClient: String) {
        guard let name = tls.credentialName else {
            let caPath = tls.caCertificates ?? "/etc/ssl/certs/ca-certificates.crt"
            return (
                readRegularTextFile(caPath), tls.clientCertificate.flatMap { readRegularTextFile($0) },
                tls.privateKey.flatMap { readRegularTextFile($0) }, "cannot read \(caPath)", "cannot read the client certificate or key"
            )
        }
        let own = spec.secrets.filter { $0.namespace == compiler.namespace }
        let described = "credentialName: Secret \(compiler.namespace)/\(name)"
        guard let secret = own.first(where: { $0.name == name }) else {
            return (nil, nil, nil, "\(described) not found", "\(described) not found")
        }
        let caSecret = own.first { $0.name == "\(name)-cacert" }
        return (
            caSecret?.text("ca.crt", "cacert") ?? secret.text("ca.crt", "cacert"), secret.text("tls.crt", "cert"),
            secret.text("tls.key", "key"), "\(described) has no ca.crt or cacert (nor has a Secret \(name)-cacert)",
            "\(described) has no tls.crt and tls.key (or cert and key)"
        )
    }

    /// The SNI (and the name the certificate must carry) without `sni`: the host the rule names, a Service's as its
    /// full name (`name.namespace.svc.<domain>`, what a short `host: name` means).
    func serverName(of rule: DestinationRuleSpec) -> String {
        guard let target = target(of: rule), let slash = target.firstIndex(of: "/") else { return rule.host }
        return "\(target[target.index(after: slash)...]).\(target[..<slash]).svc.\(compiler.clusterDomain)"
    }

    /// The TLS origination for a port of `target` (a Service `ns/name` or a ServiceEntry host), nil for none.
    func upstreamTLS(for target: String, port: Int) -> Int32? {
        guard let index = upstreamTLSIndex["\(target):\(port)"] ?? upstreamTLSIndex[target], index >= 0 else { return nil }
        return index
    }

    /// DestinationRule traffic policies onto the clusters of the host they name (every port).
    mutating func applyDestinationRules() {
        for rule in spec.destinationRules {
            for field in rule.ignoredFields {
                warnings.append("DestinationRule \(rule.namespace)/\(rule.name): trafficPolicy \(field) is not applied yet")
            }
            guard let target = target(of: rule) else {
                warnings.append(
                    "DestinationRule \(rule.namespace)/\(rule.name): host \(rule.host) is not a known service or ServiceEntry host: ignored"
                )
                continue
            }
            let prefix = "\(target):"
            let matching = clusters.indices.filter { i in clusters[i].name.hasPrefix(prefix) && !clusters[i].name.contains("|") }
            for i in matching {
                let port = Int(clusters[i].name.dropFirst(prefix.count))
                let policy = rule.policy(port: port)
                if let outlier = policy.outlierDetection { clusters[i].outlierDetection = outlier }
                if let pool = policy.connectionPool { clusters[i].connectionPool = pool }
                if let balancer = policy.loadBalancer { setLoadBalancer(balancer, of: i) }
                // Each subset is a cluster of its own (`base|subset`) with the endpoints whose labels match, and
                // its own traffic policy over the rule's.
                for subset in rule.subsets {
                    // A passthrough entry's subsets pass through too: its addresses carry no labels.
                    var members =
                        clusters[i].originalDestination
                        ? clusters[i].endpoints : self.members(clusters[i].endpoints, selectedBy: subset.labels)
                    let own = rule.policy(port: port, subset: subset)
                    if own.tls != policy.tls {
                        var tls: Int32 = -1
                        if let settings = own.tls {
                            // Subsets of a port with the same settings share them (and their endpoints' variants).
                            let key = "\(clusters[i].name)|\(settings)"
                            if upstreamTLSIndex[key] == nil { addUpstreamTLS(settings, rule: rule, key: key) }
                            tls = upstreamTLSIndex[key]!
                        }
                        members = members.map { variant(of: $0, tls: tls) }
                    }
                    var cluster = Cluster(name: "\(clusters[i].name)|\(subset.name)", endpoints: members)
                    cluster.originalDestination = clusters[i].originalDestination
                    cluster.outlierDetection = own.outlierDetection
                    cluster.connectionPool = own.connectionPool
                    clusterIndex[cluster.name] = Int32(clusters.count)
                    subsets[Int32(i), default: []].append((Int32(clusters.count), subset.labels))
                    clusters.append(cluster)
                    setLoadBalancer(own.loadBalancer ?? .leastRequest, of: clusters.count - 1)
                    if members.isEmpty {
                        warnOnce(
                            "DestinationRule \(rule.namespace)/\(rule.name): subset \(subset.name) selects no ready endpoint of \(clusters[i].name)"
                        )
                    }
                }
            }
        }
    }

    /// Istio's locality load balancing, which takes effect where a backend has outlier detection: its
    /// endpoints in tiers by nearness to the waypoint (same subzone, zone, region, elsewhere); the balancer
    /// then prefers the nearest tier while it is healthy enough. Not for consistent hashing (one ring).
    mutating func groupByLocality() {
        for i in clusters.indices { groupByLocality(i) }
    }

    mutating func groupByLocality(_ i: Int) {
        clusters[i].tiers = nil
        guard let own = compiler.locality, clusters[i].outlierDetection != nil else { return }
        if case .consistentHash = clusters[i].loadBalancer { return }
        var tiers: [[Int32]] = Array(repeating: [], count: 4)
        for endpoint in clusters[i].endpoints {
            tiers[own.priority(of: endpointLocality[endpoint] ?? Locality())].append(endpoint)
        }
        tiers.removeAll { $0.isEmpty }
        if tiers.count > 1 { clusters[i].tiers = tiers }
    }

    mutating func setLoadBalancer(_ balancer: LoadBalancer, of cluster: Int) {
        clusters[cluster].loadBalancer = balancer
        if case .consistentHash = balancer {
            clusters[cluster].ring = HashRing(memberKeys: clusters[cluster].endpoints.map { endpoints[Int($0)].description })
        } else {
            clusters[cluster].ring = nil
        }
    }

    // MARK: - Security

    /// Which policies apply to which virtual host. Istio's waypoints apply policies with `targetRefs` to the
    /// waypoint's Gateway (all its traffic), a Service or a ServiceEntry; with layering on, policies without
    /// targetRefs apply to their namespace's services (and the root namespace's to everything).
    /// Which virtual hosts a security policy applies to.
    enum PolicyScope {
        case all
        case namespace(String)
        case objects(Set<String>)

        func covers(_ owner: (kind: String, namespace: String, name: String)) -> Bool {
            switch self {
            case .all: return true
            case .namespace(let ns): return owner.kind != "Gateway" && owner.namespace == ns
            case .objects(let set): return set.contains("\(owner.kind)/\(owner.namespace)/\(owner.name)")
            }
        }
    }

    /// Where a policy (AuthorizationPolicy, RequestAuthentication) applies, as Istio's waypoints decide: its
    /// targetRefs (this waypoint's Gateway: everything; Services and ServiceEntries: theirs); without any, a
    /// workload selector never selects a waypoint and a namespace-wide policy applies only with
    /// `--layered-authorization` (root namespace: mesh-wide). nil: nowhere here (with a warning).
    mutating func scope(
        of label: String, namespace: String, targetRefs: [AuthorizationPolicySpec.TargetRef], hasSelector: Bool
    ) -> PolicyScope? {
        if targetRefs.isEmpty {
            if hasSelector {
                warnings.append("\(label): a workload selector selects pods, not a waypoint: ignored here")
            } else if !compiler.layeredAuthorization {
                warnings.append("\(label): no targetRefs: ignored (as by Istio's waypoints); --layered-authorization applies it")
            } else {
                return namespace == compiler.rootNamespace ? .all : .namespace(namespace)
            }
            return nil
        }
        var objects: Set<String> = []
        var all = false
        for ref in targetRefs {
            switch (ref.group, ref.kind) {
            case ("gateway.networking.k8s.io", "Gateway"):
                // The waypoint's own Gateway, whether or not its object was read; another Gateway's policies
                // are another waypoint's.
                if compiler.isOwnGateway(namespace: namespace, name: ref.name) {
                    all = true
                } else {
                    warnings.append(
                        "\(label): targetRef Gateway \(namespace)/\(ref.name) is not this waypoint (\(compiler.namespace)/\(compiler.gatewayName)): that reference applies to nothing here"
                    )
                }
            case ("", "Service"), ("core", "Service"):
                objects.insert("Service/\(namespace)/\(ref.name)")
            case ("networking.istio.io", "ServiceEntry"):
                objects.insert("ServiceEntry/\(namespace)/\(ref.name)")
            default:
                warnings.append(
                    "\(label): targetRef \(ref.group)/\(ref.kind) \(ref.name) is not a Gateway, Service or ServiceEntry: ignored")
            }
        }
        return all ? .all : .objects(objects)
    }

    mutating func buildAuthorization() {
        var scoped: [(AuthorizationPolicy, PolicyScope)] = []
        for p in spec.authorizationPolicies {
            let label = "AuthorizationPolicy \(p.namespace)/\(p.name)"
            for key in p.unsupportedKeys {
                warnings.append(
                    "\(label): condition key \(key) is not supported: it never matches in ALLOW rules and always matches in DENY rules")
            }
            var policy = p.policy
            if policy.action == .custom {
                if let provider = authorizers.firstIndex(where: { $0.name == p.provider }) {
                    policy = AuthorizationPolicy(name: policy.name, action: .custom, rules: policy.rules, provider: Int32(provider))
                } else {
                    // Fail closed, as Istio does for a CUSTOM policy it cannot build.
                    warnings.append(
                        "\(label): extension provider \"\(p.provider ?? "")\" is not in the mesh config's extensionProviders (ConfigMap \(compiler.rootNamespace)/\(MeshConfigParser.configMapName)): the traffic it selects is denied"
                    )
                    policy = AuthorizationPolicy(name: policy.name, action: .deny, rules: policy.rules)
                }
            }
            if let scope = scope(of: label, namespace: p.namespace, targetRefs: p.targetRefs, hasSelector: p.hasSelector) {
                scoped.append((policy, scope))
            }
        }
        authorization = hostOwners.map { owner in
            PolicySet(policies: scoped.compactMap { $1.covers(owner) ? $0 : nil }, hardenedDenyPaths: compiler.hardenedDenyPaths)
        }
        unmatchedHostPolicies = PolicySet(
            policies: scoped.compactMap { policy, scope in
                if case .all = scope { return policy } else { return nil }
            }, hardenedDenyPaths: compiler.hardenedDenyPaths)
    }

    /// The root namespace's mesh config's ext_authz providers, each sent to the cluster of the Service port it
    /// names: `name.namespace.svc.<domain>` (optionally `namespace/` first) is that Service, another host a
    /// ServiceEntry's. An unknown one is kept with no cluster: its checks fail (`statusOnError`, or `failOpen`).
    mutating func buildExternalAuthorizers() {
        guard let mesh = spec.meshConfigs.last(where: { $0.namespace == compiler.rootNamespace }) else { return }
        let suffix = ".svc.\(compiler.clusterDomain)"
        authorizers = mesh.authorizers.map { authorizer in
            var authorizer = authorizer
            let host = String(authorizer.service.split(separator: "/", maxSplits: 1).last ?? "").lowercased()
            var key = "\(host):\(authorizer.port)"
            if host.hasSuffix(suffix) {
                let parts = host.dropLast(suffix.count).split(separator: ".")
                if parts.count == 2 { key = "\(parts[1])/\(parts[0]):\(authorizer.port)" }
            }
            if let cluster = clusterIndex[key] {
                authorizer.cluster = cluster
            } else {
                warnings.append(
                    "mesh config \(mesh.namespace)/\(mesh.name): extension provider \(authorizer.name): service \(authorizer.service) port \(authorizer.port) is not known: its checks fail (\(authorizer.failOpen ? "failOpen: allowed" : "denied \(authorizer.statusOnError)"))"
                )
            }
            return authorizer
        }
    }

    /// The JWT rules per virtual host (RequestAuthentication, scoped as AuthorizationPolicies are). A rule whose
    /// `jwksUri` was not fetched yet has no keys: its tokens fail (401) and requests without one pass, as under
    /// Istio while istiod cannot fetch the keys.
    mutating func buildRequestAuthentication() {
        var scoped: [(JWTRule, PolicyScope)] = []
        for p in spec.requestAuthentications {
            let label = "RequestAuthentication \(p.namespace)/\(p.name)"
            guard let scope = scope(of: label, namespace: p.namespace, targetRefs: p.targetRefs, hasSelector: p.hasSelector) else {
                continue
            }
            for rule in p.rules {
                let keys: JSONWebKeySet
                switch rule.jwks {
                case .inline(let set): keys = set
                case .uri(let uri):
                    if let fetched = compiler.jwks[uri] {
                        keys = fetched
                    } else {
                        keys = .none
                        warnings.append(
                            "\(label): the keys of issuer \(rule.issuer) are not fetched yet from \(uri): its tokens are refused")
                    }
                }
                var compiled = JWTRule(issuer: rule.issuer, audiences: rule.audiences, keys: keys, locations: rule.locations)
                compiled.forwardOriginalToken = rule.forwardOriginalToken
                compiled.outputPayloadToHeader = rule.outputPayloadToHeader
                compiled.outputClaimToHeaders = rule.outputClaimToHeaders
                scoped.append((compiled, scope))
            }
        }
        func authenticator(_ rules: [JWTRule]) -> RequestAuthenticator? { rules.isEmpty ? nil : RequestAuthenticator(rules: rules) }
        authentication = hostOwners.map { owner in authenticator(scoped.compactMap { $1.covers(owner) ? $0 : nil }) }
        unmatchedHostAuthentication = authenticator(
            scoped.compactMap { rule, scope in
                if case .all = scope { return rule } else { return nil }
            })
    }

    /// STRICT per virtual host: the namespace's PeerAuthentication, else the root namespace's (mesh-wide).
    mutating func buildPeerAuthentication() {
        var byNamespace: [String: PeerAuthenticationSpec.Mode] = [:]
        for p in spec.peerAuthentications {
            let label = "PeerAuthentication \(p.namespace)/\(p.name)"
            if p.hasSelector { warnings.append("\(label): a workload selector selects pods, not a waypoint: ignored here"); continue }
            if p.hasPortLevelMTLS {
                warnings.append("\(label): portLevelMtls is not supported: the namespace-wide mode applies to every port")
            }
            if p.mode == .disable { warnings.append("\(label): DISABLE is not supported in ambient mode: treated as PERMISSIVE") }
            byNamespace[p.namespace] = p.mode
        }
        let mesh = byNamespace[compiler.rootNamespace] ?? .unset
        strictMTLS = hostOwners.map { owner in
            guard owner.kind != "Gateway" else { return mesh == .strict }
            let mode = byNamespace[owner.namespace] ?? .unset
            return mode == .strict || (mode == .unset && mesh == .strict)
        }
    }

    // MARK: - Clusters

    /// The index of endpoint `ip:port`, added on first sight. An address listed twice is reached by HBONE if either
    /// listing says so, with the identity one of them knows.
    mutating func endpoint(_ ip: String, _ port: Int, transport: EndpointTransport) -> Int32? {
        guard let address = SocketAddress(ip: ip, port: UInt16(port)) else { return nil }
        if let index = endpointIndex[address] {
            switch (endpointTransports[Int(index)], transport) {
            case (.plaintext, .hbone), (.plaintext, .tls): endpointTransports[Int(index)] = transport
            case (.hbone(-1), .hbone(let peer)) where peer >= 0: endpointTransports[Int(index)] = transport
            default: break
            }
            return index
        }
        if let free = freeEndpoints.popLast() {
            let i = Int(free)
            (endpoints[i], endpointTransports[i], endpointWorkloads[i], endpointRefs[i]) = (address, transport, -1, 0)
            endpointIndex[address] = free
            return free
        }
        endpoints.append(address)
        endpointTransports.append(transport)
        endpointWorkloads.append(-1)
        endpointRefs.append(0)
        endpointIndex[address] = Int32(endpoints.count - 1)
        return Int32(endpoints.count - 1)
    }

    /// `endpoint` reached with the TLS settings `tls` (-1: plaintext) rather than its own way: itself when that is
    /// its way already or it is in the mesh (HBONE), else a variant endpoint with the same address and workload.
    mutating func variant(of endpoint: Int32, tls: Int32) -> Int32 {
        let transport: EndpointTransport = tls >= 0 ? .tls(tls) : .plaintext
        let own = endpointTransports[Int(endpoint)]
        guard !own.isHBONE, own != transport else { return endpoint }
        let key = EndpointVariant(endpoint: endpoint, tls: tls)
        if let known = endpointVariants[key] { return known }
        let index = Int32(endpoints.count)
        endpoints.append(endpoints[Int(endpoint)])
        endpointTransports.append(transport)
        endpointWorkloads.append(endpointWorkloads[Int(endpoint)])
        endpointRefs.append(1)
        endpointLabels[index] = endpointLabels[endpoint]
        endpointLocality[index] = endpointLocality[endpoint]
        endpointVariants[key] = index
        return index
    }

    /// The index of `labels` in `workloads`, added on first sight.
    mutating func workload(_ labels: WorkloadLabels) -> Int32 {
        if let index = workloadIndex[labels] { return index }
        workloads.append(labels)
        workloadIndex[labels] = Int32(workloads.count - 1)
        return Int32(workloads.count - 1)
    }

    /// Tunnels to `endpoint`'s address are no longer taken (its Pod stopped naming this waypoint; an endpoint
    /// update: a full build starts without any).
    mutating func dropWorkload(_ endpoint: Int32) {
        let address = endpoints[Int(endpoint)]
        if !building, workloadAddresses[address]?.endpoint == endpoint { workloadAddresses[address] = nil }
    }

    mutating func addWorkload(_ endpoint: Int32, _ innerProtocol: InnerProtocol) {
        let address = endpoints[Int(endpoint)]
        guard workloadAddresses[address] == nil else { return }
        workloadAddresses[address] = WorkloadAddress(endpoint: endpoint, innerProtocol: innerProtocol)
    }

    /// How a Service's endpoint is reached, as Istio decides ambient membership: a Pod labelled
    /// `istio.io/dataplane-mode: ambient`, or in a namespace so labelled and not opted out with `none`, is in the
    /// mesh and reached by HBONE, its ztunnel presenting the Pod's service account; so is any endpoint of a slice
    /// annotated `networking.istio.io/tunnel: http` (file mode). Everything else is plaintext.
    static func meshPeer(of pod: PodSpec?, namespaceLabels: [String: [String: String]], annotated: Bool) -> MeshPeer? {
        let key = "istio.io/dataplane-mode"
        guard let pod else { return annotated ? .any : nil }
        let mode = pod.labels[key] ?? namespaceLabels[pod.namespace]?[key]
        guard (pod.labels[key] != "none" && mode == "ambient") || annotated else { return nil }
        return .account(ServiceAccountName(namespace: pod.namespace, name: pod.serviceAccount))
    }

    /// Whom an endpoint in the mesh answers as: its Pod's service account, or, the Pod not known, any identity.
    enum MeshPeer: Equatable {
        case any
        case account(ServiceAccountName)
    }

    /// The transport to a mesh endpoint: HBONE to `peer`, interned in `peerAccounts`.
    mutating func hbone(to peer: MeshPeer) -> EndpointTransport {
        guard case .account(let name) = peer else { return .hbone(peer: -1) }
        if let index = peerAccountIndex[name] { return .hbone(peer: index) }
        peerAccounts.append(name)
        peerAccountIndex[name] = Int32(peerAccounts.count - 1)
        return .hbone(peer: Int32(peerAccounts.count - 1))
    }

    /// A Service port's or ServiceEntry host port's cluster; its members count as listed (subsets do not).
    mutating func addCluster(_ name: String, _ members: [Int32]) {
        clusterIndex[name] = Int32(clusters.count)
        clusters.append(Cluster(name: name, endpoints: members))
        for endpoint in members { endpointRefs[Int(endpoint)] += 1 }
    }

    mutating func buildServiceClusters() {
        let lookups = EndpointLookups(spec)
        for service in spec.services {
            for port in service.ports {
                addCluster("\(service.namespace)/\(service.name):\(port.port)", members(of: service, port: port, lookups))
            }
        }
    }

    /// The ready endpoints of a Service port, added to `endpoints` on first sight, with what their Pods say
    /// (labels, workload, locality).
    mutating func members(of service: ServiceSpec, port: ServicePortSpec, _ lookups: EndpointLookups) -> [Int32] {
        var members: [Int32] = []
        let tls = upstreamTLS(for: "\(service.namespace)/\(service.name)", port: port.port)
        for slice in lookups.slicesByService[service.key] ?? [] {
            // EndpointSlice ports carry the service port's name; a numeric targetPort is the fallback.
            let targetPort: Int?
            if let named = slice.ports.first(where: { $0.name == port.name }) {
                targetPort = named.port
            } else if case .number(let n) = port.targetPort {
                targetPort = n
            } else {
                targetPort = nil
            }
            guard let targetPort else { continue }
            for endpoint in slice.endpoints where endpoint.ready {
                for ip in endpoint.addresses {
                    let pod = endpoint.pod.flatMap { lookups.podsByName[ObjectKey(slice.namespace, $0)] } ?? lookups.podsByIP[ip]
                    var transport =
                        Self.meshPeer(of: pod, namespaceLabels: namespaceLabels, annotated: slice.tunnel).map { hbone(to: $0) }
                        ?? .plaintext
                    if let tls, transport == .plaintext { transport = .tls(tls) }  // a mesh endpoint keeps HBONE
                    guard let index = self.endpoint(ip, targetPort, transport: transport) else { continue }
                    // Written only when they change: these tables are shared with the snapshot serving now, and a
                    // write to one copies it whole (an endpoint update touches a few of 10,000 endpoints).
                    if let pod {
                        if endpointLabels[index] != pod.labels { endpointLabels[index] = pod.labels }
                        let workload = workload(pod.workload)
                        if endpointWorkloads[Int(index)] != workload { endpointWorkloads[Int(index)] = workload }
                    }
                    // Istio's order: the Pod's `istio-locality` label, its Node's topology labels, the slice's zone.
                    if let locality = pod?.labels["istio-locality"].flatMap({ Locality($0, separator: ".") })
                        ?? endpoint.node.flatMap({ lookups.nodeLocality[$0] }) ?? endpoint.zone.map({ Locality(zone: $0) }),
                        endpointLocality[index] != locality
                    {
                        endpointLocality[index] = locality
                    }
                    if !members.contains(index) { members.append(index) }
                    if compiler.isBound(
                        workload: pod?.labels ?? [:], in: slice.namespace, namespaces: namespaceLabels, waypointFor: waypointFor)
                    {
                        addWorkload(index, InnerProtocol(appProtocol: port.appProtocol, portName: port.name))
                    } else {
                        dropWorkload(index)
                    }
                }
            }
        }
        return members
    }

    mutating func buildServiceEntryClusters() {
        for entry in spec.serviceEntries {
            // With DNS resolution, each named endpoint (or each host, without endpoints) stands for the addresses
            // its name resolved to (the first only for DNS_ROUND_ROBIN); nothing until the first answer.
            var endpoints = entry.endpoints
            if entry.resolution == .none {
                // Passthrough: each address is an endpoint of its own, reached by tunnels that name it.
                endpoints = entry.addresses.map { ServiceEntrySpec.Endpoint(address: $0, ports: [:], labels: [:]) }
            } else if entry.resolution.resolvesNames {
                let named =
                    entry.endpoints.isEmpty
                    ? entry.namesToResolve.map { ServiceEntrySpec.Endpoint(address: $0, ports: [:], labels: [:]) } : endpoints
                endpoints = named.flatMap { endpoint in
                    guard SocketAddress(ip: endpoint.address, port: 0) == nil else { return [endpoint] }
                    let resolved = compiler.resolvedNames[endpoint.address.lowercased()] ?? []
                    return resolved.prefix(entry.resolution == .dnsRoundRobin ? 1 : resolved.count).map { ip in
                        var copy = endpoint
                        copy.address = ip
                        return copy
                    }
                }
            }
            for port in entry.ports {
                var members: [Int32] = []
                var tls: Int32? = nil
                for host in entry.hosts where tls == nil { tls = upstreamTLS(for: host, port: port.number) }
                for endpoint in endpoints {
                    let target = endpoint.ports[port.name] ?? port.targetPort ?? port.number
                    let transport: EndpointTransport =
                        endpoint.labels[EndpointSliceSpec.tunnelKey] == "http" ? .hbone(peer: -1) : tls.map { .tls($0) } ?? .plaintext
                    guard let index = self.endpoint(endpoint.address, target, transport: transport) else { continue }
                    endpointLabels[index] = endpoint.labels
                    if let locality = endpoint.locality { endpointLocality[index] = locality }
                    if !members.contains(index) { members.append(index) }
                    if entry.resolution != .none,
                        compiler.isBound(
                            workload: endpoint.labels, in: entry.namespace, namespaces: namespaceLabels, waypointFor: waypointFor)
                    {
                        addWorkload(index, InnerProtocol(appProtocol: port.proto, portName: port.name))
                    }
                }
                if endpoints.isEmpty {
                    switch entry.resolution {
                    case .dns, .dnsRoundRobin:
                        warnOnce(
                            "ServiceEntry \(entry.namespace)/\(entry.name): \(entry.namesToResolve.joined(separator: ", ")) resolved to no address yet; requests get 503"
                        )
                    case .none:
                        warnOnce(
                            "ServiceEntry \(entry.namespace)/\(entry.name): resolution NONE without addresses: no tunnel names it, so requests routed to it get 503"
                        )
                    case .static:
                        warnOnce("ServiceEntry \(entry.namespace)/\(entry.name): no endpoints; requests get 503")
                    }
                }
                for host in entry.hosts where clusterIndex["\(host):\(port.number)"] == nil {
                    addCluster("\(host):\(port.number)", members)
                    clusters[clusters.count - 1].originalDestination = entry.resolution == .none
                }
            }
        }
    }

    // MARK: - Backends

    /// Resolves a backendRef of the route `route` (`namespace/name`); -1 (with a warning) when it names nothing or
    /// another namespace's Service that no ReferenceGrant there opens to the route, so requests picking it get 500.
    mutating func resolve(_ ref: HTTPRouteSpec.BackendRef, route: String, kind: String = "HTTPRoute") -> Int32 {
        var key: String? = nil
        let routeNamespace = String(route.prefix { $0 != "/" })
        if ref.kind == "Service" && ReferenceGrantSpec.sameGroup(ref.group, ""), ref.namespace != routeNamespace,
            !spec.referenceGrants.contains(where: {
                $0.namespace == ref.namespace
                    && $0.permits(fromKind: kind, fromNamespace: routeNamespace, toGroup: "", toKind: "Service", toName: ref.name)
            })
        {
            warnings.append(
                "\(kind) \(route): backendRef Service \(ref.namespace)/\(ref.name) is in another namespace and no ReferenceGrant there allows it (RefNotPermitted); requests routed to it get 500"
            )
            return -1
        }
        if ref.kind == "Service" && (ref.group == "" || ref.group == "core") {
            if let service = spec.services.first(where: { $0.namespace == ref.namespace && $0.name == ref.name }) {
                let port = ref.port ?? (service.ports.count == 1 ? service.ports[0].port : nil)
                if let port { key = "\(ref.namespace)/\(ref.name):\(port)" }
            }
        } else if ref.kind == "Hostname" && ref.group == "networking.istio.io", let port = ref.port {
            key = "\(ref.name.lowercased()):\(port)"
        }
        if let key, let index = clusterIndex[key] { return index }
        warnings.append(
            "\(kind) \(route): backendRef \(ref.kind) \(ref.namespace)/\(ref.name)\(ref.port.map { ":\($0)" } ?? "") not found (ResolvedRefs=False); requests routed to it get 500"
        )
        return -1
    }

    mutating func action(for rule: HTTPRouteSpec.Rule, route: String, kind: String) -> RouteAction {
        if let redirect = rule.redirect { return .redirect(redirect) }
        guard !rule.backendRefs.isEmpty else { return .reply(.invalidBackend) }
        if !rule.unsupportedFilters.isEmpty {
            warnings.append(
                "\(kind) \(route): filter \(rule.unsupportedFilters.joined(separator: ", ")) is not supported yet: requests matching the rule get 500"
            )
            return .reply(.invalidBackend)
        }
        var weighted: [WeightedCluster] = []
        for ref in rule.backendRefs {
            weighted.append(WeightedCluster(cluster: resolve(ref, route: route, kind: kind), weight: UInt32(ref.weight)))
        }
        let total = weighted.reduce(UInt32(0)) { $0 + $1.weight }
        guard total > 0 else { return .reply(.invalidBackend) }  // all weights zero
        var policy = ForwardPolicy.standard
        if rule.retry != nil || rule.requestTimeout != nil || rule.backendRequestTimeout != nil || rule.requestHeaders != nil
            || rule.responseHeaders != nil || rule.rewrite != nil || !rule.mirrors.isEmpty
        {
            let mirrors = rule.mirrors.map { (cluster: resolve($0.backend, route: route, kind: kind), percent: $0.percent) }
            policy = ForwardPolicy(
                retry: rule.retry.map { .gatewayAPI(codes: $0.codes, attempts: $0.attempts, backoff: $0.backoff) },
                requestTimeout: rule.requestTimeout, perTryTimeout: rule.backendRequestTimeout,
                requestHeaders: rule.requestHeaders, responseHeaders: rule.responseHeaders, rewrite: rule.rewrite,
                mirrors: mirrors)
        }
        for (i, ref) in rule.backendRefs.enumerated() where ref.requestHeaders != nil || ref.responseHeaders != nil {
            weighted[i].policy = policy.addingHeaders(request: ref.requestHeaders, response: ref.responseHeaders)
        }
        return .forward(BackendSet(clusters: weighted, totalWeight: total, route: route, policy: policy))
    }

    mutating func rules(from routes: [HTTPRouteSpec]) -> [RouteRule<RouteAction>] {
        var result: [RouteRule<RouteAction>] = []
        for route in routes {
            let routeName = "\(route.namespace)/\(route.name)"
            for (ruleIndex, rule) in route.rules.enumerated() {
                let origin = RuleOrigin(route: routeName, ruleIndex: ruleIndex, creationTimestamp: route.creationTimestamp)
                let matches = rule.matches.isEmpty ? [HTTPRouteSpec.MatchSpec(path: nil, headers: [], method: nil)] : rule.matches
                for match in matches {
                    // A ReplacePrefixMatch replaces the prefix this match matched: the action is per match.
                    var perMatch = rule
                    let prefix = match.path.map { Array(PathMatch.elementPrefixBytes($0.value)) } ?? [0x2F]
                    if case .replacePrefixMatch(let replacement, _)? = rule.rewrite?.path {
                        perMatch.rewrite?.path = .replacePrefixMatch(replacement, matched: prefix)
                    }
                    if case .replacePrefixMatch(let replacement, _)? = rule.redirect?.path {
                        perMatch.redirect?.path = .replacePrefixMatch(replacement, matched: prefix)
                    }
                    result.append(
                        RouteRule(
                            match: Self.compile(match), action: action(for: perMatch, route: routeName, kind: route.kind), origin: origin))
                }
            }
        }
        return result
    }

    /// Regular expressions come compiled from the parser (a spec without one, made by hand, matches its pattern
    /// literally: never more than it says).
    static func compile(_ match: HTTPRouteSpec.MatchSpec) -> RequestMatch {
        var path = PathMatch.prefix([0x2F])
        if let p = match.path {
            switch p.type {
            case "Exact": path = .exact(Array(p.value.utf8))
            case "RegularExpression": path = p.regex.map(PathMatch.regex) ?? .exact(Array(p.value.utf8))
            default: path = .elementPrefix(p.value)
            }
        }
        let headers = match.headers.map { h in
            HeaderMatch(name: h.name, value: h.regex.map(ValueMatch.regex) ?? .exact(Array(h.value.utf8)))
        }
        let queryParams = match.queryParams.map { q in
            QueryMatch(name: q.name, value: q.regex.map(ValueMatch.regex) ?? .exact(Array(q.value.utf8)))
        }
        return RequestMatch(path: path, method: match.method, headers: headers, queryParams: queryParams)
    }

    // MARK: - Virtual hosts

    mutating func addHost(_ host: VirtualHost<RouteAction>, names hostNames: [String], kind: String, name: String) {
        virtualHosts.append(host)
        let parts = name.split(separator: "/", maxSplits: 1)
        hostOwners.append(parts.count == 2 ? (kind, String(parts[0]), String(parts[1])) : (kind, "", name))
        switch kind {
        case "Service": services.append(("\(parts[1]).\(parts[0]).svc.\(compiler.clusterDomain)", String(parts[1]), String(parts[0])))
        case "ServiceEntry": services.append((hostNames.first ?? name, hostNames.first ?? name, String(parts[0])))
        default: services.append((name, name, "unknown"))
        }
        for n in hostNames { names.append((n, virtualHosts.count - 1)) }
        dumpHosts.append(
            .object([
                ("kind", .string(kind)), ("name", .string(name)), ("hostnames", .array(hostNames.map(JSONValue.string))),
                (
                    "ports",
                    .array(
                        host.ports.map { entry in
                            .object([
                                ("port", .int(Int(entry.port))), ("rules", .array(entry.rules.rules.map(Self.describe))),
                                ("fallback", entry.rules.fallback.map(Self.describe) ?? .string("404")),
                            ])
                        })
                ),
            ]))
    }

    /// Routes whose parent is this waypoint's Gateway and that one of its listeners allows (`allowedRoutes`:
    /// namespaces and kinds; the Gateway API default, same namespace, when its object was not read): grouped by
    /// hostname, each group one virtual host serving any port.
    mutating func buildGatewayHosts() {
        let own = spec.gateways.first { compiler.isOwnGateway(namespace: $0.namespace, name: $0.name) }
        let listeners = own?.listeners ?? [.init(name: "mesh", port: 15008, proto: "HBONE")]
        var gatewayRoutes: [HTTPRouteSpec] = []
        for route in spec.httpRoutes {
            var refused: String?
            for ref in route.parentRefs where ref.isGateway {
                guard compiler.isOwnGateway(namespace: ref.namespace, name: ref.name) else {
                    refused = refused ?? "parent Gateway \(ref.namespace)/\(ref.name) is not this waypoint (Accepted=False here)"
                    continue
                }
                let named = listeners.filter {
                    ($0.name == ref.sectionName || ref.sectionName == nil) && (ref.port == nil || $0.port == ref.port)
                }
                guard !named.isEmpty else {
                    refused = "no listener of Gateway \(ref.namespace)/\(ref.name) matches its sectionName/port (NoMatchingParent)"
                    continue
                }
                guard
                    named.contains(where: {
                        $0.allowedRoutes.allows(
                            kind: route.kind, namespace: route.namespace, gatewayNamespace: compiler.namespace,
                            namespaceLabels: namespaceLabels[route.namespace] ?? [:])
                    })
                else {
                    refused = "the listeners of Gateway \(ref.namespace)/\(ref.name) do not allow it (NotAllowedByListeners)"
                    continue
                }
                refused = nil
                gatewayRoutes.append(route)
                break
            }
            if let refused { warnings.append("\(route.kind) \(route.namespace)/\(route.name): \(refused)") }
        }
        var hostnames: [String] = []
        for route in gatewayRoutes {
            for h in route.hostnames.isEmpty ? ["*"] : route.hostnames where !hostnames.contains(h) { hostnames.append(h) }
        }
        for hostname in hostnames {
            let attached = gatewayRoutes.filter { ($0.hostnames.isEmpty ? ["*"] : $0.hostnames).contains(hostname) }
            let set = RuleSet(rules: rules(from: attached), fallback: nil)
            addHost(VirtualHost(ports: [(0, set)], defaultPort: 0), names: [hostname], kind: "Gateway", name: hostname)
        }
    }

    mutating func buildServiceHosts() {
        for service in spec.services {
            // Not bound to this waypoint: a backend like any other, but no tunnel is accepted to it.
            let bound = compiler.isBound(service, namespaces: namespaceLabels, waypointFor: waypointFor)
            let fqdn = "\(service.name).\(service.namespace).svc.\(compiler.clusterDomain)"
            let attached = spec.httpRoutes.filter { route in
                route.parentRefs.contains { $0.isService && $0.namespace == service.namespace && $0.name == service.name }
            }
            // Both kinds for one service: Istio leaves it undefined; here the HTTPRoutes win.
            var virtualServices = self.virtualServices(fqdn: fqdn, hosts: [])
            if !attached.isEmpty && !virtualServices.isEmpty {
                for vs in virtualServices {
                    warnings.append(
                        "VirtualService \(vs.namespace)/\(vs.name): service \(service.namespace)/\(service.name) has HTTPRoutes attached, which take precedence: not applied to it"
                    )
                }
                virtualServices = []
            }
            var ports: [(port: UInt16, rules: RuleSet<RouteAction>)] = []
            for port in service.ports {
                let own = clusterIndex["\(service.namespace)/\(service.name):\(port.port)"]!
                if !virtualServices.isEmpty {
                    // Istio: with a VirtualService, a request no rule matches gets 404.
                    ports.append((UInt16(port.port), RuleSet(orderedRules: rules(from: virtualServices, port: port.port), fallback: nil)))
                    continue
                }
                // GAMMA: routes whose parentRef names this port (or no port) apply; with none, traffic goes to the service.
                let forPort = attached.filter { route in
                    route.parentRefs.contains {
                        $0.isService && $0.namespace == service.namespace && $0.name == service.name
                            && ($0.port == nil || $0.port == port.port)
                    }
                }
                let fallback: RouteAction? =
                    forPort.isEmpty
                    ? .forward(
                        BackendSet(
                            clusters: [WeightedCluster(cluster: own, weight: 1)], totalWeight: 1,
                            route: "\(service.namespace)/\(service.name)"))
                    : nil
                ports.append((UInt16(port.port), RuleSet(rules: rules(from: forPort), fallback: fallback)))
            }
            var hostNames = ["\(service.name).\(service.namespace)", "\(service.name).\(service.namespace).svc", fqdn]
            if service.namespace == compiler.namespace { hostNames.insert(service.name, at: 0) }
            if let ip = service.clusterIP { hostNames.append(ip) }
            addHost(
                VirtualHost(ports: ports, defaultPort: Self.defaultPort(service.ports.map(\.port))),
                names: hostNames, kind: "Service", name: "\(service.namespace)/\(service.name)")
            for port in service.ports {
                // TCPRoutes attached to this port (or the whole service): its byte streams go to their backends.
                let tcp = spec.tcpRoutes.filter { route in
                    route.parentRefs.contains {
                        $0.isService && $0.namespace == service.namespace && $0.name == service.name
                            && ($0.port == nil || $0.port == port.port)
                    }
                }
                if !tcp.isEmpty {
                    let name = tcp.map { "\($0.namespace)/\($0.name)" }.joined(separator: ",")
                    var weighted: [WeightedCluster] = []
                    for route in tcp {
                        for ref in route.rules.flatMap(\.backendRefs) {
                            weighted.append(
                                WeightedCluster(
                                    cluster: resolve(ref, route: "\(route.namespace)/\(route.name)", kind: route.kind),
                                    weight: UInt32(ref.weight)))
                        }
                    }
                    let total = weighted.reduce(UInt32(0)) { $0 + $1.weight }
                    if total > 0 {
                        tcpRoutes[tcpRouteKey(Int32(virtualHosts.count - 1), UInt16(port.port))] = BackendSet(
                            clusters: weighted, totalWeight: total, route: name)
                    } else {
                        warnings.append(
                            "TCPRoute \(name): no backendRef with weight: streams to \(service.namespace)/\(service.name):\(port.port) go to the service itself"
                        )
                    }
                }
                guard bound, let ip = service.clusterIP, let vip = SocketAddress(ip: ip, port: UInt16(port.port)) else { continue }
                destinations[vip] = Destination(
                    virtualHost: Int32(virtualHosts.count - 1), port: UInt16(port.port),
                    cluster: clusterIndex["\(service.namespace)/\(service.name):\(port.port)"]!, endpoint: -1,
                    innerProtocol: InnerProtocol(appProtocol: port.appProtocol, portName: port.name),
                    name: "\(service.namespace)/\(service.name)", host: fqdn)
            }
        }
    }

    mutating func buildServiceEntryHosts() {
        for entry in spec.serviceEntries {
            let virtualServices = self.virtualServices(fqdn: nil, hosts: entry.hosts)
            var ports: [(port: UInt16, rules: RuleSet<RouteAction>)] = []
            for port in entry.ports {
                let own = clusterIndex["\(entry.hosts[0]):\(port.number)"]!
                let fallback = RouteAction.forward(
                    BackendSet(
                        clusters: [WeightedCluster(cluster: own, weight: 1)], totalWeight: 1,
                        route: "\(entry.namespace)/\(entry.name)"))
                ports.append(
                    (
                        UInt16(port.number),
                        virtualServices.isEmpty
                            ? RuleSet(rules: [], fallback: fallback)
                            : RuleSet(orderedRules: rules(from: virtualServices, port: port.number), fallback: nil)
                    ))
            }
            addHost(
                VirtualHost(ports: ports, defaultPort: Self.defaultPort(entry.ports.map(\.number))),
                names: entry.hosts + entry.addresses, kind: "ServiceEntry", name: "\(entry.namespace)/\(entry.name)")
            for address in entry.addresses {
                for port in entry.ports {
                    guard let vip = SocketAddress(ip: address, port: UInt16(port.number)), destinations[vip] == nil else { continue }
                    let original =
                        entry.resolution == .none
                        ? SocketAddress(ip: address, port: UInt16(port.targetPort ?? port.number)).flatMap { endpointIndex[$0] } : nil
                    destinations[vip] = Destination(
                        virtualHost: Int32(virtualHosts.count - 1), port: UInt16(port.number),
                        cluster: clusterIndex["\(entry.hosts[0]):\(port.number)"]!, endpoint: -1,
                        innerProtocol: InnerProtocol(appProtocol: port.proto, portName: port.name),
                        name: "\(entry.namespace)/\(entry.name)", host: entry.hosts[0], originalEndpoint: original ?? -1)
                }
            }
        }
    }

    /// A Host header without a port means port 80 when served, else the only or first port.
    static func defaultPort(_ ports: [Int]) -> UInt16 {
        UInt16(ports.contains(80) ? 80 : ports.first ?? 80)
    }

    // MARK: - Dump

    static func describe(_ rule: RouteRule<RouteAction>) -> JSONValue {
        var match: [(String, JSONValue)] = [("path", .string(rule.match.path.description))]
        if rule.match.ignoreCase { match.append(("ignoreUriCase", .string("true"))) }
        if let m = rule.match.method { match.append(("method", .string(m.description))) }
        if !rule.match.headers.isEmpty {
            match.append(("headers", .array(rule.match.headers.map { .string(String(decoding: $0.name, as: UTF8.self)) })))
        }
        return .object([
            ("route", .string(rule.origin.route)), ("rule", .int(rule.origin.ruleIndex)), ("match", .object(match)),
            ("action", describe(rule.action)),
        ])
    }

    static func describe(_ action: RouteAction) -> JSONValue {
        switch action {
        case .reply(let reply): return .object([("reply", .int(reply.status))])
        case .redirect(let redirect): return .object([("redirect", .int(redirect.statusCode))])
        case .respond(let status, _): return .object([("directResponse", .int(status))])
        case .forward(let set):
            return .object([
                ("route", .string(set.route)),
                (
                    "backends",
                    .array(
                        set.clusters.map {
                            .object([("cluster", .int(Int($0.cluster))), ("weight", .int(Int($0.weight)))])
                        })
                ),
            ])
        }
    }

    /// An endpoint's transport as the dump shows it after the address.
    static func describe(_ transport: EndpointTransport, peers: [ServiceAccountName]) -> String {
        switch transport {
        case .plaintext: return ""
        case .hbone(let peer) where peer >= 0: return " (HBONE, \(peers[Int(peer)]))"
        case .hbone: return " (HBONE)"
        case .tls: return " (TLS)"
        }
    }

    /// The `/config_dump` of this state, rendered when asked (the values are shared, not copied).
    func dumpSource(generation: UInt64) -> @Sendable () -> JSONValue {
        let (clusters, endpoints, transports, peers, hosts) = (clusters, endpoints, endpointTransports, peerAccounts, dumpHosts)
        let warnings = spec.warnings + warnings
        return {
            JSONValue.object([
                ("generation", .int(Int(generation))),
                (
                    "clusters",
                    .array(
                        clusters.enumerated().map { index, cluster in
                            .object([
                                ("index", .int(index)), ("name", .string(cluster.name)),
                                (
                                    "endpoints",
                                    .array(
                                        cluster.endpoints.map {
                                            .string(endpoints[Int($0)].description + Self.describe(transports[Int($0)], peers: peers))
                                        })
                                ),
                            ])
                        })
                ),
                ("virtualHosts", .array(hosts)),
                ("warnings", .array(warnings.map(JSONValue.string))),
            ])
        }
    }
}
