import HTTPRouter
import Testing
import WaypointConfig
import WaypointCore

private let services = """
    apiVersion: v1
    kind: Service
    metadata: {name: reviews, namespace: shop}
    spec:
      clusterIP: 10.96.0.10
      ports: [{name: http, port: 80, targetPort: 8080}, {name: admin, port: 9000, targetPort: admin}]
    ---
    apiVersion: discovery.k8s.io/v1
    kind: EndpointSlice
    metadata: {name: reviews-1, namespace: shop, labels: {kubernetes.io/service-name: reviews}}
    addressType: IPv4
    ports: [{name: http, port: 8080}, {name: admin, port: 9100}]
    endpoints:
    - addresses: [10.1.0.1]
    - addresses: [10.1.0.2]
      conditions: {ready: false}
    - addresses: [10.1.0.3]
      conditions: {ready: true}
    """

private func load(_ text: String) throws(ConfigErrors) -> ConfigSpec {
    try ManifestLoader.load(text: text, file: "test.yaml", defaultNamespace: "shop")
}

private func errors(_ text: String) -> [ConfigError] {
    do {
        _ = try load(text)
        return []
    } catch {
        return error.errors
    }
}

@Suite struct ManifestLoaderTests {
    @Test func loadsServicesAndEndpoints() throws {
        let spec = try load(services)
        #expect(spec.services.count == 1)
        #expect(spec.services[0].ports[1].targetPort == .name("admin"))
        #expect(spec.endpointSlices[0].endpoints.map(\.ready) == [true, false, true])
        let snapshot = SnapshotCompiler(namespace: "shop").compile(spec, generation: 1)
        let http = snapshot.clusters.first { $0.name == "shop/reviews:80" }!
        #expect(http.endpoints.map { snapshot.endpoints[Int($0)].description } == ["10.1.0.1:8080", "10.1.0.3:8080"])
        let admin = snapshot.clusters.first { $0.name == "shop/reviews:9000" }!
        #expect(admin.endpoints.map { snapshot.endpoints[Int($0)].description } == ["10.1.0.1:9100", "10.1.0.3:9100"])
    }

    @Test func unknownKindsAreSkippedWithOneWarningEach() throws {
        let spec = try load(
            services
                + "\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n"
        )
        #expect(spec.warnings.count == 2)
        #expect(spec.warnings[0].contains("apps/v1 Deployment shop/d"))
        #expect(spec.warnings[0].contains("document 2"))
    }

    /// Each malformed document is reported with file, document index, object and field.
    @Test(arguments: [
        (
            "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec:\n  ports: [{port: 99999}]\n",
            "test.yaml: document 0 (Service shop/a): spec.ports[0].port: 99999 is out of range 1...65535"
        ),
        (
            "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec:\n  ports: [{port: eighty}]\n",
            "test.yaml: document 0 (Service shop/a): spec.ports[0].port: expected an integer, got \"eighty\""
        ),
        (
            "apiVersion: v1\nkind: Service\nmetadata: {namespace: x}\nspec: {}\n",
            "test.yaml: document 0: metadata.name: required field is missing"
        ),
        (
            "kind: Service\nmetadata: {name: a}\n",
            "test.yaml: document 0: apiVersion: required field is missing"
        ),
        (
            "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec:\n  clusterIP: 10.0.0.300\n",
            "test.yaml: document 0 (Service shop/a): spec.clusterIP: \"10.0.0.300\" is not an IP address"
        ),
        (
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: s}\nendpoints: []\n",
            "test.yaml: document 0 (EndpointSlice shop/s): metadata.labels: label kubernetes.io/service-name is required"
        ),
        (
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec:\n  rules:\n  - matches: [{path: {type: Exact, value: nope}}]\n",
            "test.yaml: document 0 (HTTPRoute shop/r): spec.rules[0].matches[0].path.value: a path must start with \"/\""
        ),
        (
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec:\n  rules:\n  - matches: [{path: {type: RegularExpression, value: \"/(\"}}]\n",
            "test.yaml: document 0 (HTTPRoute shop/r): spec.rules[0].matches[0].path.value: invalid regular expression \"/(\" at offset 2: missing closing parenthesis"
        ),
        (
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec:\n  rules:\n  - backendRefs: [{name: x, weight: -1}]\n",
            "test.yaml: document 0 (HTTPRoute shop/r): spec.rules[0].backendRefs[0].weight: -1 is out of range 0...1000000"
        ),
        (
            // `resolution: NONE` (the default) is passthrough: Istio's validation refuses endpoints there
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: e}\nspec:\n  hosts: [e.example.com]\n  endpoints: [{address: 10.0.0.9}]\n",
            "test.yaml: document 0 (ServiceEntry shop/e): spec.endpoints[0]: endpoints need resolution STATIC, DNS or DNS_ROUND_ROBIN (with NONE, the default, Istio rejects them)"
        ),
        (
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d}\nspec:\n  host: web\n  trafficPolicy: {tls: {mode: SIMPLE, credentialName: c, caCertificates: /ca.pem}}\n",
            "test.yaml: document 0 (DestinationRule shop/d): spec.trafficPolicy.tls.credentialName: cannot specify client certificates or CA certificate if credentialName is set"
        ),
    ])
    func reportsTheField(_ text: String, _ message: String) {
        #expect(errors(text).map(\.description) == [message])
    }

    @Test func everyBadDocumentIsReportedNotJustTheFirst() {
        let text =
            "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 0}]}\n---\n"
            + "apiVersion: v1\nkind: Service\nmetadata: {name: b}\nspec: {ports: [{port: x}]}\n"
        #expect(errors(text).map(\.document) == [0, 1])
    }

    @Test func invalidYAMLNamesTheFile() {
        let found = errors("apiVersion: v1\nkind: [unclosed\n")
        #expect(found.count == 1)
        #expect(found[0].file == "test.yaml")
        #expect(found[0].message.hasPrefix("invalid YAML"))
    }
}

@Suite struct ManifestListTests {
    @Test func listItemsAreLoadedAndErrorsKeepTheirPath() throws {
        let list = """
            apiVersion: v1
            kind: List
            items:
            - apiVersion: v1
              kind: Service
              metadata: {name: a}
              spec: {ports: [{port: 80}]}
            - apiVersion: v1
              kind: Service
              metadata: {name: b}
              spec: {ports: [{port: 0}]}
            """
        do {
            _ = try ManifestLoader.load(text: list, file: "list.yaml", defaultNamespace: "ns")
            Issue.record("accepted a bad port")
        } catch {
            #expect(
                error.errors.map(\.description) == [
                    "list.yaml: document 0 (Service ns/b): items[1].spec.ports[0].port: 0 is out of range 1...65535"
                ])
        }
        let good = try ManifestLoader.load(
            text: list.split(separator: "port: 0", omittingEmptySubsequences: false).joined(separator: "port: 81"), file: "list.yaml",
            defaultNamespace: "ns")
        #expect(good.services.map(\.name) == ["a", "b"])
    }
}
