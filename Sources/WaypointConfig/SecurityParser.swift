import Filters

/// `security.istio.io/v1 AuthorizationPolicy`, parsed and compiled (matchers built once).
public struct AuthorizationPolicySpec: Sendable {
    public struct TargetRef: Sendable, Equatable {
        public var group: String
        public var kind: String
        public var name: String
    }
    public var namespace: String
    public var name: String
    public var targetRefs: [TargetRef]
    /// A workload `selector`: such policies select pods (sidecars, ztunnel), never a waypoint.
    public var hasSelector: Bool
    public var policy: AuthorizationPolicy
    /// `when` keys we do not evaluate (Istio ignores unknown ones silently; we warn, and fail closed in DENY).
    public var unsupportedKeys: [String]
}

/// `security.istio.io/v1 PeerAuthentication`.
public struct PeerAuthenticationSpec: Sendable, Equatable {
    public enum Mode: String, Sendable { case unset = "UNSET", permissive = "PERMISSIVE", strict = "STRICT", disable = "DISABLE" }
    public var namespace: String
    public var name: String
    public var hasSelector: Bool
    public var mode: Mode
    public var hasPortLevelMTLS: Bool
}

/// Reads AuthorizationPolicy and PeerAuthentication documents; every error names the field.
enum SecurityParser {
    static let sourceFields: Set<String> = [
        "principals", "notPrincipals", "namespaces", "notNamespaces", "serviceAccounts", "notServiceAccounts", "trustDomains",
        "ipBlocks", "notIpBlocks", "remoteIpBlocks", "notRemoteIpBlocks", "requestPrincipals", "notRequestPrincipals",
    ]
    static let operationFields: Set<String> = ["hosts", "notHosts", "ports", "notPorts", "methods", "notMethods", "paths", "notPaths"]

    static func authorizationPolicy(_ doc: ManifestNode, namespace: String, name: String) throws(ConfigError) -> AuthorizationPolicySpec {
        let spec = try doc.optional("spec")
        var refs: [AuthorizationPolicySpec.TargetRef] = []
        var refNodes = try spec?.optionalArray("targetRefs") ?? []
        if let single = try spec?.optional("targetRef") { refNodes.append(single) }
        for ref in refNodes {
            refs.append(
                .init(
                    group: try ref.optionalString("group") ?? "", kind: try ref.required("kind").string(),
                    name: try ref.required("name").string()))
        }
        let actionText = try spec?.optionalString("action") ?? "ALLOW"
        guard let action = AuthorizationPolicy.Action(rawValue: actionText) else {
            throw (spec ?? doc).error("unknown action \"\(actionText)\" (ALLOW, DENY, AUDIT or CUSTOM)", field: "spec.action")
        }
        var unsupported: [String] = []
        var rules: [AuthorizationPolicy.Rule] = []
        for r in try spec?.optionalArray("rules") ?? [] {
            var rule = AuthorizationPolicy.Rule()
            for f in try r.optionalArray("from") { rule.from.append(try source(try f.required("source"))) }
            for t in try r.optionalArray("to") { rule.to.append(try operation(try t.required("operation"))) }
            for w in try r.optionalArray("when") {
                let (condition, known) = try self.condition(w)
                if !known { unsupported.append(try w.required("key").string()) }
                rule.when.append(condition)
            }
            rules.append(rule)
        }
        return AuthorizationPolicySpec(
            namespace: namespace, name: name, targetRefs: refs,
            hasSelector: try spec?.optional("selector") != nil,
            policy: AuthorizationPolicy(name: "\(namespace)/\(name)", action: action, rules: rules),
            unsupportedKeys: unsupported)
    }

    private static func strings(_ node: ManifestNode, _ key: String, caseInsensitive: Bool = false) throws(ConfigError) -> [StringMatch]? {
        guard let list = try node.optional(key) else { return nil }
        var result: [StringMatch] = []
        for item in try list.array() { result.append(StringMatch(try item.string(), caseInsensitive: caseInsensitive)) }
        return result
    }

    private static func blocks(_ node: ManifestNode, _ key: String) throws(ConfigError) -> [CIDRBlock]? {
        guard let list = try node.optional(key) else { return nil }
        var result: [CIDRBlock] = []
        for item in try list.array() {
            let text = try item.string()
            guard let block = CIDRBlock(text) else { throw item.error("\"\(text)\" is not an IP address or CIDR block") }
            result.append(block)
        }
        return result
    }

    private static func checkFields(_ node: ManifestNode, _ allowed: Set<String>, _ what: String) throws(ConfigError) {
        for (name, _) in try node.entries() {
            guard allowed.contains(name) else { throw node.error("unknown \(what) field \"\(name)\"") }
        }
    }

    static func source(_ node: ManifestNode) throws(ConfigError) -> AuthorizationPolicy.Source {
        try checkFields(node, sourceFields, "source")
        for key in ["requestPrincipals", "notRequestPrincipals"] where try node.optional(key) != nil {
            throw node.error("\(key) needs JWT authentication (RequestAuthentication), which is not supported yet")
        }
        var s = AuthorizationPolicy.Source()
        s.principals = try strings(node, "principals")
        s.notPrincipals = try strings(node, "notPrincipals")
        s.namespaces = try strings(node, "namespaces")
        s.notNamespaces = try strings(node, "notNamespaces")
        s.serviceAccounts = try strings(node, "serviceAccounts")
        s.notServiceAccounts = try strings(node, "notServiceAccounts")
        s.trustDomains = try strings(node, "trustDomains", caseInsensitive: true)
        s.ipBlocks = try blocks(node, "ipBlocks")
        s.notIpBlocks = try blocks(node, "notIpBlocks")
        s.remoteIpBlocks = try blocks(node, "remoteIpBlocks")
        s.notRemoteIpBlocks = try blocks(node, "notRemoteIpBlocks")
        return s
    }

    static func operation(_ node: ManifestNode) throws(ConfigError) -> AuthorizationPolicy.Operation {
        try checkFields(node, operationFields, "operation")
        var o = AuthorizationPolicy.Operation()
        // Hosts compare case-insensitively; the request's host is lower-cased with its port removed, so a
        // pattern with a port (`web:8080`) is matched against `host:port` forms too by Istio: we keep ports out.
        o.hosts = try strings(node, "hosts", caseInsensitive: true)
        o.notHosts = try strings(node, "notHosts", caseInsensitive: true)
        o.methods = try strings(node, "methods")
        o.notMethods = try strings(node, "notMethods")
        o.ports = try ports(node, "ports")
        o.notPorts = try ports(node, "notPorts")
        o.paths = try paths(node, "paths")
        o.notPaths = try paths(node, "notPaths")
        return o
    }

    private static func ports(_ node: ManifestNode, _ key: String) throws(ConfigError) -> [UInt16]? {
        guard let list = try node.optional(key) else { return nil }
        var result: [UInt16] = []
        for item in try list.array() {
            let text = try item.string()
            guard let port = UInt16(text), port > 0 else { throw item.error("\"\(text)\" is not a port") }
            result.append(port)
        }
        return result
    }

    private static func paths(_ node: ManifestNode, _ key: String) throws(ConfigError) -> [PathPattern]? {
        guard let list = try node.optional(key) else { return nil }
        var result: [PathPattern] = []
        for item in try list.array() {
            let text = try item.string()
            guard let pattern = PathPattern(text) else {
                throw item.error("invalid path template \"\(text)\" ({*} is one whole segment, {**} only the last)")
            }
            result.append(pattern)
        }
        return result
    }

    /// A `when` condition; `known` is false for keys we do not evaluate.
    static func condition(_ node: ManifestNode) throws(ConfigError) -> (AuthorizationPolicy.Condition, known: Bool) {
        let key = try node.required("key").string()
        let values = try strings(node, "values")
        let notValues = try strings(node, "notValues")
        guard values != nil || notValues != nil else { throw node.error("a condition needs values or notValues") }
        let parsed: AuthorizationPolicy.Condition.Key
        var ipKey = false
        if key.hasPrefix("request.headers["), key.hasSuffix("]"), key.count > "request.headers[]".count {
            parsed = .requestHeader(Array(key.dropFirst("request.headers[".count).dropLast().lowercased().utf8))
        } else {
            switch key {
            case "source.ip": parsed = .sourceIP; ipKey = true
            case "remote.ip": parsed = .remoteIP; ipKey = true
            case "destination.ip": parsed = .destinationIP; ipKey = true
            case "source.namespace": parsed = .sourceNamespace
            case "source.principal": parsed = .sourcePrincipal
            case "destination.port": parsed = .destinationPort
            case "connection.sni": parsed = .connectionSNI
            default: parsed = .unsupported(key)
            }
        }
        var condition = AuthorizationPolicy.Condition(key: parsed, values: values, notValues: notValues)
        if ipKey {
            condition.blocks = try blocks(node, "values")
            condition.notBlocks = try blocks(node, "notValues")
        }
        if case .unsupported = parsed { return (condition, false) }
        return (condition, true)
    }

    static func peerAuthentication(_ doc: ManifestNode, namespace: String, name: String) throws(ConfigError) -> PeerAuthenticationSpec {
        let spec = try doc.optional("spec")
        let modeText = try spec?.optional("mtls")?.optionalString("mode") ?? "UNSET"
        guard let mode = PeerAuthenticationSpec.Mode(rawValue: modeText) else {
            throw (spec ?? doc).error("unknown mTLS mode \"\(modeText)\" (UNSET, PERMISSIVE, STRICT or DISABLE)", field: "spec.mtls.mode")
        }
        return PeerAuthenticationSpec(
            namespace: namespace, name: name, hasSelector: try spec?.optional("selector") != nil, mode: mode,
            hasPortLevelMTLS: try spec?.optional("portLevelMtls") != nil)
    }
}
