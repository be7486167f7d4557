import Testing
import WaypointConfig

@Suite struct ForeignReferencesTests {
    /// Routes and VirtualServices in `shop` naming Services in `shop` and elsewhere.
    static let manifests = """
        apiVersion: gateway.networking.k8s.io/v1
        kind: HTTPRoute
        metadata: {name: r, namespace: shop}
        spec:
          parentRefs: [{group: "", kind: Service, name: web}]
          rules:
          - backendRefs: [{name: web, port: 80}, {name: db, namespace: data, port: 5432}]
            filters: [{type: RequestMirror, requestMirror: {backendRef: {name: shadow, namespace: qa, port: 80}}}]
          - backendRefs: [{group: networking.istio.io, kind: Hostname, name: api.example.com, port: 443}]
        ---
        apiVersion: gateway.networking.k8s.io/v1alpha2
        kind: TCPRoute
        metadata: {name: t, namespace: shop}
        spec:
          parentRefs: [{group: "", kind: Service, name: web}]
          rules: [{backendRefs: [{name: queue, namespace: jobs, port: 6379}]}]
        ---
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {name: v, namespace: shop}
        spec:
          hosts: [web]
          http:
          - route:
            - {destination: {host: web}, weight: 50}
            - {destination: {host: cart.orders}, weight: 10}
            - {destination: {host: pay.billing.svc}, weight: 10}
            - {destination: {host: auth.id.svc.cluster.local}, weight: 10}
            - {destination: {host: web.shop.svc.cluster.local}, weight: 10}
            - {destination: {host: api.example.com}, weight: 10}
            mirror: {host: logs.audit.svc.cluster.local}
        """

    @Test func servicesOfOtherNamespacesAreFoundAndGrantsOnlyForGatewayRoutes() throws {
        let references = try ManifestLoader.load(text: Self.manifests, file: "r.yaml", defaultNamespace: "shop")
            .foreignReferences(clusterDomain: "cluster.local")
        let found = references.services.sorted().map { "\($0.namespace)/\($0.name)" }
        #expect(found == ["audit/logs", "billing/pay", "data/db", "id/auth", "jobs/queue", "orders/cart", "qa/shadow"])
        #expect(references.grantNamespaces == ["data", "jobs", "qa"])
    }

    /// Once a referenced Service is read, the Pods its selector selects (keys in order); one without a selector
    /// (endpoints managed by hand) or not referenced adds none.
    @Test func theReferencedServicesReadAddTheirPods() throws {
        let services = """
            ---
            apiVersion: v1
            kind: Service
            metadata: {name: db, namespace: data}
            spec: {selector: {tier: db, app: pg}, ports: [{port: 5432}]}
            ---
            apiVersion: v1
            kind: Service
            metadata: {name: cart, namespace: orders}
            spec: {ports: [{port: 80}]}
            ---
            apiVersion: v1
            kind: Service
            metadata: {name: other, namespace: data}
            spec: {selector: {app: other}, ports: [{port: 80}]}
            """
        let references = try ManifestLoader.load(text: Self.manifests + "\n" + services, file: "r.yaml", defaultNamespace: "shop")
            .foreignReferences(clusterDomain: "cluster.local")
        #expect(references.pods.sorted().map { "\($0.namespace) \($0.selector)" } == ["data app=pg,tier=db"])
        #expect(references.namespaces == ["audit", "billing", "data", "id", "jobs", "orders", "qa"])
    }

    @Test func anotherClusterDomainIsNotAService() throws {
        let references = try ManifestLoader.load(text: Self.manifests, file: "r.yaml", defaultNamespace: "shop")
            .foreignReferences(clusterDomain: "corp.example")
        #expect(!references.services.contains(.init(namespace: "id", name: "auth")))
        #expect(references.services.contains(.init(namespace: "billing", name: "pay")))
    }
}
