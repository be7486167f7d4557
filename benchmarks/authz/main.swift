// Authorization decision cost: median nanoseconds per decision with 1, 100 and 1,000 AuthorizationPolicies
// applying to one service (each an ALLOW for one principal and a path prefix, plus one DENY on /admin), for a
// request allowed by a policy in the middle and for one denied because no ALLOW matches.
// Run: swift run -c release AuthzBenchmark
import Filters
import WaypointCore

func policies(_ count: Int) -> PolicySet {
    var list: [AuthorizationPolicy] = [
        AuthorizationPolicy(
            name: "ns/deny-admin", action: .deny,
            rules: [
                .init(to: [
                    {
                        var o = AuthorizationPolicy.Operation(); o.paths = [PathPattern("/admin*")!]; return o
                    }()
                ])
            ])
    ]
    for i in 0..<count {
        var source = AuthorizationPolicy.Source()
        source.principals = [StringMatch("cluster.local/ns/ns\(i)/sa/sa\(i)")]
        var operation = AuthorizationPolicy.Operation()
        operation.paths = [PathPattern("/api/\(i)/*")!]
        operation.methods = [StringMatch("GET"), StringMatch("POST")]
        list.append(AuthorizationPolicy(name: "ns/allow-\(i)", action: .allow, rules: [.init(from: [source], to: [operation])]))
    }
    return PolicySet(policies: list)
}

func median(_ set: PolicySet, principal: String, path: String) -> (Double, AuthorizationDecision) {
    var request = AuthorizationRequest()
    request.principal = principal
    request.sourceIP = [10, 1, 2, 3]
    request.destinationPort = 80
    let host = Array("web".utf8), method = Array("GET".utf8), pathBytes = Array(path.utf8)
    var decision = AuthorizationDecision.deny(policy: nil)
    var samples: [Double] = []
    host.withUnsafeBytes { h in
        method.withUnsafeBytes { m in
            pathBytes.withUnsafeBytes { p in
                request.http = AuthorizationRequest.HTTP(host: h, method: m, path: p)
                let clock = ContinuousClock()
                for _ in 0..<200 {
                    let start = clock.now
                    for _ in 0..<1000 { decision = set.evaluate(request) }
                    let elapsed = clock.now - start
                    samples.append(Double(elapsed.components.attoseconds) / 1e9 / 1000 + Double(elapsed.components.seconds) * 1e9 / 1000)
                }
            }
        }
    }
    samples.sort()
    return (samples[samples.count / 2], decision)
}

print("| policies | allowed (ns/decision) | denied, no ALLOW matched (ns/decision) |")
print("|---|---|---|")
for count in [1, 100, 1000] {
    let set = policies(count)
    let middle = count / 2
    let (allowed, a) = median(set, principal: "cluster.local/ns/ns\(middle)/sa/sa\(middle)", path: "/api/\(middle)/items")
    let (denied, d) = median(set, principal: "cluster.local/ns/other/sa/nobody", path: "/api/\(middle)/items")
    precondition(a == .allow(policy: "ns/allow-\(middle)") && d == .deny(policy: nil), "unexpected decisions \(a) \(d)")
    print("| \(count) | \(Int(allowed.rounded())) | \(Int(denied.rounded())) |")
}
