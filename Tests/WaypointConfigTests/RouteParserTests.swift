import Testing
import WaypointConfig

@Suite struct RouteTimeoutParsingTests {
    private func load(_ rule: String) throws(ConfigErrors) -> ConfigSpec {
        try ManifestLoader.load(
            text: """
                apiVersion: v1
                kind: Service
                metadata: {name: web, namespace: shop}
                spec: {ports: [{name: http, port: 80}]}

                ---
                apiVersion: gateway.networking.k8s.io/v1
                kind: HTTPRoute
                metadata: {name: r, namespace: shop}
                spec:
                  parentRefs: [{group: "", kind: Service, name: web}]
                  rules:
                  - backendRefs: [{name: web, port: 80}]
                \(rule)
                """, file: "r.yaml", defaultNamespace: "shop")
    }

    @Test func timeoutsAndRetryAreRead() throws {
        let rule = try load(
            "    timeouts: {request: 2s, backendRequest: 500ms}\n    retry: {attempts: 3, codes: [502, 503], backoff: 100ms}"
        ).httpRoutes[0].rules[0]
        #expect(rule.requestTimeout == .seconds(2) && rule.backendRequestTimeout == .milliseconds(500))
        #expect(rule.retry?.codes == [502, 503] && rule.retry?.attempts == 3 && rule.retry?.backoff == .milliseconds(100))
    }

    @Test(arguments: [
        ("    timeouts: {request: 1s, backendRequest: 2s}", "backendRequest must not be longer than request"),
        ("    timeouts: {request: soon}", "invalid duration \"soon\""),
        ("    retry: {codes: [200]}", "200"),
    ])
    func badValuesNameTheField(rule: String, message: String) {
        #expect(throws: ConfigErrors.self) { try load(rule) }
        do { _ = try load(rule) } catch { #expect(error.errors.contains { "\($0)".contains(message) }) }
    }
}

@Suite struct WaypointForTests {
    private func gateway(_ labels: String) throws(ConfigErrors) -> GatewaySpec {
        try ManifestLoader.load(
            text: """
                apiVersion: gateway.networking.k8s.io/v1
                kind: Gateway
                metadata: {name: waypoint, namespace: shop, labels: {\(labels)}}
                spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}
                """, file: "g.yaml", defaultNamespace: "shop"
        ).gateways[0]
    }

    @Test func istiosLabelSaysWhichTrafficTheWaypointTakes() throws {
        #expect(try gateway("").waypointFor == .service)
        #expect(try gateway("istio.io/waypoint-for: all").waypointFor == .all)
        #expect(try gateway("istio.io/waypoint-for: workload").waypointFor.takesWorkloads)
        #expect(try !gateway("istio.io/waypoint-for: workload").waypointFor.takesServices)
        #expect(try !gateway("istio.io/waypoint-for: none").waypointFor.takesServices)
    }

    @Test func anUnknownValueIsAnErrorNamingTheLabel() {
        #expect {
            _ = try gateway("istio.io/waypoint-for: everything")
        } throws: { error in
            "\(error)".contains("g.yaml") && "\(error)".contains("istio.io/waypoint-for") && "\(error)".contains("everything")
        }
    }
}
