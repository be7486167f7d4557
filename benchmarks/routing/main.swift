// Route selection cost: median nanoseconds per selection with 10, 1,000 and 10,000 rules of mixed kinds on one
// service (40% exact paths, 40% PathPrefix, 10% with a header condition, 10% regular expressions), in Gateway
// API precedence order and in VirtualService declaration order, for an exact hit, a prefix hit, a request
// only a regular expression decides and a miss. A walk in order (what the router did before it was compiled)
// is measured alongside.
// Run: swift run -c release RoutingBenchmark
import HTTPRouter
import Regex
import WaypointCore

func rules(_ count: Int) -> [RouteRule<Int>] {
    (0..<count).map { i in
        let match: RequestMatch
        switch i % 10 {
        case 0, 1, 2, 3: match = RequestMatch(path: .exact(Array("/svc\(i)/api/items".utf8)))
        case 4, 5, 6, 7: match = RequestMatch(path: .elementPrefix("/svc\(i)/api"))
        case 8:
            match = RequestMatch(
                path: .elementPrefix("/svc\(i)"), headers: [HeaderMatch(name: "x-canary", value: .exact(Array("true".utf8)))])
        default: match = RequestMatch(path: .regex(try! Regex("/re\(i)/[0-9]+/detail")))
        }
        return RouteRule(match: match, action: i, origin: RuleOrigin(route: "ns/r\(i / 10)", ruleIndex: i % 10))
    }
}

func nanoseconds(_ body: () -> Int?) -> Double {
    let clock = ContinuousClock()
    var samples: [Double] = []
    var sink = 0
    for _ in 0..<100 {
        let start = clock.now
        for _ in 0..<1000 { sink &+= body() ?? 0 }
        let elapsed = clock.now - start
        samples.append((Double(elapsed.components.seconds) * 1e18 + Double(elapsed.components.attoseconds)) / 1e9 / 1000)
    }
    precondition(sink != Int.min)
    return samples.sorted()[samples.count / 2]
}

func format(_ ns: Double) -> String { ns < 10_000 ? String(Int(ns.rounded())) : String(Int((ns / 1000).rounded())) + "k" }

print("| rules | order | request | compiled ns | walk in order ns |")
print("|---|---|---|---|---|")
for count in [10, 1_000, 10_000] {
    let list = rules(count)
    let probe = count / 2 / 10 * 10  // a rule group in the middle
    let requests = [
        ("exact hit", "GET /svc\(probe + 1)/api/items HTTP/1.1\r\nHost: web\r\n\r\n"),
        ("prefix hit", "GET /svc\(probe + 5)/api/v2/users HTTP/1.1\r\nHost: web\r\n\r\n"),
        ("regex hit", "GET /re\(probe + 9)/42/detail HTTP/1.1\r\nHost: web\r\n\r\n"),
        ("miss", "GET /nothing/here HTTP/1.1\r\nHost: web\r\n\r\n"),
    ]
    for (order, set) in [("precedence", RuleSet(rules: list, fallback: nil)), ("declared", RuleSet(orderedRules: list, fallback: nil))] {
        for (name, text) in requests {
            let bytes = Array(text.utf8)
            bytes.withUnsafeBytes { raw in
                var head = RequestHead()
                precondition(HTTP1Parser.parseRequest(raw, into: &head) == .complete)
                let compiled = nanoseconds { set.firstMatch(head, raw) }
                let walked = nanoseconds { set.rules.firstIndex { $0.match.failedCondition(head, raw) == nil } }
                precondition(set.firstMatch(head, raw) == set.rules.firstIndex { $0.match.failedCondition(head, raw) == nil })
                print("| \(count) | \(order) | \(name) | \(format(compiled)) | \(format(walked)) |")
            }
        }
    }
}
