import Filters
import WaypointCore

/// Reads DestinationRule documents: `host` and `trafficPolicy.outlierDetection` (other fields are not applied yet).
enum TrafficPolicyParser {
    static func destinationRule(_ doc: ManifestNode, namespace: String, name: String) throws(ConfigError) -> DestinationRuleSpec {
        let spec = try doc.required("spec")
        let host = try spec.required("host").string().lowercased()
        var outlier: OutlierDetection? = nil
        if let policy = try spec.optional("trafficPolicy") {
            if let o = try policy.optional("outlierDetection") {
                outlier = OutlierDetection(
                    consecutive5xxErrors: try o.optional("consecutive5xxErrors")?.int(in: 0...Int(Int32.max)),
                    consecutiveGatewayErrors: try o.optional("consecutiveGatewayErrors")?.int(in: 0...Int(Int32.max)),
                    baseEjectionTime: try duration(o, "baseEjectionTime") ?? .seconds(30),
                    maxEjectionPercent: try o.optional("maxEjectionPercent")?.int(in: 0...100) ?? 10)
                // Istio's default when outlierDetection is present without counts: 5 consecutive 5xx.
                if outlier!.consecutive5xxErrors == nil && outlier!.consecutiveGatewayErrors == nil { outlier!.consecutive5xxErrors = 5 }
            }
        }
        return DestinationRuleSpec(namespace: namespace, name: name, host: host, outlierDetection: outlier)
    }

    private static func duration(_ node: ManifestNode, _ key: String) throws(ConfigError) -> Duration? {
        guard let value = try node.optional(key) else { return nil }
        let text = try value.string()
        guard let parsed = GoDuration.parse(text), parsed > .zero else { throw value.error("invalid duration \"\(text)\"") }
        return parsed
    }
}
