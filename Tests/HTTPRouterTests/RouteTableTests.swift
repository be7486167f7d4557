import HTTPRouter
import Regex
import Testing
import WaypointCore

/// Routes `method path` with `headers` through `rules` (the action is the rule's name).
private func route(_ rules: RuleSet<String>, _ path: String, method: String = "GET", headers: [(String, String)] = []) -> String? {
    var text = "\(method) \(path) HTTP/1.1\r\nHost: h\r\n"
    for (n, v) in headers { text += "\(n): \(v)\r\n" }
    text += "\r\n"
    let bytes = Array(text.utf8)
    return bytes.withUnsafeBytes { buffer -> String? in
        var head = RequestHead()
        guard HTTP1Parser.parseRequest(buffer, into: &head) == .complete else { return "unparsable" }
        return rules.route(head, buffer)
    }
}

private func rule(_ name: String, _ match: RequestMatch, route: String = "ns/r", created: String = "", index: Int = 0) -> RouteRule<String>
{
    RouteRule(match: match, action: name, origin: RuleOrigin(route: route, ruleIndex: index, creationTimestamp: created))
}

@Suite struct RouteTableTests {
    @Test(arguments: [
        ("/abc", true), ("/abc/", true), ("/abc/def", true), ("/abcd", false), ("/ab", false), ("/", false),
    ])
    func prefixIsElementWise(_ path: String, _ matches: Bool) {
        let rules = RuleSet(rules: [rule("abc", RequestMatch(path: .elementPrefix("/abc/")))], fallback: nil)
        #expect((route(rules, path) == "abc") == matches)
    }

    @Test func exactIsCaseSensitive() {
        let rules = RuleSet(rules: [rule("x", RequestMatch(path: .exact(Array("/Admin".utf8))))], fallback: nil)
        #expect(route(rules, "/Admin") == "x")
        #expect(route(rules, "/admin") == nil)
        #expect(route(rules, "/Admin/") == nil)
    }

    @Test func regexIsAnchoredToTheWholePath() throws {
        let rules = RuleSet(rules: [rule("re", RequestMatch(path: .regex(try Regex("/v[0-9]+"))))], fallback: nil)
        #expect(route(rules, "/v12") == "re")
        #expect(route(rules, "/v12/x") == nil)
        #expect(route(rules, "/x/v12") == nil)
    }

    @Test func queryIsNotPartOfThePath() {
        let rules = RuleSet(rules: [rule("x", RequestMatch(path: .exact(Array("/a".utf8))))], fallback: nil)
        #expect(route(rules, "/a?b=/c") == "x")
    }

    @Test func precedenceFollowsTheSpecification() {
        // Listed in reverse precedence; sorting must restore the spec's order.
        let rules = RuleSet(
            rules: [
                rule("newer-route", RequestMatch(path: .elementPrefix("/api")), route: "a/new", created: "2024-02-01T00:00:00Z"),
                rule("older-route", RequestMatch(path: .elementPrefix("/api")), route: "z/old", created: "2024-01-01T00:00:00Z"),
                rule(
                    "headers",
                    RequestMatch(path: .elementPrefix("/api/v1"), headers: [HeaderMatch(name: "x-a", value: .exact(Array("1".utf8)))])),
                rule("method", RequestMatch(path: .elementPrefix("/api/v1"), method: "POST")),
                rule("longer", RequestMatch(path: .elementPrefix("/api/v1"))),
                rule("exact", RequestMatch(path: .exact(Array("/api/v1".utf8)))),
            ], fallback: nil)
        #expect(route(rules, "/api/v1") == "exact")
        #expect(route(rules, "/api/v1/x", method: "POST") == "method")
        #expect(route(rules, "/api/v1/x", headers: [("X-A", "1")]) == "headers")
        #expect(route(rules, "/api/v1/x") == "longer")
        #expect(route(rules, "/api/other") == "older-route")
    }

    @Test func namespaceNameBreaksTimestampTies() {
        let rules = RuleSet(
            rules: [
                rule("b", RequestMatch(), route: "ns/b"),
                rule("a", RequestMatch(), route: "ns/a"),
            ], fallback: nil)
        #expect(route(rules, "/") == "a")
    }

    @Test func headerNamesAreCaseInsensitiveAndValuesExact() throws {
        let rules = RuleSet(
            rules: [
                rule("exact", RequestMatch(headers: [HeaderMatch(name: "X-Canary", value: .exact(Array("true".utf8)))])),
                rule("regex", RequestMatch(headers: [HeaderMatch(name: "x-v", value: .regex(try Regex("v[12]")))])),
            ], fallback: "default")
        #expect(route(rules, "/", headers: [("x-canary", "true")]) == "exact")
        #expect(route(rules, "/", headers: [("X-CANARY", "true")]) == "exact")
        #expect(route(rules, "/", headers: [("x-canary", "TRUE")]) == "default")
        #expect(route(rules, "/", headers: [("x-v", "v2")]) == "regex")
        #expect(route(rules, "/", headers: [("x-v", "v22")]) == "default")
    }

    @Test func noMatchFallsBackOrIsNil() {
        let withFallback = RuleSet(rules: [rule("x", RequestMatch(path: .exact(Array("/x".utf8))))], fallback: "svc")
        #expect(route(withFallback, "/y") == "svc")
        let attached = RuleSet(rules: [rule("x", RequestMatch(path: .exact(Array("/x".utf8))))], fallback: nil)
        #expect(route(attached, "/y") == nil)
    }

    private func table() -> RouteTable<String> {
        let a = VirtualHost(
            ports: [(80, RuleSet(rules: [], fallback: "a:80")), (8080, RuleSet(rules: [], fallback: "a:8080"))], defaultPort: 80)
        let wild = VirtualHost(ports: [(UInt16(0), RuleSet<String>(rules: [], fallback: "wild"))], defaultPort: 0)
        let any = VirtualHost(ports: [(UInt16(0), RuleSet<String>(rules: [], fallback: "any"))], defaultPort: 0)
        return RouteTable(
            virtualHosts: [a, wild, any], names: [("a", 0), ("a.ns.svc.cluster.local", 0), ("10.0.0.1", 0), ("*.example.com", 1), ("*", 2)])
    }

    @Test(arguments: [
        ("a", "a:80"), ("A", "a:80"), ("a:8080", "a:8080"), ("A.NS.svc.cluster.local.", "a:80"), ("10.0.0.1:80", "a:80"),
        ("x.example.com", "wild"), ("X.Example.COM:9", "wild"), ("example.com", "any"), ("other", "any"),
    ])
    func hostSelection(_ host: String, _ expected: String) {
        let result = Array(host.utf8).withUnsafeBytes { table().ruleSet(forHost: $0)?.fallback }
        #expect(result == expected)
    }

    @Test func unknownPortOfAKnownHostHasNoRules() {
        let result = Array("a:9999".utf8).withUnsafeBytes { table().ruleSet(forHost: $0)?.fallback }
        #expect(result == nil)
    }
}

@Suite struct QueryMatchTests {
    @Test(arguments: [
        ("/s?version=2", true), ("/s?a=1&version=2", true), ("/s?version=3", false), ("/s?Version=2", false),
        ("/s", false), ("/s?version", false), ("/s?version=2&version=3", true), ("/s?version=3&version=2", false),
    ])
    func exactNameCaseSensitiveFirstOccurrence(path: String, matches: Bool) {
        let match = RequestMatch(queryParams: [QueryMatch(name: "version", value: .exact(Array("2".utf8)))])
        let rules = RuleSet(rules: [rule("q", match)], fallback: nil)
        #expect((route(rules, path) == "q") == matches)
    }

    @Test func regexValueAndPrecedenceCountsQueryMatches() throws {
        let one = RequestMatch(queryParams: [QueryMatch(name: "env", value: .regex(try Regex("(dev|test)")))])
        let two = RequestMatch(queryParams: [
            QueryMatch(name: "env", value: .regex(try Regex("(dev|test)"))),
            QueryMatch(name: "debug", value: .exact(Array("1".utf8))),
        ])
        let rules = RuleSet(rules: [rule("one", one, index: 0), rule("two", two, index: 1)], fallback: nil)
        #expect(route(rules, "/x?env=dev&debug=1") == "two")  // more query matches wins (Gateway API precedence)
        #expect(route(rules, "/x?env=test") == "one")
        #expect(route(rules, "/x?env=prod") == nil)
    }
}
