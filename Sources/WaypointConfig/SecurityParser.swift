import Filters
import JWT

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
    /// A CUSTOM policy's `provider.name`: the mesh config's extension provider that decides.
    public var provider: String?
}

/// `security.istio.io/v1 RequestAuthentication`: the JWT rules for the traffic it targets.
public struct RequestAuthenticationSpec: Sendable {
    public struct Rule: Sendable {
        public enum Keys: Sendable {
            case inline(JSONWebKeySet)
            /// Fetched off the workers (`jwksUri`); until then, no token of this issuer verifies.
            case uri(String)
        }
        public var issuer: String
        public var audiences: [String] = []
        public var jwks: Keys = .uri("")
        public var locations: [JWTRule.Location] = []
        public var forwardOriginalToken = false
        public var outputPayloadToHeader: String?
        public var outputClaimToHeaders: [(header: String, claim: String)] = []

        init(issuer: String) { self.issuer = issuer }
    }
    public var namespace: String
    public var name: String
    public var targetRefs: [AuthorizationPolicySpec.TargetRef]
    public var hasSelector: Bool
    public var rules: [Rule]
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
        let refs = try targetRefs(spec)
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
        // Istio's validation: CUSTOM names its provider, and only CUSTOM has one.
        let provider = try spec?.optional("provider")?.required("name").string()
        if action == .custom && provider == nil {
            throw (spec ?? doc).error("a CUSTOM policy names its extension provider", field: "spec.provider.name")
        }
        if action != .custom && provider != nil {
            throw (spec ?? doc).error("only a CUSTOM policy has a provider", field: "spec.provider")
        }
        return AuthorizationPolicySpec(
            namespace: namespace, name: name, targetRefs: refs,
            hasSelector: try spec?.optional("selector") != nil,
            policy: AuthorizationPolicy(name: "\(namespace)/\(name)", action: action, rules: rules),
            unsupportedKeys: unsupported, provider: provider)
    }

    /// `targetRefs` and the older single `targetRef` of a policy's spec.
    private static func targetRefs(_ spec: ManifestNode?) throws(ConfigError) -> [AuthorizationPolicySpec.TargetRef] {
        var refs: [AuthorizationPolicySpec.TargetRef] = []
        var nodes = try spec?.optionalArray("targetRefs") ?? []
        if let single = try spec?.optional("targetRef") { nodes.append(single) }
        for ref in nodes {
            refs.append(
                .init(
                    group: try ref.optionalString("group") ?? "", kind: try ref.required("kind").string(),
                    name: try ref.required("name").string()))
        }
        return refs
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
        var s = AuthorizationPolicy.Source()
        s.requestPrincipals = try strings(node, "requestPrincipals")
        s.notRequestPrincipals = try strings(node, "notRequestPrincipals")
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
        } else if key.hasPrefix("request.auth.claims[") {
            guard let path = claimPath(key.dropFirst("request.auth.claims".count)) else {
                throw node.error("\"\(key)\" is not a claim: request.auth.claims[name] or request.auth.claims[name][nested]...")
            }
            parsed = .requestClaim(path)
        } else {
            switch key {
            case "source.ip": parsed = .sourceIP; ipKey = true
            case "remote.ip": parsed = .remoteIP; ipKey = true
            case "destination.ip": parsed = .destinationIP; ipKey = true
            case "source.namespace": parsed = .sourceNamespace
            case "source.principal": parsed = .sourcePrincipal
            case "destination.port": parsed = .destinationPort
            case "connection.sni": parsed = .connectionSNI
            case "request.auth.principal": parsed = .requestPrincipal
            case "request.auth.audiences": parsed = .requestAudiences
            case "request.auth.presenter": parsed = .requestPresenter
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

    /// `[a][b]` as `["a", "b"]`; nil when not that form.
    static func claimPath(_ text: Substring) -> [String]? {
        var path: [String] = []
        var rest = text
        while !rest.isEmpty {
            guard rest.first == "[", let close = rest.firstIndex(of: "]") else { return nil }
            let name = rest[rest.index(after: rest.startIndex)..<close]
            guard !name.isEmpty, !name.contains("[") else { return nil }
            path.append(String(name))
            rest = rest[rest.index(after: close)...]
        }
        return path.isEmpty ? nil : path
    }

    static func requestAuthentication(_ doc: ManifestNode, namespace: String, name: String) throws(ConfigError)
        -> RequestAuthenticationSpec
    {
        let spec = try doc.optional("spec")
        let refs = try targetRefs(spec)
        var rules: [RequestAuthenticationSpec.Rule] = []
        for node in try spec?.optionalArray("jwtRules") ?? [] {
            var rule = RequestAuthenticationSpec.Rule(issuer: try node.required("issuer").string())
            for audience in try node.optionalArray("audiences") { rule.audiences.append(try audience.string()) }
            if let jwks = try node.optionalString("jwks") {
                do { rule.jwks = .inline(try JSONWebKeySet(json: jwks)) } catch { throw try node.required("jwks").error("\(error)") }
            } else if let uri = try node.optionalString("jwksUri") {
                guard uri.hasPrefix("https://") || uri.hasPrefix("http://") else {
                    throw try node.required("jwksUri").error("must be an http:// or https:// URL")
                }
                rule.jwks = .uri(uri)
            } else {
                throw node.error("a jwtRule needs jwks or jwksUri (OpenID discovery from the issuer is not supported)")
            }
            for header in try node.optionalArray("fromHeaders") {
                let headerName = try header.required("name").string()
                guard !headerName.isEmpty else { throw try header.required("name").error("must not be empty") }
                rule.locations.append(
                    .header(name: Array(headerName.lowercased().utf8), prefix: Array((try header.optionalString("prefix") ?? "").utf8)))
            }
            for parameter in try node.optionalArray("fromParams") { rule.locations.append(.parameter(try parameter.string())) }
            for cookie in try node.optionalArray("fromCookies") { rule.locations.append(.cookie(try cookie.string())) }
            rule.forwardOriginalToken = try node.optional("forwardOriginalToken")?.bool() ?? false
            rule.outputPayloadToHeader = try node.optionalString("outputPayloadToHeader")
            for output in try node.optionalArray("outputClaimToHeaders") {
                rule.outputClaimToHeaders.append((try output.required("header").string(), try output.required("claim").string()))
            }
            rules.append(rule)
        }
        return RequestAuthenticationSpec(
            namespace: namespace, name: name, targetRefs: refs, hasSelector: try spec?.optional("selector") != nil, rules: rules)
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
