import HTTPRouter
import Regex
import Testing
import WaypointCore

/// The compiled lookup must pick exactly the rule a walk in order would pick.
@Suite struct RuleIndexTests {
    private func parse(_ text: String, _ body: (RequestHead, UnsafeRawBufferPointer) -> Void) {
        let bytes = Array(text.utf8)
        bytes.withUnsafeBytes { buffer in
            var head = RequestHead()
            guard HTTP1Parser.parseRequest(buffer, into: &head) == .complete else { Issue.record("unparsable \(text)"); return }
            body(head, buffer)
        }
    }

    private func request(_ method: String, _ path: String, _ headers: [(String, String)] = []) -> String {
        "\(method) \(path) HTTP/1.1\r\nHost: h\r\n" + headers.map { "\($0): \($1)\r\n" }.joined() + "\r\n"
    }

    @Test func randomRuleSetsAgreeWithAWalkInOrder() throws {
        var generator = SystemRandomNumberGenerator()
        let segments = ["a", "b", "api", "v1", "users", "A", "x.y"]
        func randomPath() -> String {
            "/"
                + (0..<Int.random(in: 0...3, using: &generator)).map { _ in segments.randomElement(using: &generator)! }.joined(
                    separator: "/")
        }
        for round in 0..<40 {
            var matches: [RequestMatch] = []
            for _ in 0..<Int.random(in: 1...60, using: &generator) {
                let path: PathMatch
                switch Int.random(in: 0...4, using: &generator) {
                case 0: path = .exact(Array(randomPath().utf8))
                case 1: path = .elementPrefix(randomPath())
                case 2: path = .stringPrefix(Array(randomPath().dropLast(Int.random(in: 0...1, using: &generator)).utf8))
                case 3: path = .regex(try Regex(randomPath() + ".*"))
                default: path = .prefix([0x2F])
                }
                let headers = Bool.random(using: &generator) ? [HeaderMatch(name: "x-v", value: .exact(Array("1".utf8)))] : []
                matches.append(
                    RequestMatch(
                        path: path, ignoreCase: Int.random(in: 0...5, using: &generator) == 0,
                        method: Bool.random(using: &generator) ? nil : "GET", headers: headers))
            }
            let rules = matches.enumerated().map { RouteRule(match: $1, action: $0, origin: RuleOrigin(route: "r", ruleIndex: $0)) }
            let ordered = RuleSet(orderedRules: rules, fallback: -1)
            let sorted = RuleSet(rules: rules, fallback: -1)
            for _ in 0..<50 {
                let path = randomPath() + (Bool.random(using: &generator) ? "/" : "")
                let method = Bool.random(using: &generator) ? "GET" : "POST"
                let headers = Bool.random(using: &generator) ? [("X-V", "1")] : []
                parse(request(method, path, headers)) { head, bytes in
                    for set in [ordered, sorted] {
                        let walked = set.rules.firstIndex { $0.match.failedCondition(head, bytes) == nil }
                        #expect(set.firstMatch(head, bytes) == walked, "round \(round): \(method) \(path) \(headers)")
                    }
                }
            }
        }
    }

    @Test func orderedRulesKeepDeclarationOrder() {
        let rules = [
            RouteRule(
                match: RequestMatch(path: .stringPrefix(Array("/api".utf8))), action: "prefix",
                origin: RuleOrigin(route: "vs", ruleIndex: 0)),
            RouteRule(
                match: RequestMatch(path: .exact(Array("/api/v1".utf8))), action: "exact", origin: RuleOrigin(route: "vs", ruleIndex: 1)),
        ]
        parse(request("GET", "/api/v1")) { head, bytes in
            #expect(RuleSet(orderedRules: rules, fallback: nil).route(head, bytes) == "prefix")  // VirtualService: first wins
            #expect(RuleSet(rules: rules, fallback: nil).route(head, bytes) == "exact")  // Gateway API: exact wins
        }
        parse(request("GET", "/apiary")) { head, bytes in
            #expect(RuleSet(orderedRules: rules, fallback: nil).route(head, bytes) == "prefix")  // byte-wise prefix
        }
    }

    @Test(arguments: [("/API/v1", true), ("/api/V1/x", true), ("/apiv1", true), ("/ap", false)])
    func ignoreUriCaseAppliesToPrefix(_ path: String, _ matches: Bool) {
        let rule = RouteRule(
            match: RequestMatch(path: .stringPrefix(Array("/Api".utf8)), ignoreCase: true), action: "x",
            origin: RuleOrigin(route: "vs", ruleIndex: 0))
        parse(request("GET", path)) { head, bytes in
            #expect((RuleSet(orderedRules: [rule], fallback: nil).route(head, bytes) == "x") == matches)
        }
    }

    @Test func headerPrefixPresenceAndAbsence() {
        let rules = [
            RouteRule(
                match: RequestMatch(headers: [HeaderMatch(name: "x-debug", value: .present)]), action: "debug",
                origin: RuleOrigin(route: "vs", ruleIndex: 0)),
            RouteRule(
                match: RequestMatch(headers: [
                    HeaderMatch(name: "x-user", value: .prefix(Array("test-".utf8))),
                    HeaderMatch(name: "x-block", value: .present, negated: true),
                ]),
                action: "tester", origin: RuleOrigin(route: "vs", ruleIndex: 1)),
        ]
        let set = RuleSet(orderedRules: rules, fallback: "default")
        for (headers, expected) in [
            ([("X-Debug", "")], "debug"), ([("x-user", "test-7")], "tester"),
            ([("x-user", "test-7"), ("x-block", "1")], "default"), ([("x-user", "prod")], "default"),
        ] {
            parse(request("GET", "/", headers)) { head, bytes in #expect(set.route(head, bytes) == expected, "\(headers)") }
        }
    }
}

@Suite struct RegexLiteralPrefixTests {
    @Test(arguments: [
        ("/api/v[0-9]+", "/api/v"), ("/ab*c", "/a"), ("/a?b", "/"), ("/x|/y", ""), ("(/x)", ""), ("\\d+", ""),
        ("/é*x", "/"), ("/é+", "/"), ("/plain", "/plain"), ("/a{2}", "/"), ("/v1.", "/v1"),
    ])
    func leadingLiteralText(_ pattern: String, _ expected: String) throws {
        #expect(try Regex(pattern).literalPrefix == Array(expected.utf8))
    }
}

@Suite struct RegexReplacementTests {
    @Test(arguments: [
        ("^/service/([^/]+)(/.*)$", "\\2/instance/\\1", "/service/foo/v1/api", "/v1/api/instance/foo"),
        ("a", "b", "/aaa", "/bbb"),  // every match
        ("/v1/", "/v1$/", "/v1/x", "/v1$/x"),  // a literal $ stays literal
        ("nomatch", "x", "/path", "/path"),
    ])
    func re2StyleReplacement(_ pattern: String, _ rewrite: String, _ path: String, _ expected: String) throws {
        let regex = try Regex(pattern, anchored: false)
        let (replacement, highest) = Regex.pcre2Replacement(fromRE2: rewrite)
        #expect(highest <= regex.captureCount)
        let result = Array(path.utf8).withUnsafeBytes { regex.replacingAll(in: $0, with: replacement) }
        #expect(result.map { String(decoding: $0, as: UTF8.self) } == expected)
    }

    @Test func highestGroupIsReported() throws {
        #expect(Regex.pcre2Replacement(fromRE2: "/\\3/\\1").highestGroup == 3)
        #expect(try Regex("(a)(b)", anchored: false).captureCount == 2)
    }
}
