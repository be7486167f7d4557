import Filters
import JWT
import Testing
import WaypointConfig
import WaypointCore

private let services = """
    apiVersion: v1
    kind: Service
    metadata: {name: web, namespace: shop}
    spec: {ports: [{name: http, port: 80}]}
    ---
    apiVersion: v1
    kind: Service
    metadata: {name: api, namespace: shop}
    spec: {ports: [{name: http, port: 80}]}
    ---
    apiVersion: v1
    kind: Service
    metadata: {name: other, namespace: blog}
    spec: {ports: [{name: http, port: 80}]}
    """

private let gatewayObject = """

    ---
    apiVersion: gateway.networking.k8s.io/v1
    kind: Gateway
    metadata: {name: waypoint, namespace: shop}
    spec:
      gatewayClassName: istio-waypoint
      listeners: [{name: mesh, port: 15008, protocol: HBONE}]
    """

private func policy(_ name: String, _ namespace: String, _ spec: String) -> String {
    "\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: \(name), namespace: \(namespace)}\nspec:\n\(spec)\n"
}

/// Which policies apply to which service's virtual host, by name.
private func applying(_ yaml: String, layered: Bool = true, gatewayRead: Bool = true) throws -> [String: [String]] {
    let spec = try ManifestLoader.load(text: services + (gatewayRead ? gatewayObject : "") + yaml, file: "p.yaml", defaultNamespace: "shop")
    var compiler = SnapshotCompiler(namespace: "shop")
    compiler.layeredAuthorization = layered
    let snapshot = compiler.compile(spec, generation: 1)
    var result: [String: [String]] = [:]
    for (host, name) in [("web.shop", "web"), ("api.shop", "api"), ("other.blog", "other")] {
        let index = Array(host.utf8).withUnsafeBytes { snapshot.routes.virtualHost(forHost: $0)!.index }
        let set = snapshot.authorization[Int(index)]
        result[name] = (set.custom + set.deny + set.allow + set.audit).map(\.name).sorted()
    }
    return result
}

@Suite struct PolicyScopeTests {
    @Test func serviceTargetRefAppliesToThatServiceOnly() throws {
        let scope = try applying(policy("p", "shop", "  targetRefs: [{kind: Service, group: \"\", name: web}]\n  rules: [{}]"))
        #expect(scope == ["web": ["shop/p"], "api": [], "other": []])
    }

    @Test func gatewayTargetRefAppliesToAllTraffic() throws {
        let scope = try applying(
            policy(
                "p", "shop",
                "  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]\n  action: DENY\n  rules: [{}]"))
        #expect(scope == ["web": ["shop/p"], "api": ["shop/p"], "other": ["shop/p"]])
    }

    /// The waypoint's own Gateway (`--gateway` in its namespace) is known without its object (in the API source it
    /// may not be read yet, or not be readable): a policy bound to it must never be dropped.
    @Test func ownGatewayTargetRefAppliesWithoutItsObject() throws {
        let scope = try applying(
            policy(
                "p", "shop",
                "  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]\n  action: DENY\n  rules: [{}]"),
            gatewayRead: false)
        #expect(scope == ["web": ["shop/p"], "api": ["shop/p"], "other": ["shop/p"]])
    }

    /// Another waypoint's policies are not this one's, even when that Gateway's object is in the config.
    @Test func anotherGatewaysPolicyAppliesNowhereHere() throws {
        let other =
            "\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: east, namespace: shop}\n"
            + "spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}\n"
        let scope = try applying(
            other
                + policy(
                    "p", "shop",
                    "  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: east}]\n  action: ALLOW\n  rules: [{}]"))
        #expect(scope == ["web": [], "api": [], "other": []])
    }

    @Test func namespaceAndRootPoliciesAreLayered() throws {
        let yaml = policy("ns-wide", "shop", "  {}") + policy("mesh-wide", "istio-system", "  action: DENY\n  rules: [{}]")
        #expect(
            try applying(yaml) == [
                "web": ["istio-system/mesh-wide", "shop/ns-wide"], "api": ["istio-system/mesh-wide", "shop/ns-wide"],
                "other": ["istio-system/mesh-wide"],
            ])
        #expect(try applying(yaml, layered: false) == ["web": [], "api": [], "other": []])
    }

    @Test func selectorPoliciesAreIgnored() throws {
        #expect(
            try applying(policy("p", "shop", "  selector: {matchLabels: {app: web}}\n  rules: [{}]")) == [
                "web": [], "api": [], "other": [],
            ])
    }
}

@Suite struct PrincipalIndexTests {
    /// The index must never change a decision: the same requests against the same policies, 300 of them keyed by
    /// principal plus wildcard ones, decide as a plain walk would.
    @Test(arguments: ["cluster.local/ns/a/sa/s7", "cluster.local/ns/a/sa/s299", "cluster.local/ns/a/sa/none", "cluster.local/ns/b/sa/x"])
    func indexKeepsDecisions(principal: String) {
        var policies: [AuthorizationPolicy] = []
        for i in 0..<300 {
            var source = AuthorizationPolicy.Source()
            source.principals = [StringMatch("cluster.local/ns/a/sa/s\(i)")]
            policies.append(AuthorizationPolicy(name: "allow-\(i)", action: .allow, rules: [.init(from: [source])]))
        }
        var prefix = AuthorizationPolicy.Source()
        prefix.principals = [StringMatch("cluster.local/ns/b/*")]
        policies.append(AuthorizationPolicy(name: "allow-b", action: .allow, rules: [.init(from: [prefix])]))
        var request = AuthorizationRequest()
        request.principal = principal
        let expected: AuthorizationDecision
        switch principal {
        case "cluster.local/ns/a/sa/s7": expected = .allow(policy: "allow-7")
        case "cluster.local/ns/a/sa/s299": expected = .allow(policy: "allow-299")
        case "cluster.local/ns/b/sa/x": expected = .allow(policy: "allow-b")
        default: expected = .deny(policy: nil)
        }
        #expect(PolicySet(policies: policies).evaluate(request) == expected)
    }
}

@Suite struct RequestAuthenticationCompileTests {
    private static func compile(_ yaml: String, jwks: [String: JSONWebKeySet] = [:]) throws -> (
        issuers: [String: [String]], warnings: [String]
    ) {
        let spec = try ManifestLoader.load(text: services + gatewayObject + yaml, file: "r.yaml", defaultNamespace: "shop")
        var compiler = SnapshotCompiler(namespace: "shop")
        compiler.jwks = jwks
        let snapshot = compiler.compile(spec, generation: 1)
        var issuers: [String: [String]] = [:]
        for (host, name) in [("web.shop", "web"), ("api.shop", "api"), ("other.blog", "other")] {
            let index = Array(host.utf8).withUnsafeBytes { snapshot.routes.virtualHost(forHost: $0)!.index }
            issuers[name] = snapshot.authentication[Int(index)]?.rules.map(\.issuer) ?? []
        }
        return (issuers, snapshot.warnings)
    }

    private static func rule(_ name: String, target: String, issuer: String) -> String {
        """

        ---
        apiVersion: security.istio.io/v1
        kind: RequestAuthentication
        metadata: {name: \(name), namespace: shop}
        spec:
          \(target)
          jwtRules: [{issuer: \(issuer), jwksUri: "https://\(issuer)/keys", fromHeaders: [{name: X-Token}]}]
        """
    }

    @Test func rulesApplyWhereTheirTargetRefsPointAndUnfetchedKeysRefuseTokens() throws {
        let yaml =
            Self.rule("web-only", target: "targetRefs: [{kind: Service, group: \"\", name: web}]", issuer: "a.example")
            + Self.rule(
                "everything", target: "targetRef: {kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}", issuer: "b.example")
            + Self.rule("pods", target: "selector: {matchLabels: {app: web}}", issuer: "c.example")
        let (issuers, warnings) = try Self.compile(yaml)
        #expect(issuers == ["web": ["a.example", "b.example"], "api": ["b.example"], "other": ["b.example"]])
        #expect(warnings.contains("RequestAuthentication shop/pods: a workload selector selects pods, not a waypoint: ignored here"))
        #expect(warnings.contains { $0.contains("the keys of issuer a.example are not fetched yet from https://a.example/keys") })
    }

    @Test func jwtRuleFieldsAreCheckedWithTheirNames() {
        for (field, message) in [
            ("{issuer: x}", "needs jwks or jwksUri"), ("{issuer: x, jwksUri: ftp://x/keys}", "must be an http:// or https:// URL"),
            ("{jwksUri: https://x/keys}", "issuer"), (#"{issuer: x, jwks: '{"keys":[]}'}"#, "no RSA or EC"),
        ] {
            let yaml =
                "\n---\napiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: r, namespace: shop}\nspec: {jwtRules: [\(field)]}\n"
            do {
                _ = try ManifestLoader.load(text: yaml, file: "r.yaml", defaultNamespace: "shop")
                Issue.record("\(field) was accepted")
            } catch {
                #expect("\(error)".contains(message) && "\(error)".contains("RequestAuthentication shop/r"), "\(error)")
            }
        }
    }
}

/// The `istio` ConfigMap's mesh config: ext_authz providers, and the CUSTOM policies that name them.
@Suite struct ExternalAuthorizerConfigTests {
    private static let mesh = """

        ---
        apiVersion: v1
        kind: ConfigMap
        metadata: {name: istio, namespace: istio-system}
        data:
          mesh: |
            defaultConfig: {discoveryAddress: "istiod.istio-system.svc:15012"}
            extensionProviders:
            - name: zipkin
              zipkin: {service: zipkin.istio-system.svc.cluster.local, port: 9411}
            - name: opa
              envoyExtAuthzGrpc:
                service: opa.shop.svc.cluster.local
                port: 9191
                timeout: 250ms
                failOpen: true
                includeRequestBodyInCheck: {maxRequestBytes: 4096, packAsBytes: true}
            - name: oauth2
              envoyExtAuthzHttp:
                service: blog/other.blog.svc.cluster.local
                port: 80
                statusOnError: "503"
                pathPrefix: /oauth2/auth
                headersToUpstreamOnAllow: [x-auth-request-*]
            - name: nowhere
              envoyExtAuthzHttp: {service: gone.shop.svc.cluster.local, port: 80}
        """

    private static func compile(_ yaml: String) throws -> Snapshot {
        let spec = try ManifestLoader.load(text: services + mesh + yaml, file: "m.yaml", defaultNamespace: "shop")
        return SnapshotCompiler(namespace: "shop").compile(spec, generation: 1)
    }

    @Test func providersAreReadAndTheirServicesResolved() throws {
        let snapshot = try Self.compile("")
        #expect(snapshot.authorizers.map(\.name) == ["opa", "oauth2", "nowhere"])
        let (opa, oauth2, nowhere) = (snapshot.authorizers[0], snapshot.authorizers[1], snapshot.authorizers[2])
        #expect(opa.timeout == .milliseconds(250) && opa.failOpen && opa.statusOnError == 403)
        #expect(opa.authority == "opa.shop.svc.cluster.local:9191")
        #expect(opa.bodyInCheck == .init(maxBytes: 4096, allowPartial: false, packAsBytes: true) && oauth2.bodyInCheck == nil)
        #expect(opa.cluster == -1)  // no such Service port: its checks fail (open, here)
        #expect(oauth2.cluster >= 0 && snapshot.clusters[Int(oauth2.cluster)].name == "blog/other:80")
        #expect(oauth2.statusOnError == 503 && oauth2.timeout == .seconds(600) && !oauth2.failOpen)
        guard case .http(let settings) = oauth2.api else { Issue.record("not HTTP"); return }
        #expect(
            settings.pathPrefix == Array("/oauth2/auth".utf8)
                && settings.headersToUpstreamOnAllow == [.prefix(Array("x-auth-request-".utf8))])
        #expect(nowhere.cluster == -1)
        #expect(
            snapshot.warnings.contains {
                $0.contains("extension provider nowhere: service gone.shop.svc.cluster.local port 80 is not known")
            })
    }

    @Test func customPoliciesNameTheirProviderOrDeny() throws {
        let policies = """

            ---
            apiVersion: security.istio.io/v1
            kind: AuthorizationPolicy
            metadata: {name: ext, namespace: shop}
            spec:
              targetRefs: [{kind: Service, group: "", name: web}]
              action: CUSTOM
              provider: {name: oauth2}
              rules: [{}]
            ---
            apiVersion: security.istio.io/v1
            kind: AuthorizationPolicy
            metadata: {name: typo, namespace: shop}
            spec:
              targetRefs: [{kind: Service, group: "", name: api}]
              action: CUSTOM
              provider: {name: oauth}
              rules: [{}]
            """
        let snapshot = try Self.compile(policies)
        func set(_ host: String) -> PolicySet {
            snapshot.authorization[Int(Array(host.utf8).withUnsafeBytes { snapshot.routes.virtualHost(forHost: $0)!.index })]
        }
        #expect(set("web.shop").custom.map(\.provider) == [1])
        // an unknown provider fails closed: the policy denies what it selects
        #expect(set("api.shop").custom.isEmpty && set("api.shop").deny.map(\.name) == ["shop/typo"])
        #expect(
            snapshot.warnings.contains {
                $0.contains("AuthorizationPolicy shop/typo: extension provider \"oauth\" is not in the mesh config")
            })
    }

    @Test(arguments: [
        (
            "  action: CUSTOM\n  rules: [{}]",
            "p.yaml: document 0 (AuthorizationPolicy shop/p): spec.provider.name: a CUSTOM policy names its extension provider"
        ),
        (
            "  action: DENY\n  provider: {name: opa}\n  rules: [{}]",
            "p.yaml: document 0 (AuthorizationPolicy shop/p): spec.provider: only a CUSTOM policy has a provider"
        ),
    ])
    func providerMistakesNameTheField(spec: String, expected: String) {
        let yaml = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: shop}\nspec:\n\(spec)\n"
        do {
            _ = try ManifestLoader.load(text: yaml, file: "p.yaml", defaultNamespace: "shop")
            Issue.record("loaded")
        } catch {
            #expect("\(error)" == expected)
        }
    }

    @Test(arguments: [
        ("port: 70000", "envoyExtAuthzGrpc.port: 70000 is out of range 1...65535"),
        (
            "port: 9191, includeRequestBodyInCheck: {allowPartialMessage: true}",
            "envoyExtAuthzGrpc.includeRequestBodyInCheck.maxRequestBytes: maxRequestBytes is required (Envoy buffers at most that much)"
        ),
        (
            "port: 9191, includeRequestBodyInCheck: {maxRequestBytes: 0}",
            "envoyExtAuthzGrpc.includeRequestBodyInCheck.maxRequestBytes: 0 is out of range 1...4294967295"
        ),
    ])
    func meshConfigErrorsNameTheFieldInside(fields: String, expected: String) {
        let yaml = """
            apiVersion: v1
            kind: ConfigMap
            metadata: {name: istio, namespace: istio-system}
            data:
              mesh: |
                extensionProviders:
                - name: opa
                  envoyExtAuthzGrpc: {service: opa.shop.svc.cluster.local, \(fields)}
            """
        do {
            _ = try ManifestLoader.load(text: yaml, file: "mesh.yaml", defaultNamespace: "shop")
            Issue.record("loaded")
        } catch {
            let prefix = "mesh.yaml: document 0 (ConfigMap istio-system/istio): data.mesh.extensionProviders[0]."
            #expect("\(error)" == prefix + expected)
        }
    }
}
