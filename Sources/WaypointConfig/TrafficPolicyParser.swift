import Filters
import WaypointCore

/// Reads DestinationRule documents: `host`, `trafficPolicy.outlierDetection` and the applied parts of
/// `trafficPolicy.connectionPool`; fields not applied yet are listed in `ignored` for `waypoint check`.
enum TrafficPolicyParser {
    static func destinationRule(_ doc: ManifestNode, namespace: String, name: String) throws(ConfigError) -> DestinationRuleSpec {
        let spec = try doc.required("spec")
        let host = try spec.required("host").string().lowercased()
        var ignored: [String] = []
        var policy = DestinationRuleSpec.Policy()
        var portLevel: [Int: DestinationRuleSpec.Policy] = [:]
        if let node = try spec.optional("trafficPolicy") {
            (policy, portLevel) = try trafficPolicyWithPorts(node, &ignored, prefix: "")
        }
        var subsets: [DestinationRuleSpec.Subset] = []
        for s in try spec.optionalArray("subsets") {
            let name = try s.required("name").string()
            guard !subsets.contains(where: { $0.name == name }) else { throw try s.required("name").error("duplicate subset \"\(name)\"") }
            var subset = DestinationRuleSpec.Subset(name: name, labels: try s.optional("labels")?.stringMap() ?? [:])
            if let node = try s.optional("trafficPolicy") {
                (subset.policy, subset.portLevel) = try trafficPolicyWithPorts(node, &ignored, prefix: "subsets[\(name)].")
            }
            subsets.append(subset)
        }
        return DestinationRuleSpec(
            namespace: namespace, name: name, host: host, outlierDetection: policy.outlierDetection,
            connectionPool: policy.connectionPool, loadBalancer: policy.loadBalancer, subsets: subsets, tls: policy.tls,
            portLevel: portLevel, ignoredFields: ignored)
    }

    /// A `trafficPolicy` (the rule's or a subset's) and its `portLevelSettings` entries by port.
    private static func trafficPolicyWithPorts(
        _ node: ManifestNode, _ ignored: inout [String], prefix: String
    ) throws(ConfigError) -> (DestinationRuleSpec.Policy, [Int: DestinationRuleSpec.Policy]) {
        let policy = try trafficPolicy(node, &ignored, prefix: prefix)
        for key in ["tunnel", "proxyProtocol"] where try node.optional(key) != nil { ignored.append("\(prefix)\(key)") }
        var portLevel: [Int: DestinationRuleSpec.Policy] = [:]
        for settings in try node.optionalArray("portLevelSettings") {
            let portNode = try settings.required("port").required("number")
            let port = try portNode.int(in: 1...65535)
            guard portLevel[port] == nil else { throw portNode.error("another portLevelSettings entry has port \(port)") }
            portLevel[port] = try trafficPolicy(settings, &ignored, prefix: "\(prefix)portLevelSettings[\(port)].")
        }
        return (policy, portLevel)
    }

    /// A traffic policy's applied fields (the rule's, or one port's `portLevelSettings` entry, whose fields
    /// replace the rule's for that port); `prefix` names where it is in `ignored`.
    private static func trafficPolicy(
        _ policy: ManifestNode, _ ignored: inout [String], prefix: String
    ) throws(ConfigError) -> DestinationRuleSpec.Policy {
        var result = DestinationRuleSpec.Policy()
        if let o = try policy.optional("outlierDetection") {
            result.outlierDetection = OutlierDetection(
                consecutive5xxErrors: try o.optional("consecutive5xxErrors")?.int(in: 0...Int(Int32.max)),
                consecutiveGatewayErrors: try o.optional("consecutiveGatewayErrors")?.int(in: 0...Int(Int32.max)),
                baseEjectionTime: try o.optionalDuration("baseEjectionTime") ?? .seconds(30),
                maxEjectionPercent: try o.optional("maxEjectionPercent")?.int(in: 0...100) ?? 10,
                interval: try o.optionalDuration("interval") ?? .seconds(10),
                minHealthPercent: try o.optional("minHealthPercent")?.int(in: 0...100) ?? 0)
            for key in ["consecutiveLocalOriginFailures", "splitExternalLocalOriginErrors"] where try o.optional(key) != nil {
                ignored.append("\(prefix)outlierDetection.\(key)")
            }
            // Istio's default when outlierDetection is present without counts: 5 consecutive 5xx.
            if result.outlierDetection!.consecutive5xxErrors == nil && result.outlierDetection!.consecutiveGatewayErrors == nil {
                result.outlierDetection!.consecutive5xxErrors = 5
            }
        }
        if let cp = try policy.optional("connectionPool") {
            var settings = ConnectionPoolSettings()
            if let tcp = try cp.optional("tcp") {
                settings.connectTimeout = try tcp.optionalDuration("connectTimeout")
                settings.maxConnections = try limit(tcp, "maxConnections")
                for key in ["tcpKeepalive", "idleTimeout", "maxConnectionDuration"] where try tcp.optional(key) != nil {
                    ignored.append("\(prefix)connectionPool.tcp.\(key)")
                }
            }
            if let http = try cp.optional("http") {
                settings.maxRequestsPerConnection = try http.optional("maxRequestsPerConnection")?.int(in: 0...Int(Int32.max))
                settings.maxRetries = try limit(http, "maxRetries")
                settings.maxPendingRequests = try limit(http, "http1MaxPendingRequests")
                settings.maxRequests = try limit(http, "http2MaxRequests")
                for key in ["idleTimeout", "h2UpgradePolicy", "maxConcurrentStreams"]
                where try http.optional(key) != nil {
                    ignored.append("\(prefix)connectionPool.http.\(key)")
                }
            }
            result.connectionPool = settings
        }
        if let node = try policy.optional("tls") { result.tls = try tls(node, &ignored) }
        if let node = try policy.optional("loadBalancer") { result.loadBalancer = try loadBalancer(node, &ignored) }
        return result
    }

    /// `trafficPolicy.tls`: SIMPLE and MUTUAL originate TLS; DISABLE (the default) and ISTIO_MUTUAL (the mesh's
    /// own mTLS, which ambient endpoints get as HBONE) none. MUTUAL without a client certificate and key is an
    /// error, as in Istio's validation.
    private static func tls(_ node: ManifestNode, _ ignored: inout [String]) throws(ConfigError) -> TLSOrigination {
        let modeNode = try node.optional("mode")
        let modeText = try modeNode?.string() ?? "DISABLE"
        guard let mode = modeText == "ISTIO_MUTUAL" ? .disable : TLSOrigination.Mode(rawValue: modeText) else {
            throw (modeNode ?? node).error("unknown TLS mode \"\(modeText)\" (DISABLE, SIMPLE, MUTUAL or ISTIO_MUTUAL)")
        }
        var settings = TLSOrigination(
            mode: mode, caCertificates: try node.optionalString("caCertificates"),
            clientCertificate: try node.optionalString("clientCertificate"), privateKey: try node.optionalString("privateKey"),
            credentialName: try node.optionalString("credentialName"), sni: try node.optionalString("sni"),
            subjectAltNames: try node.optionalArray("subjectAltNames").map { (n) throws(ConfigError) in try n.string() },
            insecureSkipVerify: try node.optional("insecureSkipVerify")?.bool() ?? false)
        if settings.caCertificates?.isEmpty == true { settings.caCertificates = nil }
        if settings.credentialName?.isEmpty == true { settings.credentialName = nil }
        if settings.credentialName != nil && mode != .disable {
            // Istio's validation: the Secret holds them all.
            guard settings.caCertificates == nil && settings.clientCertificate == nil && settings.privateKey == nil else {
                throw node.error(
                    "cannot specify client certificates or CA certificate if credentialName is set", at: "credentialName")
            }
        } else if mode == .mutual && (settings.clientCertificate == nil || settings.privateKey == nil) {
            throw node.error(
                "MUTUAL needs clientCertificate and privateKey (files) or credentialName", at: "clientCertificate")
        }
        return settings
    }

    /// A connection-pool limit: 0 or absent means none (Istio sets only positive values; its default is unlimited).
    private static func limit(_ node: ManifestNode, _ key: String) throws(ConfigError) -> Int? {
        guard let value = try node.optional(key)?.int(in: 0...Int(Int32.max)), value > 0 else { return nil }
        return value
    }

    /// `loadBalancer`: `simple`, or `consistentHash` on a header, a query parameter or the source IP.
    private static func loadBalancer(_ node: ManifestNode, _ ignored: inout [String]) throws(ConfigError) -> LoadBalancer {
        for key in ["localityLbSetting", "warmupDurationSecs", "warmup"] where try node.optional(key) != nil {
            ignored.append("loadBalancer.\(key)")
        }
        if let hash = try node.optional("consistentHash") {
            if let header = try hash.optionalString("httpHeaderName") { return .consistentHash(.header(Array(header.lowercased().utf8))) }
            if let parameter = try hash.optionalString("httpQueryParameterName") {
                return .consistentHash(.queryParameter(Array(parameter.utf8)))
            }
            if try hash.optional("useSourceIp")?.bool() == true { return .consistentHash(.sourceIP) }
            if try hash.optional("httpCookie") != nil {
                ignored.append("loadBalancer.consistentHash.httpCookie (LEAST_REQUEST instead)")
                return .leastRequest
            }
            throw hash.error("one of httpHeaderName, httpQueryParameterName or useSourceIp is required")
        }
        switch try node.optionalString("simple") ?? "LEAST_REQUEST" {
        case "ROUND_ROBIN": return .roundRobin
        case "LEAST_REQUEST", "LEAST_CONN", "UNSPECIFIED": return .leastRequest
        case "RANDOM": return .random
        case "PASSTHROUGH":
            ignored.append("loadBalancer PASSTHROUGH (LEAST_REQUEST instead)")
            return .leastRequest
        case let other:
            throw try node.required("simple").error("unknown load balancer \"\(other)\" (ROUND_ROBIN, LEAST_REQUEST, RANDOM, PASSTHROUGH)")
        }
    }
}
