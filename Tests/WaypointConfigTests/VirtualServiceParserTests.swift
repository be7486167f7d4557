import Filters
import Regex
import Testing
@testable import WaypointConfig

@Suite struct VirtualServiceParserTests {
    private func load(_ http: String) throws(ConfigErrors) -> ConfigSpec {
        try ManifestLoader.load(
            text: """
                apiVersion: networking.istio.io/v1
                kind: VirtualService
                metadata: {name: vs, namespace: shop}
                spec:
                  hosts: [web]
                  http:
                \(http)
                """, file: "vs.yaml", defaultNamespace: "shop")
    }

    /// Istio's `ConvertPolicy`: attempts unset or 0 disables retries for the rule, and its perTryTimeout with them.
    @Test func retriesWithoutAttemptsAreOff() throws {
        let spec = try load("  - retries: {perTryTimeout: 1s, retryOn: 5xx}\n    route: [{destination: {host: web}}]")
        #expect(spec.virtualServices[0].http[0].retries?.attempts == 0)
        let snapshot = SnapshotCompiler(namespace: "shop").compile(
            try ManifestLoader.load(
                text: """
                    apiVersion: v1
                    kind: Service
                    metadata: {name: web, namespace: shop}
                    spec: {ports: [{name: http, port: 80}]}
                    ---
                    apiVersion: networking.istio.io/v1
                    kind: VirtualService
                    metadata: {name: vs, namespace: shop}
                    spec:
                      hosts: [web]
                      http: [{retries: {perTryTimeout: 1s}, route: [{destination: {host: web}}]}]
                    """, file: "vs.yaml", defaultNamespace: "shop"), generation: 1)
        guard case .forward(let backends)? = snapshot.routes.virtualHosts.first?.rules(forPort: 80)?.rules.first?.action else {
            Issue.record("no forward rule")
            return
        }
        #expect(backends.policy.retry?.maxRetries == 0 && backends.policy.perTryTimeout == nil)
    }

    @Test func everyPartIsRead() throws {
        let rule = try load(
            """
              - match: [{uri: {prefix: /a}, headers: {X-User: {regex: "u[0-9]+"}}, queryParams: {v: {exact: "2"}}, ignoreUriCase: true}]
                route: [{destination: {host: web, port: {number: 8080}, subset: v2}, weight: 30}, {destination: {host: web}, weight: 70}]
                timeout: 3s
                retries: {attempts: 4, perTryTimeout: 500ms, retryOn: "gateway-error,409"}
                fault: {abort: {httpStatus: 503, percentage: {value: 12.5}}, delay: {fixedDelay: 2s, percent: 10}}
                mirror: {host: web-shadow}
                mirrorPercentage: {value: 5.0}
                mirrors: [{destination: {host: audit, port: {number: 9000}}, percentage: {value: 1.5}}, {destination: {host: copy}}]
            """
        ).virtualServices[0].http[0]
        #expect(rule.matches[0].uri == .init(kind: .prefix, value: "/a") && rule.matches[0].ignoreUriCase)
        let expected = VirtualServiceSpec.StringMatchSpec(kind: .regex, value: "u[0-9]+", regex: try Regex("u[0-9]+"))
        #expect(rule.matches[0].headers[0].name == "x-user" && rule.matches[0].headers[0].match == expected)
        let compiled = rule.matches[0].headers[0].match.regex
        #expect(Array("u42".utf8).withUnsafeBytes { compiled?.matches($0) } == true)  // compiled once, by the parser
        #expect(
            rule.route == [
                .init(host: "web", port: 8080, subset: "v2", weight: 30), .init(host: "web", port: nil, subset: nil, weight: 70),
            ])
        #expect(rule.timeout == .seconds(3) && rule.retries?.attempts == 4 && rule.retries?.perTryTimeout == .milliseconds(500))
        #expect(
            rule.fault?.abortStatus == 503 && rule.fault?.abortPercent == 12.5 && rule.fault?.delay == .seconds(2)
                && rule.fault?.delayPercent == 10)
        #expect(rule.mirrors.map(\.destination.host) == ["web-shadow", "audit", "copy"] && rule.mirrors.map(\.percent) == [5, 1.5, 100])
        #expect(rule.mirrors[1].destination.port == 9000)
        let policy = RetryPolicy.istio(attempts: 4, retryOn: rule.retries?.retryOn)
        #expect(policy.wouldRetry(.status(502)) && policy.wouldRetry(.status(409)) && policy.wouldRetry(.connectFailed))
        #expect(!policy.wouldRetry(.status(500)))
    }

    @Test(arguments: [
        (
            "  - route: [{destination: {host: web}}]\n    redirect: {uri: /x}", "http[0]",
            "route, redirect and directResponse exclude each other"
        ),
        (
            "  - match: [{uri: {suffix: /x}}]\n    route: [{destination: {host: web}}]", "http[0].match[0].uri.suffix",
            "unsupported string match"
        ),
        (
            "  - match: [{uri: {regex: \"(\"}}]\n    route: [{destination: {host: web}}]", "http[0].match[0].uri.regex",
            "invalid regular expression"
        ),
        (
            "  - retries: {attempts: 2, retryOn: \"5xx,sometimes\"}\n    route: [{destination: {host: web}}]", "http[0].retries.retryOn",
            "unknown retry condition \"sometimes\""
        ),
        ("  - route: [{destination: {host: a}}, {destination: {host: b}}]", "http[0].route", "weights are required"),
        ("  - directResponse: {status: 700}", "http[0].directResponse.status", "out of range"),
        ("  - match: []", "http[0]", "a rule needs route, redirect or directResponse"),
        (
            "  - rewrite: {uriRegexRewrite: {match: \"/(a)\", rewrite: \"/\\\\2\"}}\n    route: [{destination: {host: web}}]",
            "http[0].rewrite.uriRegexRewrite.rewrite", "names group \\2; the pattern has 1"
        ),
    ])
    func badRulesNameTheField(http: String, field: String, message: String) {
        do {
            _ = try load(http)
            Issue.record("accepted: \(http)")
        } catch {
            let text = error.errors.map { "\($0)" }.joined(separator: "\n")
            #expect(
                text.contains("vs.yaml") && text.contains("VirtualService shop/vs") && text.contains("spec.\(field)")
                    && text.contains(message), "\(text)")
        }
    }
}
