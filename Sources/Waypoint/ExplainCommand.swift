import CLI
import EventLoop
import Filters
import HBONEServer
import SnapshotRouting
import HTTPRouter
import JSON
import Kubernetes
import WaypointConfig
import WaypointCore

extension WaypointCommand {
    /// `waypoint explain`: runs one synthetic request through the same router and authorization code as the
    /// proxy, against the given manifests, and says what happens to it and why.
    struct Explain: Command {
        static let name = "explain"
        static let abstract = "Show how a request would be authorized and routed: the deciding policy and rule, the route, the backends."
        static let discussion = """
            Example: waypoint explain --config ./manifests --tunnel 10.96.0.10:80 --principal cluster.local/ns/default/sa/frontend \\
                       --method POST --path /admin/users --header x-user=alice
            """

        @Option(help: "Manifest file or directory (repeatable).")
        var config: [String] = []

        @Option(help: "Read the config from the Kubernetes API as this kubeconfig says (with --config: both).")
        var kubeconfig: String?

        @Option(help: "Namespace for manifests without one.")
        var namespace = "default"

        @Option(help: "As `run`: this waypoint's Gateway name in --namespace.")
        var gateway = "waypoint"

        @Option(
            help: "The HBONE :authority (service VIP:port) the request arrives through; without it, the plaintext listener.")
        var tunnel: String?

        @Option(help: "Host header.")
        var host = "web"

        @Option(help: "Method.")
        var method = "GET"

        @Option(help: "Request path (and query), before normalization.")
        var path = "/"

        @Option(help: "Header NAME=VALUE (repeatable).")
        var header: [String] = []

        @Option(help: "Source principal (TD/ns/NS/sa/SA); none means plaintext.")
        var principal: String?

        @Option(help: "Source IP.")
        var sourceIP = "10.0.0.1"

        @Option(help: "Path normalization, as `run`.")
        var pathNormalization = PathNormalizationArgument.base

        @Option(help: "Layered authorization, as `run`.")
        var layeredAuthorization = Toggle.on

        @Option(help: "DENY rules also match the hardened path, as `run`.")
        var hardenDenyPaths = Toggle.on

        func validate() throws {
            if config.isEmpty && kubeconfig == nil { throw UsageError("--config or --kubeconfig is required") }
            if let principal, SpiffeIdentity(uri: "spiffe://" + principal) == nil {
                throw UsageError("--principal must look like cluster.local/ns/NS/sa/SA")
            }
            if tunnel != nil && principal == nil { throw UsageError("--tunnel needs --principal (HBONE is mutual TLS)") }
        }

        func run() throws {
            let spec: ConfigSpec
            var objects: [JSONDocument] = []
            if let kubeconfig {
                do {
                    let credentials = APICredentials(try Kubeconfig.load(path: kubeconfig), path: kubeconfig)
                    objects = try KindWatcher.listOnce(
                        WatchedKind.all(in: namespace) + [.gateway(named: gateway, in: namespace)], credentials: credentials)
                    // What routes here name in other namespaces, read as `run` reads it: the Services first, then
                    // what they select.
                    var listed: Set<WatchedKind> = []
                    for _ in 0..<2 {
                        guard
                            let spec = try? ManifestLoader.load(
                                paths: config, objects: objects, source: "kubernetes", defaultNamespace: namespace)
                        else { break }
                        let references = spec.foreignReferences(clusterDomain: SnapshotCompiler(namespace: namespace).clusterDomain)
                        let kinds =
                            references.services.sorted().flatMap { WatchedKind.service(named: $0.name, in: $0.namespace) }
                            + references.grantNamespaces.sorted().map { WatchedKind.referenceGrants(in: $0) }
                            + references.namespaces.sorted().map { WatchedKind.destinationRules(in: $0) }
                            + references.pods.sorted().map { WatchedKind.pods(selectedBy: $0.selector, in: $0.namespace) }
                        let new = kinds.filter { $0.namespace != namespace && listed.insert($0).inserted }
                        objects += try KindWatcher.listOnce(new, credentials: credentials)
                    }
                } catch {
                    print("error: \(error)")
                    throw ExitCode(1)
                }
            }
            do {
                spec = try ManifestLoader.load(paths: config, objects: objects, source: "kubernetes", defaultNamespace: namespace)
            } catch {
                for e in error.errors { print("error: \(e)") }
                throw ExitCode(1)
            }
            var compiler = SnapshotCompiler(namespace: namespace)
            compiler.gatewayName = gateway
            if kubeconfig != nil { compiler.gateway = gateway }  // as `run` reading the API: only what binds to it is served
            compiler.layeredAuthorization = layeredAuthorization == .on
            compiler.hardenedDenyPaths = hardenDenyPaths == .on
            let snapshot = compiler.compile(spec, generation: 1)
            var destination: Destination? = nil
            if let tunnel {
                guard let address = SocketAddress(tunnel), let found = snapshot.destination(for: address) else {
                    print("tunnel: CONNECT \(tunnel) refused with 400: not a service or endpoint served here")
                    throw ExitCode(1)
                }
                destination = found
                print("tunnel: CONNECT \(tunnel) → \(found.name) (\(found.innerProtocol))")
            }
            let identity = principal.flatMap { SpiffeIdentity(uri: "spiffe://" + $0) }
            let peer = PeerFacts(
                identity: identity, sourceIP: sourceIP, sourceAddress: sourceIP, destinationIP: tunnel.flatMap { SocketAddress($0)?.ip })

            var text = "\(method) \(path) HTTP/1.1\r\nhost: \(host)\r\n"
            for h in header {
                let parts = h.split(separator: "=", maxSplits: 1)
                text += "\(parts[0]): \(parts.count > 1 ? parts[1] : "")\r\n"
            }
            var bytes = Array((text + "\r\n").utf8)
            var head = RequestHead()
            let parsed = bytes.withUnsafeBytes { HTTP1Parser.parseRequest($0, into: &head) }
            guard case .complete = parsed else {
                print("request: rejected by the HTTP/1.1 parser: \(parsed)")
                throw ExitCode(1)
            }
            // The proxy's normalization, in place, exactly as `run` does it.
            let normalized: Int? = bytes.withUnsafeMutableBytes { raw in
                pathNormalization.mode.normalize(
                    UnsafeMutableRawBufferPointer(rebasing: raw[Int(head.path.start)..<Int(head.path.start + head.path.count)]))
            }
            guard let normalized else {
                print("request: 400, the path is refused by normalization (\(pathNormalization.rawValue))")
                return
            }
            head.path.count = Int32(normalized)
            bytes.withUnsafeBytes {
                print("request: \(method) \(head.path.string(in: $0)) host \(host) from \(principal ?? "plaintext (no principal)")")
            }

            let router = SnapshotRouter(snapshot: snapshot, seed: 1, counters: WorkerCounters())
            let decision = bytes.withUnsafeBytes { router.route(head, $0, destination: &destination, peer: peer) }
            if let check = decision.check {
                let authorizer = check.authorizer
                print(
                    "external authorization: CUSTOM \(check.policy) asks provider \(authorizer.name) (\(authorizer.service):\(authorizer.port)) first;"
                        + " what follows holds if it allows (failing, \(authorizer.failOpen ? "allowed" : "answered \(authorizer.statusOnError)"))"
                )
            }
            explainAuthorization(snapshot, decision.labels.policy, head, bytes, destination, peer)
            if case .reply(let reply) = decision.action, reply == .rbacDenied || reply == .mtlsRequired {
                // Denied before routing: routes are not looked at.
            } else {
                explainRouting(snapshot, head, bytes, destination)
            }
            switch decision.action {
            case .reply(let reply):
                print("result: \(reply.status) \(reply.body.description.trimmingWhitespace())")
            case .respond(let status, let body, let delay):
                let after = delay.map { " after \(GoDuration.format($0))" } ?? ""
                print("result: \(status) answered by the waypoint\(after): \(String(decoding: body, as: UTF8.self))")
            case .redirect(let status, let location):
                print("result: \(status) redirect to \(String(decoding: location, as: UTF8.self))")
            case .forward(let endpoint, let route, _, _):
                print("result: forwarded by route \(route) to endpoint \(snapshot.endpoints[Int(endpoint)])")
            }
        }

        /// Which rule matched, and why each rule before it in order did not (at most a screenful).
        private func explainRouting(_ snapshot: Snapshot, _ head: RequestHead, _ bytes: [UInt8], _ destination: Destination?) {
            bytes.withUnsafeBytes { raw in
                var host: Int32 = destination?.virtualHost ?? -1
                var port = destination?.port
                if destination == nil, let found = snapshot.routes.virtualHost(forHost: head.host.bytes(in: raw)) { (host, port) = found }
                guard host >= 0, let rules = snapshot.routes.virtualHosts[Int(host)].rules(forPort: port) else {
                    print("routing: no service or route serves this host and port")
                    return
                }
                let matched = rules.firstMatch(head, raw)
                let shown = 12
                for rule in rules.rules.prefix(min(matched ?? rules.rules.count, shown)) {
                    print("  rule \(describe(rule.origin)) [\(rule.match.path)]: no match, \(failure(rule.match, head, raw))")
                }
                if (matched ?? rules.rules.count) > shown {
                    print("  ... \((matched ?? rules.rules.count) - shown) more rules did not match")
                }
                if let matched {
                    let rule = rules.rules[matched]
                    print("routing: matched rule \(describe(rule.origin)) [\(rule.match.path)]")
                    if case .forward(let set) = rule.action { explainBackends(snapshot, set) }
                } else {
                    print(
                        rules.fallback == nil
                            ? "routing: no rule matched (routes are attached, so 404)" : "routing: no route attached: to the service itself"
                    )
                }
            }
        }

        /// Where a forwarding rule may send the request, and what it does to it on the way.
        private func explainBackends(_ snapshot: Snapshot, _ set: BackendSet) {
            let backends = set.clusters.map { entry -> String in
                let name = entry.cluster >= 0 ? snapshot.clusters[Int(entry.cluster)].name : "(unresolved: 500)"
                return set.clusters.count > 1 ? "\(name) weight \(entry.weight)" : name
            }
            print("backends: " + backends.joined(separator: ", "))
            let policy = set.policy
            var filters: [String] = []
            if policy.requestHeaders != nil { filters.append("request headers") }
            if policy.responseHeaders != nil { filters.append("response headers") }
            if set.clusters.contains(where: { $0.policy != nil }) { filters.append("per-backend headers") }
            if policy.rewrite != nil { filters.append("rewrite") }
            if !policy.mirrors.isEmpty {
                filters.append(
                    "mirror to "
                        + policy.mirrors.map { $0.cluster >= 0 ? snapshot.clusters[Int($0.cluster)].name : "(unresolved)" }.joined(
                            separator: ", "))
            }
            if let retry = policy.retry { filters.append("retries \(retry.maxRetries)") }
            if let timeout = policy.requestTimeout { filters.append("timeout \(timeout)") }
            if let delay = policy.delay { filters.append("fault delay \(delay.duration) at \(delay.percent)%") }
            if let abort = set.abort { filters.append("fault abort \(abort.status) at \(abort.percent)%") }
            if !filters.isEmpty { print("filters: " + filters.joined(separator: ", ")) }
        }

        private func describe(_ origin: RuleOrigin) -> String { "\(origin.route) #\(origin.ruleIndex)" }

        private func failure(_ match: RequestMatch, _ head: RequestHead, _ raw: UnsafeRawBufferPointer) -> String {
            switch match.failedCondition(head, raw) {
            case .path?, nil: return "path"
            case .method?: return "method \(match.method.map { "\($0)" } ?? "")"
            case .header(let i)?:
                let condition = match.headers[i]
                return
                    "header \(String(decoding: condition.name, as: UTF8.self)) \(condition.negated ? "must not be " : "")\(condition.value)"
            case .queryParam(let i)?:
                return "query parameter \(String(decoding: match.queryParams[i].name, as: UTF8.self)) \(match.queryParams[i].value)"
            }
        }

        /// Which policies applied, and which policy and rule decided.
        private func explainAuthorization(
            _ snapshot: Snapshot, _ decidingPolicy: String?, _ head: RequestHead, _ bytes: [UInt8],
            _ destination: Destination?, _ peer: PeerFacts
        ) {
            var index: Int32 = destination?.virtualHost ?? -1
            if destination == nil, let found = bytes.withUnsafeBytes({ snapshot.routes.virtualHost(forHost: head.host.bytes(in: $0)) }) {
                index = found.index
            }
            let set = index >= 0 ? snapshot.authorization[Int(index)] : snapshot.unmatchedHostPolicies
            if index >= 0 && snapshot.strictMTLS[Int(index)] { print("peer authentication: STRICT (plaintext is refused)") }
            let all = set.custom + set.deny + set.audit + set.allow
            print("policies applying: " + (all.isEmpty ? "none" : all.map { "\($0.action.rawValue) \($0.name)" }.joined(separator: ", ")))
            guard let name = decidingPolicy, let policy = all.first(where: { $0.name == name }) else {
                print(
                    set.allow.isEmpty
                        ? "authorization: allowed (no ALLOW policy applies)"
                        : "authorization: denied (ALLOW policies apply and none matched)")
                return
            }
            var request = AuthorizationRequest()
            request.principal = peer.identity?.principal
            request.namespace = peer.identity?.namespace
            request.serviceAccount = peer.identity?.serviceAccount
            request.trustDomain = peer.identity?.trustDomain
            request.sourceIP = peer.sourceIPBytes
            request.destinationPort = destination?.port
            let rule: Int? = bytes.withUnsafeBytes { raw in
                let host = Array(head.host.bytes(in: raw)).map(HTTP1Parser.lowercased)
                return host.withUnsafeBytes { h in
                    request.http = AuthorizationRequest.HTTP(
                        host: h, method: head.method.bytes(in: raw), path: head.path.bytes(in: raw),
                        head: head, headBytes: raw)
                    return PolicySet.matchingRule(policy, request)
                }
            }
            let verdict = policy.action == .allow ? "allowed" : "denied"
            print("authorization: \(verdict) by \(policy.action.rawValue) \(policy.name)\(rule.map { ", rule \($0)" } ?? "")")
        }
    }
}
