import HBONEServer
import SnapshotRouting
import Testing
@testable import WaypointConfig
import WaypointCore

/// `web` has three endpoints (round robin, outlier detection after two 5xx); `api` one; `guarded` one, with a
/// DENY and an ALLOW policy; `egress.example.com` passes through to its two addresses, `vault.example.com` to
/// its address over TLS (a subset's).
private let config = """
    apiVersion: v1
    kind: Service
    metadata: {name: web, namespace: shop}
    spec:
      ports: [{name: http, port: 80}]
    ---
    apiVersion: discovery.k8s.io/v1
    kind: EndpointSlice
    metadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}
    ports: [{name: http, port: 8080}]
    endpoints: [{addresses: [10.0.0.1]}, {addresses: [10.0.0.2]}, {addresses: [10.0.0.3]}]
    ---
    apiVersion: networking.istio.io/v1
    kind: DestinationRule
    metadata: {name: web, namespace: shop}
    spec:
      host: web
      trafficPolicy:
        loadBalancer: {simple: ROUND_ROBIN}
        outlierDetection: {consecutive5xxErrors: 2, baseEjectionTime: 30s, maxEjectionPercent: 100}
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
    endpoints: [{addresses: [10.0.1.1]}]
    ---
    apiVersion: v1
    kind: Service
    metadata: {name: guarded, namespace: shop}
    spec:
      ports: [{name: http, port: 80}]
    ---
    apiVersion: discovery.k8s.io/v1
    kind: EndpointSlice
    metadata: {name: guarded-1, namespace: shop, labels: {kubernetes.io/service-name: guarded}}
    ports: [{name: http, port: 7070}]
    endpoints: [{addresses: [10.0.2.1]}]
    ---
    apiVersion: security.istio.io/v1
    kind: AuthorizationPolicy
    metadata: {name: no-admin, namespace: shop}
    spec:
      targetRefs: [{kind: Service, group: "", name: guarded}]
      action: DENY
      rules: [{to: [{operation: {paths: ["/admin*"]}}]}]
    ---
    apiVersion: security.istio.io/v1
    kind: AuthorizationPolicy
    metadata: {name: frontend-only, namespace: shop}
    spec:
      targetRefs: [{kind: Service, group: "", name: guarded}]
      action: ALLOW
      rules: [{from: [{source: {principals: ["cluster.local/ns/shop/sa/frontend"]}}]}]
    ---
    apiVersion: v1
    kind: Service
    metadata: {name: empty, namespace: shop}
    spec:
      ports: [{name: http, port: 80}]
    ---
    apiVersion: networking.istio.io/v1
    kind: ServiceEntry
    metadata: {name: egress, namespace: shop}
    spec:
      hosts: [egress.example.com]
      addresses: [240.1.0.1, 240.1.0.2]
      ports: [{name: http, number: 80, targetPort: 8080}]
    ---
    apiVersion: networking.istio.io/v1
    kind: ServiceEntry
    metadata: {name: vault, namespace: shop}
    spec:
      hosts: [vault.example.com]
      addresses: [240.2.0.1]
      ports: [{name: http, number: 80}]
    ---
    apiVersion: networking.istio.io/v1
    kind: DestinationRule
    metadata: {name: vault, namespace: shop}
    spec:
      host: vault.example.com
      subsets: [{name: tls, trafficPolicy: {tls: {mode: SIMPLE, insecureSkipVerify: true}}}]
    ---
    apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {name: vault, namespace: shop}
    spec:
      hosts: [vault.example.com]
      http: [{route: [{destination: {host: vault.example.com, subset: tls}}]}]
    """

private let frontend = PeerFacts(
    identity: SpiffeIdentity(uri: "spiffe://cluster.local/ns/shop/sa/frontend"),
    sourceIP: "10.1.0.1", sourceAddress: "10.1.0.1:40000")
private let stranger = PeerFacts(
    identity: SpiffeIdentity(uri: "spiffe://cluster.local/ns/shop/sa/other"),
    sourceIP: "10.1.0.2", sourceAddress: "10.1.0.2:40000")

/// A router over the test config, with a clock the test moves.
private final class Fixture {
    var clock = 1000.0
    let spec: ConfigSpec
    /// The first compilation, which endpoint updates start from.
    let compiled: CompiledConfig
    let snapshot: Snapshot
    let router: SnapshotRouter

    init(_ text: String = config) throws {
        spec = try ManifestLoader.load(text: text, file: "c.yaml", defaultNamespace: "shop")
        compiled = SnapshotCompiler(namespace: "shop").compileKeepingState(spec, generation: 1)
        snapshot = compiled.snapshot
        var clock: (() -> Double)!
        router = SnapshotRouter(snapshot: snapshot, seed: 42, counters: WorkerCounters()) { clock() }
        clock = { [unowned self] in self.clock }
    }

    /// The tunnel destination as the last `route` left it (looked up again when it was stale).
    private(set) var routedDestination: Destination?

    /// The decision for `GET path` to `host` (inside a tunnel to `tunnel`, an `IP:port`), and the labels routing
    /// gave it.
    func route(
        _ host: String, _ path: String = "/", peer: PeerFacts = frontend, tunnel: String? = nil, accepted: Destination? = nil
    ) -> (RouteDecision.Action, RouteLabels) {
        let text = "GET \(path) HTTP/1.1\r\nHost: \(host)\r\n\r\n"
        var destination = accepted ?? tunnel.flatMap { router.destination(for: SocketAddress($0)!) }
        let decision = Array(text.utf8).withUnsafeBytes { bytes -> RouteDecision in
            var head = RequestHead()
            _ = HTTP1Parser.parseRequest(bytes, into: &head)
            return router.route(head, bytes, destination: &destination, peer: peer)
        }
        routedDestination = destination
        return (decision.action, decision.labels)
    }

    /// The endpoint address a request to `host` goes to, or the status it is answered with; `accepted`: the
    /// destination of a tunnel accepted earlier.
    func target(
        _ host: String, _ path: String = "/", peer: PeerFacts = frontend, tunnel: String? = nil, accepted: Destination? = nil
    ) -> String {
        switch route(host, path, peer: peer, tunnel: tunnel, accepted: accepted).0 {
        case .forward(let endpoint, _, _, _): return router.snapshot.endpoints[Int(endpoint)].description
        case .reply(let reply): return "\(reply.status)"
        case .respond(let status, _, _): return "respond \(status)"
        case .redirect(let status, _): return "redirect \(status)"
        }
    }

    /// Two endpoint updates of `web` (in a fixture of `web` alone) given to the router: 10.0.0.2 leaves, then
    /// 10.0.0.9 comes and takes its index. The last compilation.
    func rollOutWeb() throws -> CompiledConfig {
        let compiler = SnapshotCompiler(namespace: "shop")
        var compiled = self.compiled
        for (generation, hosts) in [(UInt64(2), [1, 3]), (3, [1, 3, 9])] {
            let slice = EndpointSliceSpec(
                namespace: "shop", name: "web-1", serviceName: "web", ports: [("http", 8080)],
                endpoints: hosts.map { (["10.0.0.\($0)"], true, nil, nil, nil) })
            var spec = self.spec
            spec.endpointSlices = [slice]
            var changes = ConfigSpec()
            changes.endpointSlices = compiled.state.spec.endpointSlices + [slice]
            compiled = try #require(compiler.update(compiled, spec: spec, changes: changes, generation: generation))
            router.replace(compiled.snapshot)
        }
        return compiled
    }

    /// A Service listed before the others: a full compile with it renumbers every virtual host and cluster.
    static let serviceListedFirst = """
        apiVersion: v1
        kind: Service
        metadata: {name: aaa, namespace: shop}
        spec:
          ports: [{name: http, port: 80}]
        ---

        """

    /// A full compile of `text` given to the router.
    func reload(_ text: String, generation: UInt64) throws {
        let spec = try ManifestLoader.load(text: text, file: "c.yaml", defaultNamespace: "shop")
        router.replace(SnapshotCompiler(namespace: "shop").compile(spec, generation: generation))
    }

    func cluster(of host: String) -> Int32 {
        guard case .forward(_, _, let cluster, _) = route(host).0 else { return -1 }
        return cluster
    }
}

@Suite struct SnapshotRouterTests {
    /// `resolution: NONE`: a request, a retry and a TCP tunnel go to the address the tunnel named (at the target
    /// port), never to the entry's other address; without a tunnel there is no original destination (503).
    @Test func aPassthroughEntrySendsEachTunnelWhereItWasGoing() throws {
        let fixture = try Fixture()
        for address in ["240.1.0.1", "240.1.0.2", "240.1.0.1"] {
            for _ in 0..<3 { #expect(fixture.target("egress.example.com", tunnel: "\(address):80") == "\(address):8080") }
        }
        #expect(fixture.target("egress.example.com") == "503")
        let destination = try #require(fixture.router.destination(for: SocketAddress("240.1.0.2:80")!))
        #expect(fixture.router.isReachable(destination))
        let endpoint = try #require(fixture.router.pickEndpoint(for: destination))
        #expect(fixture.snapshot.endpoints[Int(endpoint)].description == "240.1.0.2:8080")
        var history = RetryHistory()
        #expect(fixture.router.alternateEndpoint(cluster: destination.cluster, failed: endpoint, history: &history) == endpoint)
        #expect(fixture.router.pickEndpoint(inCluster: destination.cluster) == nil)
        // a subset with TLS of its own passes through too, to the same address over TLS
        guard case .forward(let endpoint, _, _, _) = fixture.route("vault.example.com", tunnel: "240.2.0.1:80").0 else {
            Issue.record("not forwarded")
            return
        }
        #expect(fixture.snapshot.endpoints[Int(endpoint)].description == "240.2.0.1:80")
        #expect(fixture.snapshot.endpointTransports[Int(endpoint)] == .tls(0))
    }

    @Test func localAnswersAndTheirLabels() throws {
        let f = try Fixture()
        #expect(f.target("nowhere") == "404")
        #expect(f.route("nowhere").1.service == -1)
        #expect(f.target("empty") == "503")  // no endpoint: no healthy upstream
        #expect(f.route("empty").1.service >= 0)
        let (denied, deniedLabels) = f.route("guarded", "/admin/x")
        #expect(f.target("guarded", "/admin/x") == "403")
        guard case .reply(.rbacDenied) = denied else { Issue.record("\(denied)"); return }
        #expect(deniedLabels.policy == "shop/no-admin")
        #expect(f.route("guarded", "/ok").1.policy == "shop/frontend-only")  // allowed by the ALLOW policy
        #expect(f.target("guarded", "/ok", peer: stranger) == "403")  // no ALLOW matched: denied, no policy named
        #expect(f.route("guarded", "/ok", peer: stranger).1.policy == nil)
        #expect(f.route("web").1.policy == nil)  // no policy applies
    }

    @Test func roundRobinVisitsEveryEndpointInTurn() throws {
        let f = try Fixture()
        let picks = (0..<6).map { _ in f.target("web") }
        #expect(Set(picks) == ["10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080"])
        #expect(Array(picks[0..<3]) == Array(picks[3..<6]))
        #expect(f.target("api") == "10.0.1.1:9090")
    }

    @Test func outlierDetectionEjectsThenBringsBack() throws {
        let f = try Fixture()
        let cluster = f.cluster(of: "web")
        let bad = f.snapshot.endpoints.firstIndex { $0.description == "10.0.0.2:8080" }.map(Int32.init)!
        f.router.reportAttempt(endpoint: bad, cluster: cluster, result: .status(503))
        #expect((0..<6).contains { _ in f.target("web") == "10.0.0.2:8080" })  // one 5xx: still in
        f.router.reportAttempt(endpoint: bad, cluster: cluster, result: .status(503))
        #expect(!(0..<6).contains { _ in f.target("web") == "10.0.0.2:8080" })  // two: ejected
        f.clock += 31  // baseEjectionTime 30s
        #expect((0..<6).contains { _ in f.target("web") == "10.0.0.2:8080" })
    }

    @Test func aRetryAvoidsTheEndpointsTriedBefore() throws {
        let f = try Fixture()
        let cluster = f.cluster(of: "web")
        var history = RetryHistory()
        let first = f.snapshot.endpoints.firstIndex { $0.description == "10.0.0.1:8080" }.map(Int32.init)!
        let second = f.router.alternateEndpoint(cluster: cluster, failed: first, history: &history)
        let third = f.router.alternateEndpoint(cluster: cluster, failed: second, history: &history)
        #expect(Set([first, second, third]).count == 3)
        #expect(history.endpoints == [first, second])
        let api = f.cluster(of: "api")  // one endpoint: the same again
        let only = f.snapshot.endpoints.firstIndex { $0.description == "10.0.1.1:9090" }.map(Int32.init)!
        #expect(f.router.alternateEndpoint(cluster: api, failed: only, history: &history) == only)
    }

    /// An endpoint update gives a dead endpoint's index to a new address: the new address is not ejected for
    /// what the old one did, and an ejected endpoint that stays stays ejected.
    @Test func anEndpointUpdateForgetsTheEjectionOfAnAddressThatLeft() throws {
        // `web` alone: a subset with TLS of its own (vault's) makes every update a full compile.
        let f = try Fixture(config.split(separator: "---").prefix(3).joined(separator: "---"))
        let cluster = f.cluster(of: "web")
        let index = { (address: String) in f.snapshot.endpoints.firstIndex { $0.description == address }.map(Int32.init)! }
        for address in ["10.0.0.2:8080", "10.0.0.3:8080"] {
            for _ in 0..<2 { f.router.reportAttempt(endpoint: index(address), cluster: cluster, result: .status(503)) }
        }
        let compiled = try f.rollOutWeb()
        #expect(compiled.snapshot.endpoints[Int(index("10.0.0.2:8080"))].description == "10.0.0.9:8080")
        #expect(compiled.snapshot.revisedEndpoints == [index("10.0.0.2:8080")])
        let picks = (0..<6).map { _ in f.target("web") }
        #expect(Set(picks) == ["10.0.0.1:8080", "10.0.0.9:8080"])  // .3 still ejected
    }

    /// A tunnel outlives snapshots. After a full compile that renumbers the virtual hosts (a Service listed
    /// before the others) its requests still go where its address leads; after one without its address they
    /// are answered 503, never as another service; and a workload address whose endpoint index went to another
    /// address (an endpoint update) is not followed there.
    @Test func aTunnelKeepsItsDestinationAcrossReloads() throws {
        let f = try Fixture()
        let egress = try #require(f.router.destination(for: SocketAddress("240.1.0.1:80")!))
        try f.reload(Fixture.serviceListedFirst + config, generation: 2)
        #expect(f.router.destination(for: SocketAddress("240.1.0.1:80")!)?.virtualHost == egress.virtualHost + 1)
        #expect(f.target("egress.example.com", accepted: egress) == "240.1.0.1:8080")
        // Looked up once: the tunnel holds the current destination for its next requests.
        #expect(f.routedDestination?.lineage == f.router.snapshot.lineage)
        #expect(f.routedDestination?.virtualHost == egress.virtualHost + 1)
        let withoutEgress = config.split(separator: "---").filter { !$0.contains("name: egress") }.joined(separator: "---")
        try f.reload(withoutEgress, generation: 3)
        #expect(f.target("egress.example.com", accepted: egress) == "503")
        #expect(f.routedDestination != nil)  // kept, stale: never routed by the Host header instead

        let w = try Fixture(config.split(separator: "---").prefix(3).joined(separator: "---"))
        let workload = try #require(w.router.destination(for: SocketAddress("10.0.0.2:8080")!))
        #expect(w.target("web", accepted: workload) == "10.0.0.2:8080")
        let compiled = try w.rollOutWeb()
        #expect(compiled.snapshot.endpoints[Int(workload.endpoint)].description == "10.0.0.9:8080")
        #expect(w.target("web", accepted: workload) == "503")
    }

    /// A request holds the cluster and endpoint it was routed to while it waits (a retry's backoff, an external
    /// check, a connection). A full compile renumbers clusters: they follow by name, endpoints by address (a
    /// subset's TLS variant stays the variant), and what the reload took away is -1, never another service.
    /// Two reloads on, nothing is left to tell. Within a lineage, an index an update gave to another address is
    /// -1, and the retry picks afresh.
    @Test func indicesARequestHoldsAreRenumberedAcrossReloads() throws {
        let f = try Fixture()
        let held = { (host: String, tunnel: String?) -> (cluster: Int32, endpoint: Int32, generation: UInt64) in
            guard case .forward(let endpoint, _, let cluster, _) = f.route(host, tunnel: tunnel).0 else { return (-9, -9, 0) }
            return (cluster, endpoint, f.router.generation)
        }
        let renumbered = { (held: (cluster: Int32, endpoint: Int32, generation: UInt64)) -> (cluster: Int32, endpoint: String) in
            var (cluster, endpoint, generation) = held
            f.router.renumber(cluster: &cluster, endpoint: &endpoint, since: &generation)
            #expect(generation == f.router.generation)
            return (cluster, endpoint >= 0 ? f.router.snapshot.endpoints[Int(endpoint)].description : "gone")
        }
        let api = held("api", nil)
        let vault = held("vault.example.com", "240.2.0.1:80")
        try f.reload(Fixture.serviceListedFirst + config, generation: 2)
        let apiNow = renumbered(api)
        #expect(apiNow.cluster == f.cluster(of: "api") && apiNow.cluster != api.cluster)
        #expect(apiNow.endpoint == "10.0.1.1:9090")
        var (cluster, endpoint, generation) = vault
        f.router.renumber(cluster: &cluster, endpoint: &endpoint, since: &generation)
        #expect(f.router.snapshot.endpoints[Int(endpoint)].description == "240.2.0.1:80")
        #expect(f.router.snapshot.endpointTransports[Int(endpoint)] == .tls(0))
        #expect(cluster != vault.cluster && f.router.snapshot.clusters[Int(cluster)].name.hasSuffix("|tls"))

        let apiAgain = held("api", nil)
        try f.reload(config.split(separator: "---").filter { !$0.contains("name: api") }.joined(separator: "---"), generation: 3)
        #expect(renumbered(apiAgain) == (-1, "gone"))
        #expect(renumbered(api) == (-1, "gone"))  // two reloads ago
        var history = RetryHistory()
        #expect(f.router.alternateEndpoint(cluster: -1, failed: -1, history: &history) == -1)
        #expect(f.router.limits(cluster: -1) == nil)
        f.router.reportAttempt(endpoint: -1, cluster: -1, result: .status(503))

        let w = try Fixture(config.split(separator: "---").prefix(3).joined(separator: "---"))
        let picks = (0..<3).map { _ -> (cluster: Int32, endpoint: Int32, generation: UInt64) in
            guard case .forward(let endpoint, _, let cluster, _) = w.route("web").0 else { return (-9, -9, 0) }
            return (cluster, endpoint, w.router.generation)
        }
        let left = try #require(picks.first { w.snapshot.endpoints[Int($0.endpoint)].description == "10.0.0.2:8080" })
        let stays = try #require(picks.first { w.snapshot.endpoints[Int($0.endpoint)].description == "10.0.0.1:8080" })
        _ = try w.rollOutWeb()
        for (held, expected) in [(left, Int32(-1)), (stays, stays.endpoint)] {
            var (cluster, endpoint, generation) = held
            w.router.renumber(cluster: &cluster, endpoint: &endpoint, since: &generation)
            #expect(cluster == held.cluster && endpoint == expected)
            let retry = w.router.alternateEndpoint(cluster: cluster, failed: endpoint, history: &history)
            #expect(["10.0.0.1:8080", "10.0.0.3:8080", "10.0.0.9:8080"].contains(w.router.snapshot.endpoints[Int(retry)].description))
        }
    }

    @Test func aReloadKeepsTheEjectionsOfEndpointsThatStay() throws {
        let f = try Fixture()
        let cluster = f.cluster(of: "web")
        let bad = f.snapshot.endpoints.firstIndex { $0.description == "10.0.0.3:8080" }.map(Int32.init)!
        f.router.reportAttempt(endpoint: bad, cluster: cluster, result: .status(502))
        f.router.reportAttempt(endpoint: bad, cluster: cluster, result: .status(502))
        try f.reload(config, generation: 2)
        #expect(!(0..<6).contains { _ in f.target("web") == "10.0.0.3:8080" })
    }
}
