import Testing
@testable import WaypointConfig

@Suite struct LocalityTests {
    /// Istio's default failover order for a proxy in r1/z1/s1.
    @Test(arguments: [
        ("r1/z1/s1", 0), ("r1/z1/s2", 1), ("r1/z1", 1), ("r1/z2/s1", 2), ("r2/z1/s1", 3), ("", 3),
        ("/z1", 1),  // a zone alone (an EndpointSlice's `zone`) is taken to be in the proxy's region
        ("/z9", 3),
    ])
    func priority(endpoint: String, expected: Int) throws {
        let own = try #require(Locality("r1/z1/s1"))
        #expect(own.priority(of: try #require(Locality(endpoint))) == expected)
    }

    @Test func parsing() {
        #expect(Locality("us-east1/us-east1-b") == Locality(region: "us-east1", zone: "us-east1-b"))
        #expect(Locality("r.z.s", separator: ".") == Locality(region: "r", zone: "z", subzone: "s"))
        #expect(Locality("a/b/c/d") == nil)
    }

    private static let manifests = """
        apiVersion: v1
        kind: Service
        metadata: {name: web, namespace: shop}
        spec: {ports: [{name: http, port: 80}]}
        ---
        apiVersion: v1
        kind: Node
        metadata: {name: n2, labels: {topology.kubernetes.io/region: r1, topology.kubernetes.io/zone: z2}}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: p3, namespace: shop, labels: {istio-locality: r1.z1.s1}}
        status: {podIP: 10.0.0.3}
        ---
        apiVersion: discovery.k8s.io/v1
        kind: EndpointSlice
        metadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}
        ports: [{name: http, port: 8080}]
        endpoints:
        - {addresses: [10.0.0.1], zone: z1}
        - {addresses: [10.0.0.2], nodeName: n2}
        - {addresses: [10.0.0.3], zone: z9}
        - {addresses: [10.0.0.4]}
        ---
        apiVersion: networking.istio.io/v1
        kind: ServiceEntry
        metadata: {name: ext, namespace: shop}
        spec:
          hosts: [ext.example.com]
          resolution: STATIC
          ports: [{name: http, number: 80}]
          endpoints: [{address: 10.1.0.1, locality: r2/z1}, {address: 10.1.0.2, locality: r1/z1/s1}]
        """

    private func tiers(_ destinationRules: String, locality: String? = "r1/z1/s1") throws -> [String: [[String]]] {
        var compiler = SnapshotCompiler(namespace: "shop")
        compiler.locality = locality.flatMap { Locality($0) }
        let snapshot = compiler.compile(
            try ManifestLoader.load(text: Self.manifests + destinationRules, file: "l.yaml", defaultNamespace: "shop"),
            generation: 1)
        var result: [String: [[String]]] = [:]
        for cluster in snapshot.clusters {
            if let tiers = cluster.tiers { result[cluster.name] = tiers.map { $0.map { snapshot.endpoints[Int($0)].description } } }
        }
        return result
    }

    private static func rule(_ host: String, _ policy: String) -> String {
        "\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: \(host.prefix(3)), namespace: shop}\n"
            + "spec: {host: \(host), trafficPolicy: \(policy)}\n"
    }

    /// Pod label first, then the Node's labels, then the slice's zone; unknown is farthest.
    @Test func endpointsAreTieredByNearness() throws {
        let found = try tiers(Self.rule("web", "{outlierDetection: {}}") + Self.rule("ext.example.com", "{outlierDetection: {}}"))
        #expect(found["shop/web:80"] == [["10.0.0.3:8080"], ["10.0.0.1:8080"], ["10.0.0.2:8080"], ["10.0.0.4:8080"]])
        #expect(found["ext.example.com:80"] == [["10.1.0.2:80"], ["10.1.0.1:80"]])
    }

    /// Istio's locality load balancing needs outlier detection; a hash ring has no tiers; nor does a proxy
    /// that does not know where it runs.
    @Test func tiersOnlyWhereTheyApply() throws {
        #expect(try tiers(Self.rule("web", "{loadBalancer: {simple: ROUND_ROBIN}}")).isEmpty)
        #expect(try tiers(Self.rule("web", "{outlierDetection: {}, loadBalancer: {consistentHash: {useSourceIp: true}}}")).isEmpty)
        #expect(try tiers(Self.rule("web", "{outlierDetection: {}}"), locality: nil).isEmpty)
    }
}
