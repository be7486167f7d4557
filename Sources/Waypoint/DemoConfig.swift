/// The config `waypoint run` uses without `--config`, and `waypoint demo` serves: two services in the
/// `default` namespace whose endpoints are the demo origins on 127.0.0.1:18181 and :18182, a mesh route
/// attached to one of them, and a Gateway route for the plaintext listener.
enum DemoConfig {
    static let originA = "127.0.0.1:18181"
    static let originB = "127.0.0.1:18182"

    static let manifests = """
        # Service "reviews" is served by origin a; "ratings" by origin b.
        apiVersion: v1
        kind: Service
        metadata: {name: reviews, namespace: default}
        spec:
          clusterIP: 10.96.0.10
          ports: [{name: http, port: 80, targetPort: 18181}]
        ---
        apiVersion: discovery.k8s.io/v1
        kind: EndpointSlice
        metadata:
          name: reviews-abc12
          namespace: default
          labels: {kubernetes.io/service-name: reviews}
        addressType: IPv4
        ports: [{name: http, port: 18181}]
        endpoints:
        - addresses: [127.0.0.1]
          conditions: {ready: true}
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: ratings, namespace: default}
        spec:
          clusterIP: 10.96.0.11
          ports: [{name: http, port: 80, targetPort: 18182}]
        ---
        apiVersion: discovery.k8s.io/v1
        kind: EndpointSlice
        metadata:
          name: ratings-def34
          namespace: default
          labels: {kubernetes.io/service-name: ratings}
        addressType: IPv4
        ports: [{name: http, port: 18182}]
        endpoints:
        - addresses: [127.0.0.1]
        ---
        # Mesh routing (GAMMA): requests to "reviews" with header x-canary: true, or under /v2, go to "ratings".
        apiVersion: gateway.networking.k8s.io/v1
        kind: HTTPRoute
        metadata: {name: reviews-canary, namespace: default}
        spec:
          parentRefs: [{group: "", kind: Service, name: reviews, port: 80}]
          rules:
          - matches:
            - headers: [{name: x-canary, value: "true"}]
            - path: {type: PathPrefix, value: /v2}
            backendRefs: [{name: ratings, port: 80}]
          - backendRefs: [{name: reviews, port: 80}]
        ---
        # The waypoint itself, and a route on its plaintext listener for host demo.local.
        apiVersion: gateway.networking.k8s.io/v1
        kind: Gateway
        metadata: {name: waypoint, namespace: default, labels: {istio.io/waypoint-for: service}}
        spec:
          gatewayClassName: istio-waypoint
          listeners: [{name: mesh, port: 15008, protocol: HBONE}]
        ---
        apiVersion: gateway.networking.k8s.io/v1
        kind: HTTPRoute
        metadata: {name: demo-site, namespace: default}
        spec:
          parentRefs: [{name: waypoint}]
          hostnames: [demo.local]
          rules:
          - matches: [{path: {type: Exact, value: /}}]
            backendRefs: [{name: reviews, port: 80}]
          - matches: [{path: {type: PathPrefix, value: /ratings}}]
            backendRefs: [{name: ratings, port: 80, weight: 90}, {name: reviews, port: 80, weight: 10}]
        """
}
