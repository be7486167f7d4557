import Filters
import WaypointCore

/// Reads DestinationRule documents: `host`, `trafficPolicy.outlierDetection` and the applied parts of
/// `trafficPolicy.connectionPool`; fields not applied yet are listed in `ignored` for `waypoint check`.
enum TrafficPolicyParser {
    static func destinationRule(_ doc: ManifestNode, namespace: String, name: String) throws(ConfigError) -> DestinationRuleSpec {
        let spec = try doc.required("spec")
        let host = try spec.required("host").string().lowercased()
        var outlier: OutlierDetection? = nil
        var pool: ConnectionPoolSettings? = nil
        var ignored: [String] = []
        if let policy = try spec.optional("trafficPolicy") {
            if let o = try policy.optional("outlierDetection") {
                outlier = OutlierDetection(
                    consecutive5xxErrors: try o.optional("consecutive5xxErrors")?.int(in: 0...Int(Int32.max)),
                    consecutiveGatewayErrors: try o.optional("consecutiveGatewayErrors")?.int(in: 0...Int(Int32.max)),
                    baseEjectionTime: try o.optionalDuration("baseEjectionTime") ?? .seconds(30),
                    maxEjectionPercent: try o.optional("maxEjectionPercent")?.int(in: 0...100) ?? 10)
                // Istio's default when outlierDetection is present without counts: 5 consecutive 5xx.
                if outlier!.consecutive5xxErrors == nil && outlier!.consecutiveGatewayErrors == nil { outlier!.consecutive5xxErrors = 5 }
            }
            if let cp = try policy.optional("connectionPool") {
                var settings = ConnectionPoolSettings()
                if let tcp = try cp.optional("tcp") {
                    settings.connectTimeout = try tcp.optionalDuration("connectTimeout")
                    for key in ["maxConnections", "tcpKeepalive", "idleTimeout", "maxConnectionDuration"] where try tcp.optional(key) != nil {
                        ignored.append("connectionPool.tcp.\(key)")
                    }
                }
                if let http = try cp.optional("http") {
                    settings.maxRequestsPerConnection = try http.optional("maxRequestsPerConnection")?.int(in: 0...Int(Int32.max))
                    settings.maxRetries = try http.optional("maxRetries")?.int(in: 0...Int(Int32.max))
                    for key in ["http1MaxPendingRequests", "http2MaxRequests", "idleTimeout", "h2UpgradePolicy", "maxConcurrentStreams"]
                    where try http.optional(key) != nil {
                        ignored.append("connectionPool.http.\(key)")
                    }
                }
                pool = settings
            }
            for key in ["loadBalancer", "tls", "portLevelSettings", "tunnel", "proxyProtocol"] where try policy.optional(key) != nil {
                ignored.append(key)
            }
        }
        if try spec.optional("subsets") != nil { ignored.append("subsets") }
        return DestinationRuleSpec(namespace: namespace, name: name, host: host, outlierDetection: outlier, connectionPool: pool,
                                   ignoredFields: ignored)
    }
}
