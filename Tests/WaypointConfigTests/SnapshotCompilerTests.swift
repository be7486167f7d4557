import Filters
import HTTPRouter
import Testing
@testable import WaypointConfig
import WaypointCore

private let config = """
    apiVersion: v1
    kind: Service
    metadata: {name: web, namespace: shop}
    spec:
      clusterIP: 10.96.0.1
      ports: [{name: http, port: 80}]
    ---
    apiVersion: discovery.k8s.io/v1
    kind: EndpointSlice
    metadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}
    ports: [{name: http, port: 8080}]
    endpoints: [{addresses: [10.0.0.1]}]
    ---
    apiVersion: v1
    kind: Service
    metadata: {name: api, namespace: shop}
    spec:
      ports: [{name: http, port: 80}]
    ---
    apiVersion: discovery.k8s.io/v1
    kind: EndpointSlice
    metadata: {name: api-1, namespace: shop, labels: {kubernetes.io/service-name: api}}
    ports: [{name: http, port: 9090}]
    endpoints: [{addresses: [10.0.0.2]}]
    ---
    apiVersion: gateway.networking.k8s.io/v1
    kind: HTTPRoute
    metadata: {name: api-split, namespace: shop}
    spec:
      parentRefs: [{kind: Service, group: "", name: api}]
      rules:
      - matches: [{path: {type: PathPrefix, value: /v2}}]
        backendRefs: [{name: web, port: 80}]
      - matches: [{path: {type: Exact, value: /missing}}]
        backendRefs: [{name: nothere, port: 80}]
      - matches: [{path: {type: Exact, value: /empty}}]
    ---
    apiVersion: networking.istio.io/v1
    kind: ServiceEntry
    metadata: {name: ext, namespace: shop}
    spec:
      hosts: [ext.example.com]
      resolution: STATIC
      ports: [{name: http, number: 80, protocol: HTTP}]
      addresses: [240.0.0.9]
      endpoints: [{address: 10.0.0.9, ports: {http: 8081}, labels: {networking.istio.io/tunnel: http}}]
    """

/// The cluster name (or reply status) a request to `host` + `path` resolves to.
private func resolve(_ snapshot: Snapshot, host: String, path: String) -> String {
    let text = "GET \(path) HTTP/1.1\r\nHost: \(host)\r\n\r\n"
    return Array(text.utf8).withUnsafeBytes { bytes -> String in
        var head = RequestHead()
        _ = HTTP1Parser.parseRequest(bytes, into: &head)
        guard let rules = snapshot.routes.ruleSet(forHost: head.host.bytes(in: bytes)) else { return "no host" }
        switch rules.route(head, bytes) {
        case nil: return "404"
        case .reply(let reply)?: return "\(reply.status)"
        case .redirect(let redirect)?: return "redirect \(redirect.statusCode)"
        case .respond(let status, _)?: return "respond \(status)"
        case .forward(let set)?:
            let c = set.clusters[0].cluster
            return c < 0 ? "unresolved" : snapshot.clusters[Int(c)].name
        }
    }
}

@Suite struct SnapshotCompilerTests {
    let snapshot: Snapshot

    init() throws {
        let spec = try ManifestLoader.load(text: config, file: "c.yaml", defaultNamespace: "shop")
        snapshot = SnapshotCompiler(namespace: "shop").compile(spec, generation: 7)
    }

    @Test(arguments: [
        ("web", "/x", "shop/web:80"),
        ("web.shop", "/x", "shop/web:80"),
        ("web.shop.svc", "/", "shop/web:80"),
        ("web.shop.svc.cluster.local:80", "/", "shop/web:80"),
        ("10.96.0.1", "/", "shop/web:80"),
        ("web:81", "/", "no host"),
        ("api", "/v2/items", "shop/web:80"),
        ("api", "/v1/items", "404"),  // GAMMA: a route is attached, nothing matched
        ("api", "/missing", "unresolved"),  // invalid backendRef: 500 when picked
        ("api", "/empty", "500"),  // a rule without backendRefs
        ("ext.example.com", "/", "ext.example.com:80"),
        ("unknown", "/", "no host"),
    ])
    func resolves(_ host: String, _ path: String, _ expected: String) {
        #expect(resolve(snapshot, host: host, path: path) == expected)
    }

    @Test func reportsUnresolvedReferences() {
        #expect(snapshot.generation == 7)
        #expect(snapshot.warnings.contains { $0.contains("backendRef Service shop/nothere:80 not found") })
    }

    @Test func serviceEntryEndpointPortsByName() {
        let cluster = snapshot.clusters.first { $0.name == "ext.example.com:80" }!
        #expect(cluster.endpoints.map { snapshot.endpoints[Int($0)].description } == ["10.0.0.9:8081"])
    }

    /// HBONE `:authority` lookup: service VIPs and ServiceEntry addresses (routes apply), then endpoints; nothing else.
    @Test(arguments: [
        ("10.96.0.1:80", "shop/web", false), ("240.0.0.9:80", "shop/ext", false),
        ("10.0.0.1:8080", "10.0.0.1:8080", true), ("10.0.0.9:8081", "10.0.0.9:8081", true),
    ])
    func tunnelDestinations(authority: String, name: String, workload: Bool) throws {
        let address = SocketAddress(authority)!
        let destination = try #require(snapshot.destination(for: address))
        #expect(destination.name == name)
        #expect(destination.innerProtocol == .http1)
        #expect(destination.virtualHost >= 0 && destination.cluster >= 0 && destination.endpoint == -1 || workload)
        if workload { #expect(snapshot.endpoints[Int(destination.endpoint)] == address && destination.virtualHost == -1) }
    }

    @Test(arguments: ["10.96.0.1:81", "10.96.0.2:80", "10.0.0.1:80", "127.0.0.1:8080"])
    func unknownAuthoritiesHaveNoDestination(authority: String) {
        #expect(snapshot.destination(for: SocketAddress(authority)!) == nil)
    }

    /// A ServiceEntry address that is also a workload's: the entry's routes and policies apply to a tunnel to it,
    /// after a full compile and after an endpoint update re-resolves the workload.
    @Test func aServiceAddressWinsOverTheSameWorkloadAddress() throws {
        let text = """
            apiVersion: v1
            kind: Service
            metadata: {name: web, namespace: shop}
            spec: {ports: [{name: http, port: 80}]}
            ---
            apiVersion: discovery.k8s.io/v1
            kind: EndpointSlice
            metadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}
            ports: [{name: http, port: 8080}]
            endpoints: [{addresses: [10.0.0.1]}, {addresses: [10.0.0.2]}]
            ---
            apiVersion: networking.istio.io/v1
            kind: ServiceEntry
            metadata: {name: pinned, namespace: shop}
            spec: {hosts: [pinned.example.com], addresses: [10.0.0.1], ports: [{name: http, number: 8080}], resolution: STATIC,
                   endpoints: [{address: 10.0.0.1}]}
            """
        let spec = try ManifestLoader.load(text: text, file: "c.yaml", defaultNamespace: "shop")
        let compiler = SnapshotCompiler(namespace: "shop")
        let compiled = compiler.compileKeepingState(spec, generation: 1)
        var changes = ConfigSpec()
        changes.endpointSlices = spec.endpointSlices
        let updated = try #require(compiler.update(compiled, spec: spec, changes: changes, generation: 2))
        for snapshot in [compiled.snapshot, updated.snapshot] {
            #expect(snapshot.destination(for: SocketAddress("10.0.0.1:8080")!)?.name == "shop/pinned")
            let workload = try #require(snapshot.destination(for: SocketAddress("10.0.0.2:8080")!))
            #expect(workload.virtualHost == -1 && snapshot.endpoints[Int(workload.endpoint)].description == "10.0.0.2:8080")
        }
    }

    @Test func meshEndpointsAreMarkedForHBONE() {
        let tunnels = zip(snapshot.endpoints, snapshot.endpointTransports).filter(\.1.isHBONE).map { $0.0.description }
        #expect(tunnels == ["10.0.0.9:8081"])
    }

    @Test func configDumpIsJSON() {
        #expect(snapshot.dump.contains("\"generation\": 7"))
        #expect(snapshot.dump.contains("shop/web:80"))
    }
}

@Suite struct WeightedBackendTests {
    @Test func tenThousandDrawsFollowTheWeightsAndNeverPickWeightZero() {
        let set = BackendSet(
            clusters: [
                WeightedCluster(cluster: 0, weight: 70), WeightedCluster(cluster: 1, weight: 0),
                WeightedCluster(cluster: 2, weight: 20), WeightedCluster(cluster: 3, weight: 10),
            ],
            totalWeight: 100, route: "ns/r")
        var generator = SystemRandomNumberGenerator()
        var counts = [0, 0, 0, 0]
        for _ in 0..<10_000 { counts[set.entry(at: UInt32.random(in: 0..<100, using: &generator))] += 1 }
        #expect(counts[1] == 0)
        // Binomial standard deviations at n = 10,000: 46, 40 and 30; allow 5 of them.
        #expect(abs(counts[0] - 7_000) < 230 && abs(counts[2] - 2_000) < 200 && abs(counts[3] - 1_000) < 150, "\(counts)")
        // Every point maps to the entry whose range holds it.
        #expect(
            (0..<100).map { set.entry(at: UInt32($0)) } == Array(repeating: 0, count: 70) + Array(repeating: 2, count: 20)
                + Array(repeating: 3, count: 10))
    }
}

/// `config` with a DestinationRule for `web` (`trafficPolicy` in YAML flow style, and a subset v1).
private func compileWithRule(trafficPolicy: String, previous: Snapshot? = nil) throws -> Snapshot {
    let text =
        config + """

            ---
            apiVersion: networking.istio.io/v1
            kind: DestinationRule
            metadata: {name: web, namespace: shop}
            spec:
              host: web
              trafficPolicy: \(trafficPolicy)
              subsets: [{name: v1, labels: {version: v1}}]
            """
    return SnapshotCompiler(namespace: "shop").compile(
        try ManifestLoader.load(text: text, file: "c.yaml", defaultNamespace: "shop"), generation: 1, previous: previous)
}

@Suite struct ConnectionPoolCompileTests {
    private func compile(_ connectionPool: String, previous: Snapshot? = nil) throws -> Snapshot {
        try compileWithRule(trafficPolicy: "{connectionPool: \(connectionPool)}", previous: previous)
    }

    @Test func limitsAreReadAndZeroMeansNone() throws {
        let snapshot = try compile("{tcp: {maxConnections: 0}, http: {http2MaxRequests: 7, maxRetries: 0, http1MaxPendingRequests: 3}}")
        let web = try #require(snapshot.clusters.first { $0.name == "shop/web:80" })
        #expect(web.connectionPool == ConnectionPoolSettings(maxPendingRequests: 3, maxRequests: 7))
    }

    /// A subset is a cluster of its own in Envoy, with its own circuit breakers: its counts are its own.
    @Test func eachClusterCountsForItself() throws {
        let snapshot = try compile("{http: {http2MaxRequests: 1}}")
        let web = try #require(snapshot.clusters.first { $0.name == "shop/web:80" }?.limits)
        let subset = try #require(snapshot.clusters.first { $0.name == "shop/web:80|v1" }?.limits)
        #expect(web !== subset)
        #expect(web.enterRequest() && subset.enterRequest() && !web.enterRequest())
    }

    /// A reload keeps counting into the same limits when the backend's settings did not change (what is in
    /// flight stays counted); changed settings start a new count, as a new Envoy cluster would.
    @Test func reloadsKeepUnchangedLimits() throws {
        let first = try compile("{http: {http2MaxRequests: 1}}")
        let same = try compile("{http: {http2MaxRequests: 1}}", previous: first)
        let changed = try compile("{http: {http2MaxRequests: 2}}", previous: same)
        func limits(_ snapshot: Snapshot) -> ClusterLimits? { snapshot.clusters.first { $0.name == "shop/web:80" }?.limits }
        #expect(limits(first) === limits(same))
        #expect(limits(same) !== limits(changed) && limits(changed)?.settings.maxRequests == 2)
    }
}

@Suite struct AmbientMembershipTests {
    private func pod(_ labels: [String: String], account: String = "reviews") -> PodSpec {
        PodSpec(namespace: "shop", name: "reviews-0", labels: labels, ips: ["10.0.0.5"], serviceAccount: account)
    }
    private let ambient = ["istio.io/dataplane-mode": "ambient"]
    private let none = ["istio.io/dataplane-mode": "none"]
    private let reviews = CompileState.MeshPeer.account(ServiceAccountName(namespace: "shop", name: "reviews"))

    @Test func aPodOrItsNamespaceLabelledAmbientIsReachedByHBONEAsItsServiceAccount() {
        #expect(CompileState.meshPeer(of: pod(ambient), namespaceLabels: [:], annotated: false) == reviews)
        #expect(CompileState.meshPeer(of: pod([:]), namespaceLabels: ["shop": ambient], annotated: false) == reviews)
    }

    @Test func noneOptsOutAndUnlabelledIsPlaintext() {
        #expect(CompileState.meshPeer(of: pod(none), namespaceLabels: ["shop": ambient], annotated: false) == nil)
        #expect(CompileState.meshPeer(of: pod([:]), namespaceLabels: ["other": ambient], annotated: false) == nil)
        #expect(CompileState.meshPeer(of: pod(ambient), namespaceLabels: [:], annotated: false) != nil)
    }

    @Test func theTunnelAnnotationStillWorksWithOrWithoutAPod() {
        #expect(CompileState.meshPeer(of: nil, namespaceLabels: [:], annotated: true) == .any)
        #expect(CompileState.meshPeer(of: pod([:]), namespaceLabels: [:], annotated: true) == reviews)
        #expect(CompileState.meshPeer(of: nil, namespaceLabels: [:], annotated: false) == nil)
    }
}

/// A backendRef to another namespace's Service needs a ReferenceGrant in that namespace (Gateway API; Istio
/// answers 500 for a reference not permitted).
@Suite struct ReferenceGrantTests {
    static let routes = """
        apiVersion: v1
        kind: Service
        metadata: {name: web, namespace: shop}
        spec: {clusterIP: 10.96.0.1, ports: [{name: http, port: 80}]}
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: db, namespace: data}
        spec: {clusterIP: 10.96.0.7, ports: [{name: http, port: 80}]}
        ---
        apiVersion: discovery.k8s.io/v1
        kind: EndpointSlice
        metadata: {name: db-1, namespace: data, labels: {kubernetes.io/service-name: db}}
        ports: [{name: http, port: 8080}]
        endpoints: [{addresses: [10.0.0.7]}]
        ---
        apiVersion: gateway.networking.k8s.io/v1
        kind: HTTPRoute
        metadata: {name: to-data, namespace: shop}
        spec:
          parentRefs: [{kind: Service, group: "", name: web}]
          rules: [{backendRefs: [{name: db, namespace: data, port: 80}]}]
        """

    static func grant(in namespace: String = "data", from: String = "shop", kind: String = "HTTPRoute", name: String? = nil) -> String {
        """
        ---
        apiVersion: gateway.networking.k8s.io/v1beta1
        kind: ReferenceGrant
        metadata: {name: allow, namespace: \(namespace)}
        spec:
          from: [{group: gateway.networking.k8s.io, kind: \(kind), namespace: \(from)}]
          to: [{group: "", kind: Service\(name.map { ", name: \($0)" } ?? "")}]
        """
    }

    /// Where `GET /` to web goes, and the compiler's warnings.
    func compile(_ extra: String) throws -> (target: String, warnings: [String]) {
        let spec = try ManifestLoader.load(text: Self.routes + "\n" + extra, file: "c.yaml", defaultNamespace: "shop")
        let snapshot = SnapshotCompiler(namespace: "shop").compile(spec, generation: 1)
        return (resolve(snapshot, host: "web", path: "/"), snapshot.warnings)
    }

    @Test func refusedWithoutAGrant() throws {
        let (target, warnings) = try compile("")
        #expect(target == "unresolved")
        #expect(warnings.contains { $0.contains("backendRef Service data/db") && $0.contains("RefNotPermitted") })
    }

    @Test(arguments: [
        (grant(), "data/db:80"),
        (grant(name: "db"), "data/db:80"),
        (grant(name: "other"), "unresolved"),  // names another Service
        (grant(from: "elsewhere"), "unresolved"),  // for routes of another namespace
        (grant(kind: "GRPCRoute"), "unresolved"),  // for another kind of route
        (grant(in: "shop"), "unresolved"),  // in the route's namespace: grants nothing to the target's
    ])
    func grantsOnlyWhatTheySay(_ grant: String, _ expected: String) throws {
        #expect(try compile(grant).target == expected)
    }
}

/// Routes attach to this waypoint's Gateway only as its listeners' `allowedRoutes` allow (Gateway API: the same
/// namespace unless a listener says otherwise), and only to this waypoint's own Gateway.
@Suite struct AllowedRoutesTests {
    static let base = """
        apiVersion: v1
        kind: Service
        metadata: {name: web, namespace: shop}
        spec: {clusterIP: 10.96.0.1, ports: [{name: http, port: 80}]}
        ---
        apiVersion: v1
        kind: Namespace
        metadata: {name: blog, labels: {team: blue}}
        """

    static func gateway(_ allowed: String?, name: String = "waypoint") -> String {
        """
        ---
        apiVersion: gateway.networking.k8s.io/v1
        kind: Gateway
        metadata: {name: \(name), namespace: shop}
        spec:
          gatewayClassName: istio-waypoint
          listeners: [{name: mesh, port: 15008, protocol: HBONE\(allowed.map { ", allowedRoutes: \($0)" } ?? "")}]

        """
    }

    static func route(in namespace: String, parent: String = "{name: waypoint, namespace: shop}", kind: String = "HTTPRoute") -> String {
        """
        ---
        apiVersion: gateway.networking.k8s.io/v1
        kind: \(kind)
        metadata: {name: site, namespace: \(namespace)}
        spec:
          parentRefs: [\(parent)]
          hostnames: [site.example.com]
          rules: [{backendRefs: [{name: web, namespace: shop, port: 80}]}]
        ---
        apiVersion: gateway.networking.k8s.io/v1beta1
        kind: ReferenceGrant
        metadata: {name: any, namespace: shop}
        spec:
          from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: blog}, {group: gateway.networking.k8s.io, kind: GRPCRoute, namespace: blog}]
          to: [{group: "", kind: Service}]

        """
    }

    /// Whether the route serves `site.example.com`, and the compiler's warnings.
    func compile(_ yaml: String) throws -> (attached: Bool, warnings: [String]) {
        let spec = try ManifestLoader.load(text: Self.base + "\n" + yaml, file: "g.yaml", defaultNamespace: "shop")
        let snapshot = SnapshotCompiler(namespace: "shop").compile(spec, generation: 1)
        return (resolve(snapshot, host: "site.example.com", path: "/") == "shop/web:80", snapshot.warnings)
    }

    /// (manifests, whether the route attaches)
    static let cases: [(String, Bool)] = {
        var cases: [(String, Bool)] = []
        func add(_ yaml: String, _ attached: Bool) { cases.append((yaml, attached)) }
        add(gateway(nil) + route(in: "shop"), true)  // same namespace: the default
        add(route(in: "shop"), true)  // the Gateway's object not read: its defaults
        add(gateway(nil) + route(in: "blog"), false)  // another namespace: not by default
        add(route(in: "blog"), false)
        add(gateway("{namespaces: {from: All}}") + route(in: "blog"), true)
        add(gateway("{namespaces: {from: Selector, selector: {matchLabels: {team: blue}}}}") + route(in: "blog"), true)
        add(gateway("{namespaces: {from: Selector, selector: {matchLabels: {team: red}}}}") + route(in: "blog"), false)
        let expression = "{matchExpressions: [{key: team, operator: In, values: [blue, green]}]}"
        add(gateway("{namespaces: {from: Selector, selector: \(expression)}}") + route(in: "blog"), true)
        add(gateway("{namespaces: {from: All}, kinds: [{kind: GRPCRoute}]}") + route(in: "blog"), false)  // kind not allowed
        add(gateway("{namespaces: {from: All}, kinds: [{kind: GRPCRoute}]}") + route(in: "blog", kind: "GRPCRoute"), true)
        add(gateway(nil) + route(in: "shop", parent: "{name: waypoint, sectionName: other}"), false)  // no such listener
        add(gateway(nil) + route(in: "shop", parent: "{name: waypoint, sectionName: mesh}"), true)
        add(gateway(nil, name: "east") + route(in: "shop", parent: "{name: east}"), false)  // another waypoint's Gateway
        return cases
    }()

    @Test(arguments: cases)
    func attachesOnlyAsAllowed(_ yaml: String, _ attached: Bool) throws {
        #expect(try compile(yaml).attached == attached)
    }

    @Test func aRefusedRouteSaysWhy() throws {
        #expect(try compile(Self.gateway(nil) + Self.route(in: "blog")).warnings.contains { $0.contains("NotAllowedByListeners") })
        #expect(try compile(Self.route(in: "shop", parent: "{name: east}")).warnings.contains { $0.contains("is not this waypoint") })
    }
}

/// DestinationRule `trafficPolicy.tls`: TLS origination onto the endpoints of the host it names.
@Suite struct TLSOriginationCompileTests {
    private func compile(_ tls: String) throws -> Snapshot { try compileWithRule(trafficPolicy: "{tls: \(tls)}") }

    private func transports(_ snapshot: Snapshot) -> [EndpointTransport] {
        snapshot.clusters.first { $0.name == "shop/web:80" }!.endpoints.map { snapshot.endpointTransports[Int($0)] }
    }

    @Test func simpleTLSReachesTheEndpointsOfTheHost() throws {
        let snapshot = try compile("{mode: SIMPLE, insecureSkipVerify: true, sni: web.example.com}")
        #expect(!transports(snapshot).isEmpty && transports(snapshot).allSatisfy { $0 == .tls(0) })
        let tls = try #require(snapshot.upstreamTLS.first ?? nil)
        #expect(tls.serverName == "web.example.com" && !tls.verify)
    }

    @Test(arguments: ["{mode: DISABLE}", "{mode: ISTIO_MUTUAL}", "{}"])
    func otherModesOriginateNothing(tls: String) throws {
        let snapshot = try compile(tls)
        #expect(snapshot.upstreamTLS.isEmpty && transports(snapshot).allSatisfy { $0 == .plaintext })
    }

    /// A CA file that cannot be read: a warning, and the endpoints stay TLS with no usable settings, so
    /// connections fail rather than go out in the clear.
    @Test func anUnreadableCAFailsClosed() throws {
        let snapshot = try compile("{mode: SIMPLE, caCertificates: /nonexistent/ca.pem}")
        #expect(snapshot.upstreamTLS.count == 1 && snapshot.upstreamTLS[0] == nil)
        #expect(transports(snapshot).allSatisfy { $0 == .tls(0) })
        #expect(snapshot.warnings.contains { $0.contains("DestinationRule shop/web: trafficPolicy.tls: cannot read /nonexistent/ca.pem") })
    }

    /// Only regular files are read: a rule naming a device (or a FIFO) cannot make the compile block or read
    /// forever.
    @Test(arguments: ["/dev/zero", "/", "/dev/stdin"])
    func aPathThatIsNoFileIsNotRead(path: String) throws {
        let snapshot = try compile("{mode: SIMPLE, caCertificates: \(path)}")
        #expect(snapshot.upstreamTLS.count == 1 && snapshot.upstreamTLS[0] == nil)
    }

    @Test func anUnknownModeNamesTheField() {
        #expect(throws: ConfigErrors.self) { try compile("{mode: STRICT}") }
    }

    /// `credentialName`: a Secret of the waypoint's namespace, read (by a Kubernetes source) with its `-cacert`;
    /// one that is missing fails closed with a warning (with file paths too it is an error: ManifestLoaderTests).
    @Test func aCredentialNameIsASecretOfTheWaypointsNamespace() throws {
        let snapshot = try compile("{mode: MUTUAL, credentialName: web-client}")
        #expect(snapshot.upstreamTLS.count == 1 && snapshot.upstreamTLS[0] == nil)
        #expect(transports(snapshot).allSatisfy { $0 == .tls(0) })
        #expect(snapshot.warnings.contains { $0.contains("credentialName: Secret shop/web-client not found: connections fail") })
        let spec = try ManifestLoader.load(
            text: "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r, namespace: blog}\n"
                + "spec: {host: web.shop.svc.cluster.local, subsets: [{name: a, trafficPolicy: {tls: {mode: SIMPLE, credentialName: c}}}]}",
            file: "r.yaml", defaultNamespace: "shop")
        #expect(spec.foreignReferences(clusterDomain: "cluster.local").secrets == ["c", "c-cacert"])
    }

    /// `portLevelSettings`: for its port, each field given replaces the rule's (Istio merges field by field); a
    /// port's `tls: {mode: DISABLE}` turns the rule's TLS off there.
    @Test func portLevelSettingsReplaceTheRulesFieldsForTheirPort() throws {
        let text =
            config + """

                ---
                apiVersion: v1
                kind: Service
                metadata: {name: two, namespace: shop}
                spec: {ports: [{name: http, port: 80}, {name: admin, port: 81}]}
                ---
                apiVersion: discovery.k8s.io/v1
                kind: EndpointSlice
                metadata: {name: two-1, namespace: shop, labels: {kubernetes.io/service-name: two}}
                ports: [{name: http, port: 8080}, {name: admin, port: 8081}]
                endpoints: [{addresses: [10.0.0.5]}]
                ---
                apiVersion: networking.istio.io/v1
                kind: DestinationRule
                metadata: {name: two, namespace: shop}
                spec:
                  host: two
                  trafficPolicy:
                    tls: {mode: SIMPLE, insecureSkipVerify: true}
                    connectionPool: {tcp: {maxConnections: 5}}
                    portLevelSettings:
                    - port: {number: 81}
                      tls: {mode: DISABLE}
                      connectionPool: {tcp: {maxConnections: 1}}
                      loadBalancer: {simple: ROUND_ROBIN}
                """
        let snapshot = SnapshotCompiler(namespace: "shop").compile(
            try ManifestLoader.load(text: text, file: "p.yaml", defaultNamespace: "shop"), generation: 1)
        let http = try #require(snapshot.clusters.first { $0.name == "shop/two:80" })
        let admin = try #require(snapshot.clusters.first { $0.name == "shop/two:81" })
        #expect(http.connectionPool?.maxConnections == 5 && admin.connectionPool?.maxConnections == 1)
        #expect(admin.loadBalancer == .roundRobin && http.loadBalancer == .leastRequest)
        #expect(snapshot.endpointTransports[Int(http.endpoints[0])] == .tls(0))
        #expect(snapshot.endpointTransports[Int(admin.endpoints[0])] == .plaintext)
    }

    /// A subset's own `trafficPolicy` replaces the rule's fields for its cluster: TLS to its endpoints only (the
    /// same addresses stay plaintext for the host and other subsets), and its connection pool.
    @Test func aSubsetsOwnPolicyAppliesToItsCluster() throws {
        let text = """
            apiVersion: networking.istio.io/v1
            kind: ServiceEntry
            metadata: {name: pay, namespace: shop}
            spec:
              hosts: [pay.example.com]
              ports: [{name: http, number: 80}]
              resolution: STATIC
              endpoints: [{address: 10.9.0.1, labels: {version: v1}}, {address: 10.9.0.2, labels: {version: v2}}]
            ---
            apiVersion: networking.istio.io/v1
            kind: DestinationRule
            metadata: {name: pay, namespace: shop}
            spec:
              host: pay.example.com
              trafficPolicy: {connectionPool: {tcp: {maxConnections: 5}}}
              subsets:
              - {name: v1, labels: {version: v1}}
              - name: v2
                labels: {version: v2}
                trafficPolicy:
                  tls: {mode: SIMPLE, insecureSkipVerify: true}
                  connectionPool: {tcp: {maxConnections: 2}}
              - name: all
                trafficPolicy: {tls: {mode: SIMPLE, insecureSkipVerify: true}}
            """
        let snapshot = SnapshotCompiler(namespace: "shop").compile(
            try ManifestLoader.load(text: text, file: "s.yaml", defaultNamespace: "shop"), generation: 1)
        func reached(_ name: String) throws -> [String] {
            let cluster = try #require(snapshot.clusters.first { $0.name == name })
            return cluster.endpoints.map {
                "\(snapshot.endpoints[Int($0)]) \(snapshot.endpointTransports[Int($0)] == .plaintext ? "plain" : "tls")"
            }
        }
        #expect(try reached("pay.example.com:80") == ["10.9.0.1:80 plain", "10.9.0.2:80 plain"])
        #expect(try reached("pay.example.com:80|v1") == ["10.9.0.1:80 plain"])
        #expect(try reached("pay.example.com:80|v2") == ["10.9.0.2:80 tls"])
        #expect(try reached("pay.example.com:80|all") == ["10.9.0.1:80 tls", "10.9.0.2:80 tls"])
        let v2 = try #require(snapshot.clusters.first { $0.name == "pay.example.com:80|v2" })
        let all = try #require(snapshot.clusters.first { $0.name == "pay.example.com:80|all" })
        #expect(v2.endpoints[0] == all.endpoints[1])  // one variant endpoint for the same address and TLS
        #expect(v2.connectionPool?.maxConnections == 2 && all.connectionPool?.maxConnections == 5)
        #expect(!snapshot.warnings.contains { $0.contains("not applied") })
    }
}
