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
