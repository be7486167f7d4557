import JSON
import Filters
import Testing
import WaypointCore

@Suite struct PathNormalizationTests {
    private func normalize(_ path: String, _ mode: PathNormalization = .base) -> String? {
        var bytes = Array(path.utf8)
        return bytes.withUnsafeMutableBytes { buffer in mode.normalize(buffer).map { String(decoding: buffer[0..<$0], as: UTF8.self) } }
    }

    @Test(arguments: [
        ("/admin", "/admin"), ("/./admin", "/admin"), ("/public/../admin", "/admin"), ("/a/b/../../admin", "/admin"),
        ("/../admin", "/admin"), ("/%61dmin", "/admin"), ("/%2e%2e/admin", "/admin"), ("/a/%2E/b", "/a/b"),
        ("\\admin", "/admin"), ("/a\\..\\admin", "/admin"), ("/a/..", "/"), ("/a/b/.", "/a/b/"), ("/a/b/..", "/a/"),
        ("//admin", "//admin"), ("/admin%2F..", "/admin%2F.."), ("/%7euser", "/~user"), ("/a%20b", "/a%20b"),
        ("/", "/"), ("/admin;x", "/admin;x"),
    ])
    func base(path: String, expected: String) {
        #expect(normalize(path) == expected)
    }

    @Test(arguments: [("//admin", "/admin"), ("/a//b///c", "/a/b/c"), ("/x/..//admin", "/admin"), ("/admin%2F..", "/admin%2F..")])
    func mergeSlashes(path: String, expected: String) {
        #expect(normalize(path, .mergeSlashes) == expected)
    }

    @Test(arguments: [("/admin%2F..", "/"), ("/public%2F..%2Fadmin", "/admin"), ("/%5cadmin", "/admin"), ("/a%2f%2fb", "/a/b")])
    func decodeAndMergeSlashes(path: String, expected: String) {
        #expect(normalize(path, .decodeAndMergeSlashes) == expected)
    }

    @Test(arguments: PathNormalization.allCases)
    func nulIsRefusedInEveryMode(mode: PathNormalization) {
        #expect(normalize("/a%00b", mode) == nil)
    }

    @Test func noneLeavesThePathAlone() {
        #expect(normalize("/a/../b//c", .none) == "/a/../b//c")
    }

    @Test(
        arguments: [
            ("//admin", "/admin"), ("/admin;x", "/admin"), ("/admin;x/y;z=1", "/admin/y"), ("/public;/../admin", "/admin"),
            ("/%2Fadmin", "/admin"), ("/a/..//admin", "/admin"), ("/admin", nil), ("/index.html", nil), ("/a%20b", nil),
        ] as [(String, String?)])
    func hardened(path: String, expected: String?) {
        let bytes = Array(path.utf8)
        #expect(bytes.withUnsafeBytes { PathNormalization.withHardened($0) { String(decoding: $0, as: UTF8.self) } } == expected)
    }
}

@Suite struct StringAndAddressMatchTests {
    @Test(arguments: [
        ("abc", "abc", true), ("abc", "abcd", false), ("abc*", "abcd", true), ("abc*", "ab", false),
        ("*abc", "xabc", true), ("*abc", "abx", false), ("*", "", true), ("*", "anything", true),
    ])
    func istioStringMatch(pattern: String, value: String, expected: Bool) {
        #expect(StringMatch(pattern).matches(value) == expected)
    }

    @Test(arguments: [
        ("10.0.0.0/8", "10.1.2.3", true), ("10.0.0.0/8", "11.1.2.3", false), ("10.1.2.3", "10.1.2.3", true),
        ("10.1.2.0/25", "10.1.2.200", false), ("0.0.0.0/0", "1.2.3.4", true),
        ("fd00::/8", "fd12::1", true), ("fd00::/8", "fe00::1", false), ("::1", "::1", true),
        ("2001:db8::/32", "2001:db8:1::5", true), ("10.0.0.0/8", "::ffff:10.0.0.1", false),
    ])
    func cidr(block: String, ip: String, expected: Bool) throws {
        let cidr = try #require(CIDRBlock(block))
        #expect(cidr.contains(IPAddress.parse(ip)!) == expected)
    }

    @Test(arguments: ["10.0.0.0/33", "10.0.0/8", "fd00::/129", "banana", "10.0.0.01", "1::2::3"])
    func badBlocks(text: String) {
        #expect(CIDRBlock(text) == nil)
    }

    @Test(arguments: [
        ("/api/{*}/info", "/api/v1/info", true), ("/api/{*}/info", "/api/v1/v2/info", false), ("/api/{*}/info", "/api//info", false),
        ("/api/{**}", "/api/a/b/c", true), ("/api/{**}", "/api", false), ("/{*}", "/x", true), ("/api/*", "/api/x/y", true),
    ])
    func pathTemplates(pattern: String, path: String, expected: Bool) throws {
        let template = try #require(PathPattern(pattern))
        #expect(Array(path.utf8).withUnsafeBytes { template.matches($0) } == expected)
    }

    @Test(arguments: ["/api/{**}/x", "/a{*}", "/api/{x}"])
    func badTemplates(pattern: String) {
        #expect(PathPattern(pattern) == nil)
    }
}

/// Istio's evaluation order and matching rules, one line per case (ztunnel's `rbac_test!` style).
@Suite struct PolicyEvaluationTests {
    typealias Policy = AuthorizationPolicy

    static func request(
        principal: String? = "cluster.local/ns/default/sa/frontend", ip: String = "10.1.2.3",
        method: String = "GET", path: String = "/", host: String = "web", port: UInt16 = 80,
        headers: [String: String] = [:], http: Bool = true
    ) -> (AuthorizationRequest, [[UInt8]]) {
        var r = AuthorizationRequest()
        r.principal = principal
        if let principal, let identity = SpiffeIdentity(uri: "spiffe://" + principal) {
            r.namespace = identity.namespace
            r.serviceAccount = identity.serviceAccount
            r.trustDomain = identity.trustDomain
        }
        r.sourceIP = IPAddress.parse(ip)
        r.destinationPort = port
        let storage = [Array(host.utf8), Array(method.utf8), Array(path.utf8)]
        return (r, storage)
    }

    static func evaluate(
        _ policies: [Policy], principal: String? = "cluster.local/ns/default/sa/frontend", ip: String = "10.1.2.3",
        method: String = "GET", path: String = "/", host: String = "web", port: UInt16 = 80,
        headers: [String: String] = [:], http: Bool = true, hardened: Bool = true, jwt: JWTIdentity? = nil
    ) -> AuthorizationDecision {
        withRequest(
            principal: principal, ip: ip, method: method, path: path, host: host, port: port, headers: headers, http: http, jwt: jwt
        ) {
            PolicySet(policies: policies, hardenedDenyPaths: hardened).evaluate($0)
        }
    }

    /// `body` applied to a request with these attributes (its bytes live during the call).
    static func withRequest<T>(
        principal: String? = "cluster.local/ns/default/sa/frontend", ip: String = "10.1.2.3",
        method: String = "GET", path: String = "/", host: String = "web", port: UInt16 = 80,
        headers: [String: String] = [:], http: Bool = true, jwt: JWTIdentity? = nil, _ body: (AuthorizationRequest) -> T
    ) -> T {
        var (r, storage) = request(principal: principal, ip: ip, method: method, path: path, host: host, port: port)
        r.jwt = jwt
        return storage[0].withUnsafeBytes { h in
            storage[1].withUnsafeBytes { m in
                storage[2].withUnsafeBytes { p in
                    guard http else { return body(r) }
                    var text = "GET / HTTP/1.1\r\nhost: x\r\n"
                    for (name, value) in headers { text += "\(name): \(value)\r\n" }
                    let raw = Array((text + "\r\n").utf8)
                    return raw.withUnsafeBytes { rawBytes in
                        var head = RequestHead()
                        _ = HTTP1Parser.parseRequest(rawBytes, into: &head)
                        r.http = AuthorizationRequest.HTTP(host: h, method: m, path: p, head: head, headBytes: rawBytes)
                        return body(r)
                    }
                }
            }
        }
    }

    static func rule(from: [Policy.Source] = [], to: [Policy.Operation] = [], when: [Policy.Condition] = []) -> Policy.Rule {
        Policy.Rule(from: from, to: to, when: when)
    }

    static func source(_ edit: (inout Policy.Source) -> Void) -> Policy.Source { var s = Policy.Source(); edit(&s); return s }
    static func operation(_ edit: (inout Policy.Operation) -> Void) -> Policy.Operation { var o = Policy.Operation(); edit(&o); return o }

    static let frontendOnly = Policy(
        name: "ns/allow-frontend", action: .allow,
        rules: [rule(from: [source { $0.principals = [StringMatch("cluster.local/ns/default/sa/frontend")] }])])
    static let denyAdmin = Policy(
        name: "ns/deny-admin", action: .deny, rules: [rule(to: [operation { $0.paths = [PathPattern("/admin*")!] }])])
    static let allowNothing = Policy(name: "ns/allow-nothing", action: .allow, rules: [])
    static let allowAll = Policy(name: "ns/allow-all", action: .allow, rules: [rule()])

    static let denyExactAdmin = Policy(
        name: "ns/deny-admin", action: .deny, rules: [rule(to: [operation { $0.paths = [PathPattern("/admin")!] }])])
    static let allowExactPublic = Policy(
        name: "ns/allow-public", action: .allow, rules: [rule(to: [operation { $0.paths = [PathPattern("/public")!] }])])

    /// DENY also sees the hardened path; Istio (`hardened: false`) lets these through under BASE normalization.
    @Test(arguments: ["//admin", "/admin;x", "/admin;", "//admin;jsessionid=1"])
    func denyMatchesTheHardenedPath(path: String) {
        #expect(Self.evaluate([Self.denyExactAdmin], path: path) == .deny(policy: "ns/deny-admin"))
        #expect(Self.evaluate([Self.denyExactAdmin], path: path, hardened: false) == .allow(policy: nil))
    }

    /// ALLOW stays as in Istio: a hardened path never makes a request allowed.
    @Test func allowIgnoresTheHardenedPath() {
        #expect(Self.evaluate([Self.allowExactPublic], path: "/public") == .allow(policy: "ns/allow-public"))
        #expect(Self.evaluate([Self.allowExactPublic], path: "/public;x") == .deny(policy: nil))
        #expect(Self.evaluate([Self.allowExactPublic], path: "//public") == .deny(policy: nil))
    }

    @Test func noPoliciesAllow() { #expect(Self.evaluate([]) == .allow(policy: nil)) }
    @Test func allowMatches() { #expect(Self.evaluate([Self.frontendOnly]) == .allow(policy: "ns/allow-frontend")) }
    @Test func allowNotMatchedDenies() {
        #expect(Self.evaluate([Self.frontendOnly], principal: "cluster.local/ns/default/sa/other") == .deny(policy: nil))
    }
    @Test func plaintextHasNoPrincipal() { #expect(Self.evaluate([Self.frontendOnly], principal: nil) == .deny(policy: nil)) }
    @Test func denyBeatsAllow() {
        #expect(Self.evaluate([Self.frontendOnly, Self.denyAdmin], path: "/admin/x") == .deny(policy: "ns/deny-admin"))
    }
    @Test func allowWithoutRulesDeniesAll() { #expect(Self.evaluate([Self.allowNothing]) == .deny(policy: nil)) }
    @Test func emptyRuleMatchesAll() { #expect(Self.evaluate([Self.allowAll], principal: nil) == .allow(policy: "ns/allow-all")) }
    @Test func denyWithoutRulesMatchesNothing() {
        #expect(Self.evaluate([Policy(name: "d", action: .deny, rules: [])]) == .allow(policy: nil))
    }
    /// CUSTOM is asked first (`externalCheck`) and is not part of the local decision; it is matched like DENY,
    /// the hardened path included.
    @Test func customIsTheExternalCheck() {
        let custom = Policy(name: "c", action: .custom, rules: [Self.rule(to: [Self.operation { $0.paths = [PathPattern("/api/*")!] }])])
        let set = PolicySet(policies: [custom, Self.denyAdmin])
        #expect(Self.evaluate([custom]) == .allow(policy: nil))
        for (path, checked) in [("/api/x", true), ("//api/x", true), ("/api;v=1/x", true), ("/public", false)] {
            #expect(Self.withRequest(path: path) { set.externalCheck($0)?.name } == (checked ? "c" : nil), "\(path)")
        }
    }
    @Test func auditNeverBlocks() {
        var audited: [String] = []
        let (r, _) = Self.request()
        #expect(
            PolicySet(policies: [Policy(name: "a", action: .audit, rules: [Self.rule()])]).evaluate(r) { audited.append($0) }
                == .allow(policy: nil))
        #expect(audited == ["a"])
    }

    @Test(arguments: [
        ("cluster.local/ns/default/sa/frontend", false), ("cluster.local/ns/default/sa/other", true), ("cluster.local/ns/shop/sa/x", true),
    ])
    func notPrincipals(principal: String, allowed: Bool) {
        let policy = Policy(
            name: "p", action: .allow, rules: [Self.rule(from: [Self.source { $0.notPrincipals = [StringMatch("*/sa/frontend")] }])])
        #expect(Self.evaluate([policy], principal: principal).isAllowed == allowed)
    }

    @Test(arguments: [("default", true), ("shop", false)])
    func namespaces(ns: String, allowed: Bool) {
        let policy = Policy(name: "p", action: .allow, rules: [Self.rule(from: [Self.source { $0.namespaces = [StringMatch("default")] }])])
        #expect(Self.evaluate([policy], principal: "cluster.local/ns/\(ns)/sa/x").isAllowed == allowed)
    }

    @Test(arguments: [("10.1.2.3", true), ("10.9.9.9", false), ("fd00::5", true)])
    func ipBlocksV4AndV6(ip: String, allowed: Bool) {
        let policy = Policy(
            name: "p", action: .allow,
            rules: [Self.rule(from: [Self.source { $0.ipBlocks = [CIDRBlock("10.1.0.0/16")!, CIDRBlock("fd00::/8")!] }])])
        #expect(Self.evaluate([policy], ip: ip).isAllowed == allowed)
    }

    @Test(arguments: [("GET", "/api/v1", true), ("POST", "/api/v1", false), ("GET", "/other", false)])
    func fieldsInOneOperationAllHold(method: String, path: String, allowed: Bool) {
        let policy = Policy(
            name: "p", action: .allow,
            rules: [
                Self.rule(to: [
                    Self.operation {
                        $0.methods = [StringMatch("GET")]; $0.paths = [PathPattern("/api/*")!]
                    }
                ])
            ])
        #expect(Self.evaluate([policy], method: method, path: path).isAllowed == allowed)
    }

    @Test(arguments: [("GET", "/x", true), ("POST", "/api/x", true), ("POST", "/x", false)])
    func operationEntriesAreAlternatives(method: String, path: String, allowed: Bool) {
        let policy = Policy(
            name: "p", action: .allow,
            rules: [
                Self.rule(to: [
                    Self.operation { $0.methods = [StringMatch("GET")] }, Self.operation { $0.paths = [PathPattern("/api/*")!] },
                ])
            ])
        #expect(Self.evaluate([policy], method: method, path: path).isAllowed == allowed)
    }

    @Test(arguments: [("web", true), ("WEB.default", false), ("api", false)])
    func hostsCaseInsensitive(host: String, allowed: Bool) {
        // Hosts are lower-cased by the caller (the request's Host, port stripped) and in the pattern.
        let policy = Policy(
            name: "p", action: .allow, rules: [Self.rule(to: [Self.operation { $0.hosts = [StringMatch("WEB", caseInsensitive: true)] }])])
        #expect(Self.evaluate([policy], host: host.lowercased()).isAllowed == allowed)
    }

    @Test(arguments: [([String: String](), false), (["x-token": "secret"], true), (["x-token": "other"], false)])
    func whenRequestHeader(headers: [String: String], allowed: Bool) {
        let policy = Policy(
            name: "p", action: .allow,
            rules: [
                Self.rule(when: [
                    Policy.Condition(key: .requestHeader(Array("x-token".utf8)), values: [StringMatch("secret")], notValues: nil)
                ])
            ])
        #expect(Self.evaluate([policy], headers: headers).isAllowed == allowed)
    }

    @Test func httpOnlyDenyRuleMatchesTCP() {
        // Istio: a DENY rule with HTTP-only fields still denies TCP traffic (fail closed)...
        #expect(Self.evaluate([Self.denyAdmin], http: false) == .deny(policy: "ns/deny-admin"))
        // ...while an ALLOW rule with HTTP-only fields never allows it.
        let allowGet = Policy(name: "p", action: .allow, rules: [Self.rule(to: [Self.operation { $0.methods = [StringMatch("GET")] }])])
        #expect(Self.evaluate([allowGet], http: false) == .deny(policy: nil))
    }

    @Test func unknownConditionKeyFailsClosed() {
        let condition = Policy.Condition(key: .unsupported("request.auth.claims[iss]"), values: [StringMatch("x")], notValues: nil)
        #expect(Self.evaluate([Policy(name: "d", action: .deny, rules: [Self.rule(when: [condition])])]) == .deny(policy: "d"))
        #expect(Self.evaluate([Policy(name: "a", action: .allow, rules: [Self.rule(when: [condition])])]) == .deny(policy: nil))
    }

    @Test(arguments: [(UInt16(80), true), (8080, false)])
    func ports(port: UInt16, allowed: Bool) {
        let policy = Policy(name: "p", action: .allow, rules: [Self.rule(to: [Self.operation { $0.ports = [80] }])])
        #expect(Self.evaluate([policy], port: port, http: false).isAllowed == allowed)
    }

    static func jwt(_ claims: String) -> JWTIdentity {
        JWTIdentity(
            principal: "https://issuer/alice", audiences: ["shop", "web"], presenter: "app", claims: try! JSON.parse(claims), expiry: nil,
            requestHeaders: nil)
    }

    @Test func requestPrincipalsNeedAVerifiedToken() {
        var source = Policy.Source()
        source.requestPrincipals = [StringMatch("https://issuer/*")]
        let allow = Policy(name: "a", action: .allow, rules: [Self.rule(from: [source])])
        #expect(Self.evaluate([allow], jwt: Self.jwt("{}")) == .allow(policy: "a"))
        #expect(Self.evaluate([allow]) == .deny(policy: nil))  // no token: no request principal
        // Istio's "require a JWT": DENY what has no request principal
        var anonymous = Policy.Source()
        anonymous.notRequestPrincipals = [StringMatch("*")]
        let requireJWT = Policy(name: "d", action: .deny, rules: [Self.rule(from: [anonymous])])
        #expect(Self.evaluate([requireJWT]) == .deny(policy: "d"))
        #expect(Self.evaluate([requireJWT], jwt: Self.jwt("{}")) == .allow(policy: nil))
    }

    @Test func requestAuthConditionsReadClaimsAudiencesAndPresenter() {
        func allowed(
            _ key: Policy.Condition.Key, _ values: [String]?, not notValues: [String]? = nil, claims: String = "{}", http: Bool = true
        )
            -> Bool
        {
            let condition = Policy.Condition(
                key: key, values: values.map { $0.map { StringMatch($0) } }, notValues: notValues.map { $0.map { StringMatch($0) } })
            return Self.evaluate(
                [Policy(name: "a", action: .allow, rules: [Self.rule(when: [condition])])], http: http, jwt: Self.jwt(claims)
            ).isAllowed
        }
        #expect(allowed(.requestClaim(["groups"]), ["admins"], claims: #"{"groups":["users","admins"]}"#))
        #expect(!allowed(.requestClaim(["groups"]), ["admins"], claims: #"{"groups":["users"]}"#))
        #expect(!allowed(.requestClaim(["groups"]), nil, not: ["banned"], claims: #"{"groups":["users","banned"]}"#))
        #expect(allowed(.requestClaim(["org", "team"]), ["co*"], claims: #"{"org":{"team":"core"}}"#))
        #expect(!allowed(.requestClaim(["missing"]), ["x"]))
        #expect(allowed(.requestAudiences, ["web"]) && !allowed(.requestAudiences, ["other"]))
        #expect(allowed(.requestPresenter, ["app"]) && allowed(.requestPrincipal, ["https://issuer/alice"]))
        #expect(!allowed(.requestPrincipal, ["https://issuer/alice"], http: false))  // TCP has no JWT: ALLOW does not match
    }
}
