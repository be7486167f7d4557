import WaypointCore

/// One compiled Istio AuthorizationPolicy: its action and rules, matchers parsed once at load.
public struct AuthorizationPolicy: Sendable {
    public enum Action: String, Sendable { case allow = "ALLOW", deny = "DENY", audit = "AUDIT", custom = "CUSTOM" }

    /// `namespace/name`, for logs, metrics and `explain`.
    public let name: String
    public let action: Action
    /// Istio: "a policy without rules matches nothing"; `rules: [{}]` is one rule that matches everything.
    public let rules: [Rule]
    /// A CUSTOM policy's external authorizer: an index into the snapshot's `authorizers` (-1 otherwise).
    public let provider: Int32

    public init(name: String, action: Action, rules: [Rule], provider: Int32 = -1) {
        self.name = name
        self.action = action
        self.rules = rules
        self.provider = provider
    }

    /// A rule matches when one `from` entry, one `to` entry and every `when` condition match (an empty list
    /// matches everything).
    public struct Rule: Sendable {
        public var from: [Source]
        public var to: [Operation]
        public var when: [Condition]

        public init(from: [Source] = [], to: [Operation] = [], when: [Condition] = []) {
            self.from = from
            self.to = to
            self.when = when
        }
    }

    /// `rules[].from[].source`: every field given must hold (positive lists: any entry; `not…`: none).
    public struct Source: Sendable {
        public var principals: [StringMatch]?
        public var notPrincipals: [StringMatch]?
        public var namespaces: [StringMatch]?
        public var notNamespaces: [StringMatch]?
        /// `ns/sa` pairs.
        public var serviceAccounts: [StringMatch]?
        public var notServiceAccounts: [StringMatch]?
        public var trustDomains: [StringMatch]?
        public var ipBlocks: [CIDRBlock]?
        public var notIpBlocks: [CIDRBlock]?
        public var remoteIpBlocks: [CIDRBlock]?
        public var notRemoteIpBlocks: [CIDRBlock]?
        /// The verified JWT's `iss/sub` (RequestAuthentication).
        public var requestPrincipals: [StringMatch]?
        public var notRequestPrincipals: [StringMatch]?

        public init() {}
    }

    /// `rules[].to[].operation`. `hosts`, `methods` and `paths` (and their `not…`) are HTTP-only.
    public struct Operation: Sendable {
        public var hosts: [StringMatch]?
        public var notHosts: [StringMatch]?
        public var ports: [UInt16]?
        public var notPorts: [UInt16]?
        public var methods: [StringMatch]?
        public var notMethods: [StringMatch]?
        public var paths: [PathPattern]?
        public var notPaths: [PathPattern]?

        public init() {}

        var usesHTTP: Bool {
            hosts != nil || notHosts != nil || methods != nil || notMethods != nil || paths != nil || notPaths != nil
        }
    }

    /// `rules[].when[]`: `key` with `values` (any) and `notValues` (none).
    public struct Condition: Sendable {
        public enum Key: Sendable, Equatable {
            /// `request.headers[name]`, name lower-cased: HTTP-only.
            case requestHeader([UInt8])
            case sourceIP, remoteIP, sourceNamespace, sourcePrincipal, destinationIP, destinationPort, connectionSNI
            /// `request.auth.principal`, `.audiences`, `.presenter`, and `.claims[name]...` (a path into nested
            /// claims): what the verified JWT says. HTTP-only.
            case requestPrincipal, requestAudiences, requestPresenter
            case requestClaim([String])
            /// A key Istio knows but we do not evaluate, or one nobody knows: never matches in an ALLOW rule,
            /// always matches in a DENY rule (fail closed); `waypoint check` warns.
            case unsupported(String)
        }
        public var key: Key
        public var values: [StringMatch]?
        public var notValues: [StringMatch]?
        /// For `source.ip`, `remote.ip` and `destination.ip`: the values as CIDR blocks.
        public var blocks: [CIDRBlock]?
        public var notBlocks: [CIDRBlock]?

        public init(key: Key, values: [StringMatch]?, notValues: [StringMatch]?, blocks: [CIDRBlock]? = nil, notBlocks: [CIDRBlock]? = nil)
        {
            self.key = key
            self.values = values
            self.notValues = notValues
            self.blocks = blocks
            self.notBlocks = notBlocks
        }
    }
}

/// What authorization knows about one request (or one TCP tunnel, with `http` nil).
///
/// Built per request from the peer facts and the parsed head; the byte views are valid for the call only.
public struct AuthorizationRequest {
    public var principal: String?
    public var namespace: String?
    public var serviceAccount: String?
    public var trustDomain: String?
    /// The caller's IP as bytes (4 or 16), for `ipBlocks` and `source.ip` conditions.
    public var sourceIP: [UInt8]?
    /// The address the caller dialed (the tunnel's authority), for `destination.ip` conditions.
    public var destinationIP: [UInt8]?
    public var destinationPort: UInt16?
    public var http: HTTP?
    /// What the request's verified JWT says; nil without one.
    public var jwt: JWTIdentity?

    public init() {}

    /// The HTTP attributes: Host (lower-cased, port stripped), method, normalized path without query, and the
    /// parsed head for header conditions (looked up only when a policy has one).
    public struct HTTP {
        public var host: UnsafeRawBufferPointer
        public var method: UnsafeRawBufferPointer
        public var path: UnsafeRawBufferPointer
        public var head: RequestHead?
        public var headBytes: UnsafeRawBufferPointer

        public init(
            host: UnsafeRawBufferPointer, method: UnsafeRawBufferPointer, path: UnsafeRawBufferPointer,
            head: RequestHead? = nil, headBytes: UnsafeRawBufferPointer = UnsafeRawBufferPointer(start: nil, count: 0)
        ) {
            self.host = host
            self.method = method
            self.path = path
            self.head = head
            self.headBytes = headBytes
        }

        /// A header's value by lower-case name; repeated headers joined with `,` (as Envoy presents them), so a
        /// second copy of a header can neither hide nor replace the first.
        public func header(_ name: [UInt8]) -> [UInt8]? {
            let copies = headerCopies(name)
            guard var value = copies.first else { return nil }
            for copy in copies.dropFirst() { value += [0x2C] + copy }
            return value
        }

        /// Every value of a header, one per line it came on.
        public func headerCopies(_ name: [UInt8]) -> [[UInt8]] {
            guard let head else { return [] }
            var copies: [[UInt8]] = []
            for field in head.headers where Int(field.name.count) == name.count {
                let fieldName = field.name.bytes(in: headBytes)
                guard zip(fieldName, name).allSatisfy({ HTTP1Parser.lowercased($0) == $1 }) else { continue }
                copies.append(Array(field.value.bytes(in: headBytes)))
            }
            return copies
        }
    }
}

/// The outcome of evaluating the policies that apply to a request.
public enum AuthorizationDecision: Equatable, Sendable {
    /// Allowed: by the named ALLOW policy, or with nil because no ALLOW policy applies.
    case allow(policy: String?)
    /// Denied by the named DENY policy, or with nil because ALLOW policies apply and none matched.
    case deny(policy: String?)

    public var isAllowed: Bool { if case .allow = self { return true } else { return false } }
}

/// The policies that apply to one destination, grouped by action in Istio's evaluation order, and indexed so
/// that a decision does not walk every policy.
///
/// The index: a policy whose every rule requires exact `principals` can only match those principals, so it is
/// filed under each of them; the rest are always evaluated. A request then evaluates the policies filed under
/// its principal plus the unfiled ones (measured: 1,000 principal-keyed policies cost about what 1 does).
/// Which matching policy is named can differ from declaration order; the decision cannot, since any matching
/// DENY denies and any matching ALLOW allows.
///
/// Pure and immutable. Thread: any. Ownership: the config snapshot.
public struct PolicySet: Sendable {
    public let custom: [AuthorizationPolicy]
    public let deny: [AuthorizationPolicy]
    public let allow: [AuthorizationPolicy]
    public let audit: [AuthorizationPolicy]
    /// DENY and CUSTOM rules also see the request's hardened path (`PathNormalization.hardened`): see `evaluate`.
    public let hardenedDenyPaths: Bool
    private let denyIndex: PrincipalIndex
    private let allowIndex: PrincipalIndex

    public static let empty = PolicySet(policies: [])

    public init(policies: [AuthorizationPolicy], hardenedDenyPaths: Bool = true) {
        self.hardenedDenyPaths = hardenedDenyPaths
        custom = policies.filter { $0.action == .custom }
        deny = policies.filter { $0.action == .deny }
        allow = policies.filter { $0.action == .allow }
        audit = policies.filter { $0.action == .audit }
        denyIndex = PrincipalIndex(deny)
        allowIndex = PrincipalIndex(allow)
    }

    public var isEmpty: Bool { custom.isEmpty && deny.isEmpty && allow.isEmpty && audit.isEmpty }

    /// Istio's order (security.istio.io AuthorizationPolicy): "If there are any CUSTOM policies that match the
    /// request, evaluate and deny the request if the evaluation result is deny. If there are any DENY policies
    /// that match the request, deny the request. If there are no ALLOW policies for the workload, allow the
    /// request. If any of the ALLOW policies match the request, allow the request. Deny the request."
    /// This is the decision after CUSTOM (`externalCheck`), which the data plane asks first and waits for.
    /// `audited` receives the AUDIT policies that match (they never change the decision).
    ///
    /// Deliberately safer than Istio: with `hardenedDenyPaths`, a DENY rule that does not match the
    /// path as normalized is tried once more against the hardened path (slashes merged, `;` parameters
    /// dropped, `%2F` and unreserved characters decoded), so `//admin` or `/admin;x` cannot slip past a DENY
    /// on `/admin` under Istio's default BASE normalization (the CVE-2021-31920 family). ALLOW rules see only
    /// the normalized path, as in Istio, and what is forwarded never changes.
    public func evaluate(_ request: AuthorizationRequest, audited: (String) -> Void = { _ in }) -> AuthorizationDecision {
        if !deny.isEmpty, let policy = firstMatch(request, { denyIndex.firstMatch(deny, $0, deny: true) }) {
            return .deny(policy: policy.name)
        }
        for policy in audit where Self.matches(policy, request, deny: false) { audited(policy.name) }
        if allow.isEmpty { return .allow(policy: nil) }
        if let policy = allowIndex.firstMatch(allow, request, deny: false) { return .allow(policy: policy.name) }
        return .deny(policy: nil)
    }

    /// The CUSTOM policy whose external authorizer decides first (Istio allows one provider per workload: the
    /// first that matches), nil when none matches. Matched as DENY rules are (attributes the request lacks
    /// match; the hardened path too), so a CUSTOM check is never skipped by a path trick.
    public func externalCheck(_ request: AuthorizationRequest) -> AuthorizationPolicy? {
        guard !custom.isEmpty else { return nil }
        return firstMatch(request) { request in custom.first { Self.matches($0, request, deny: true) } }
    }

    /// `find` on the request, then (with `hardenedDenyPaths`) on the request with its hardened path.
    private func firstMatch(
        _ request: AuthorizationRequest, _ find: (AuthorizationRequest) -> AuthorizationPolicy?
    ) -> AuthorizationPolicy? {
        if let policy = find(request) { return policy }
        guard hardenedDenyPaths, let http = request.http else { return nil }
        return PathNormalization.withHardened(
            http.path,
            { hardened -> AuthorizationPolicy? in
                var hardenedRequest = request
                hardenedRequest.http!.path = hardened
                return find(hardenedRequest)
            }) ?? nil
    }

    /// Policies filed by the exact principals they require; the others are always candidates.
    struct PrincipalIndex: Sendable {
        var byPrincipal: [String: [Int32]] = [:]
        var unfiled: [Int32] = []

        init(_ policies: [AuthorizationPolicy]) {
            for (i, policy) in policies.enumerated() {
                if let principals = Self.requiredPrincipals(policy) {
                    for p in principals { byPrincipal[p, default: []].append(Int32(i)) }
                } else {
                    unfiled.append(Int32(i))
                }
            }
        }

        /// The exact principals a policy can match, or nil when any principal (or none) might match.
        static func requiredPrincipals(_ policy: AuthorizationPolicy) -> Set<String>? {
            var all: Set<String> = []
            for rule in policy.rules {
                guard !rule.from.isEmpty else { return nil }
                for source in rule.from {
                    guard let principals = source.principals else { return nil }
                    for p in principals {
                        guard case .exact(let bytes) = p else { return nil }
                        all.insert(String(decoding: bytes, as: UTF8.self))
                    }
                }
            }
            return all
        }

        func firstMatch(_ policies: [AuthorizationPolicy], _ request: AuthorizationRequest, deny: Bool) -> AuthorizationPolicy? {
            if let principal = request.principal, let filed = byPrincipal[principal] {
                for i in filed where PolicySet.matches(policies[Int(i)], request, deny: deny) { return policies[Int(i)] }
            }
            for i in unfiled where PolicySet.matches(policies[Int(i)], request, deny: deny) { return policies[Int(i)] }
            return nil
        }
    }

    /// The index of the first rule of `policy` that matches (for `waypoint explain`), nil when none does.
    public static func matchingRule(_ policy: AuthorizationPolicy, _ request: AuthorizationRequest) -> Int? {
        let deny = policy.action == .deny || policy.action == .custom
        return policy.rules.firstIndex { rule in
            matches(AuthorizationPolicy(name: "", action: policy.action, rules: [rule]), request, deny: deny)
        }
    }

    /// `deny` selects Istio's rule for attributes the traffic does not have (HTTP fields on a TCP tunnel,
    /// unsupported keys): they count as matching in DENY policies and as not matching in ALLOW policies.
    static func matches(_ policy: AuthorizationPolicy, _ request: AuthorizationRequest, deny: Bool) -> Bool {
        policy.rules.contains { rule in
            (rule.from.isEmpty || rule.from.contains { matches($0, request) })
                && (rule.to.isEmpty || rule.to.contains { matches($0, request, deny: deny) })
                && rule.when.allSatisfy { matches($0, request, deny: deny) }
        }
    }

    static func matches(_ source: AuthorizationPolicy.Source, _ r: AuthorizationRequest) -> Bool {
        func check(_ matchers: [StringMatch]?, _ value: String?, negate: Bool) -> Bool {
            guard let matchers else { return true }
            let hit = value.map { v in matchers.contains { $0.matches(v) } } ?? false
            return negate ? !hit : hit
        }
        func check(_ blocks: [CIDRBlock]?, _ ip: [UInt8]?, negate: Bool) -> Bool {
            guard let blocks else { return true }
            let hit = ip.map { ip in blocks.contains { $0.contains(ip) } } ?? false
            return negate ? !hit : hit
        }
        guard
            check(source.principals, r.principal, negate: false) && check(source.notPrincipals, r.principal, negate: true)
                && check(source.namespaces, r.namespace, negate: false) && check(source.notNamespaces, r.namespace, negate: true)
        else { return false }
        guard
            check(source.trustDomains, r.trustDomain, negate: false)
                && check(source.ipBlocks, r.sourceIP, negate: false) && check(source.notIpBlocks, r.sourceIP, negate: true)
                && check(source.remoteIpBlocks, r.sourceIP, negate: false) && check(source.notRemoteIpBlocks, r.sourceIP, negate: true)
        else { return false }
        guard
            check(source.requestPrincipals, r.jwt?.principal, negate: false)
                && check(source.notRequestPrincipals, r.jwt?.principal, negate: true)
        else { return false }
        if source.serviceAccounts != nil || source.notServiceAccounts != nil {
            let account = r.namespace.flatMap { ns in r.serviceAccount.map { "\(ns)/\($0)" } }  // `ns/sa`, built only when asked
            guard check(source.serviceAccounts, account, negate: false) && check(source.notServiceAccounts, account, negate: true) else {
                return false
            }
        }
        return true
    }

    static func matches(_ operation: AuthorizationPolicy.Operation, _ r: AuthorizationRequest, deny: Bool) -> Bool {
        if let ports = operation.ports, !(r.destinationPort.map(ports.contains) ?? false) { return false }
        if let notPorts = operation.notPorts, r.destinationPort.map(notPorts.contains) ?? false { return false }
        guard let http = r.http else { return deny || !operation.usesHTTP }
        func any(_ matchers: [StringMatch]?, _ value: UnsafeRawBufferPointer, negate: Bool) -> Bool {
            guard let matchers else { return true }
            let hit = matchers.contains { $0.matches(value) }
            return negate ? !hit : hit
        }
        func any(_ patterns: [PathPattern]?, negate: Bool) -> Bool {
            guard let patterns else { return true }
            let hit = patterns.contains { $0.matches(http.path) }
            return negate ? !hit : hit
        }
        return any(operation.hosts, http.host, negate: false) && any(operation.notHosts, http.host, negate: true)
            && any(operation.methods, http.method, negate: false) && any(operation.notMethods, http.method, negate: true)
            && any(operation.paths, negate: false) && any(operation.notPaths, negate: true)
    }

    static func matches(_ condition: AuthorizationPolicy.Condition, _ r: AuthorizationRequest, deny: Bool) -> Bool {
        let value: [UInt8]?
        switch condition.key {
        case .requestHeader(let name):
            guard let http = r.http else { return deny }
            value = http.header(name)
            // Istio matches the joined value. In a DENY rule we also match each copy, so that repeating a
            // header (`x-user: ok` then `x-user: blocked`) cannot slip past a deny: stricter, never looser.
            if deny, condition.values != nil {
                let copies = http.headerCopies(name)
                if copies.count > 1 && copies.contains(where: { valueMatches(condition, $0) }) { return true }
            }
        case .sourceIP, .remoteIP:
            return ipCondition(condition, r.sourceIP)
        case .destinationIP:
            return ipCondition(condition, r.destinationIP)
        case .sourceNamespace: value = r.namespace.map { Array($0.utf8) }
        case .sourcePrincipal: value = r.principal.map { Array($0.utf8) }
        case .destinationPort: value = r.destinationPort.map { Array(String($0).utf8) }
        case .connectionSNI: value = nil  // HBONE carries no SNI
        case .requestPrincipal, .requestAudiences, .requestPresenter, .requestClaim:
            guard r.http != nil else { return deny }
            return valuesMatch(condition, jwtValues(condition.key, r.jwt))
        case .unsupported: return deny
        }
        return valueMatches(condition, value)
    }

    /// A JWT attribute's values (one, or each of a list); nil when the request has no such attribute.
    private static func jwtValues(_ key: AuthorizationPolicy.Condition.Key, _ jwt: JWTIdentity?) -> [String]? {
        guard let jwt else { return nil }
        switch key {
        case .requestPrincipal: return jwt.principal.map { [$0] }
        case .requestAudiences: return jwt.audiences.isEmpty ? nil : jwt.audiences
        case .requestPresenter: return jwt.presenter.map { [$0] }
        case .requestClaim(let path): return jwt.claim(path)
        default: return nil
        }
    }

    /// `values` (any value matches any) and not `notValues` (no value matches any); absent matches neither.
    private static func valuesMatch(_ condition: AuthorizationPolicy.Condition, _ values: [String]?) -> Bool {
        func hit(_ matchers: [StringMatch]) -> Bool { values?.contains { v in matchers.contains { $0.matches(v) } } ?? false }
        return (condition.values.map(hit) ?? true) && !(condition.notValues.map(hit) ?? false)
    }

    /// `values` (any, when given) and not `notValues`; an absent value matches neither list.
    private static func valueMatches(_ condition: AuthorizationPolicy.Condition, _ value: [UInt8]?) -> Bool {
        value.withBytes { bytes in
            let positive = condition.values.map { matchers in bytes.map { b in matchers.contains { $0.matches(b) } } ?? false } ?? true
            let negative = condition.notValues.map { matchers in bytes.map { b in matchers.contains { $0.matches(b) } } ?? false } ?? false
            return positive && !negative
        }
    }

    private static func ipCondition(_ condition: AuthorizationPolicy.Condition, _ ip: [UInt8]?) -> Bool {
        func hit(_ blocks: [CIDRBlock]?) -> Bool? {
            guard let blocks else { return nil }
            return ip.map { ip in blocks.contains { $0.contains(ip) } } ?? false
        }
        return (hit(condition.blocks) ?? true) && !(hit(condition.notBlocks) ?? false)
    }
}

private extension Optional where Wrapped == [UInt8] {
    func withBytes<R>(_ body: (UnsafeRawBufferPointer?) -> R) -> R {
        switch self {
        case .none: return body(nil)
        case .some(let bytes): return bytes.withUnsafeBytes { body($0) }
        }
    }
}
