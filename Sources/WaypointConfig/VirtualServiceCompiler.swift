import Filters
import HTTPRouter
import Regex
import WaypointCore

/// VirtualService `http[]` rules as route rules: declaration order, first match wins (Istio), for one port of
/// one service or ServiceEntry host.
extension CompileState {
    /// The VirtualServices whose `hosts` name `fqdn` (a service's `name.ns.svc.<domain>`) or one of `hosts`
    /// (a ServiceEntry's), oldest first as Istio merges them, that apply to mesh traffic.
    func virtualServices(fqdn: String?, hosts: [String]) -> [VirtualServiceSpec] {
        spec.virtualServices.filter { vs in
            (vs.gateways.isEmpty || vs.gateways.contains("mesh"))
                && vs.hosts.contains { host in
                    if let fqdn, qualified(host, namespace: vs.namespace) == fqdn { return true }
                    return hosts.contains(host)
                }
        }.sorted { a, b in
            a.creationTimestamp != b.creationTimestamp
                ? a.creationTimestamp < b.creationTimestamp
                : (a.namespace, a.name) < (b.namespace, b.name)
        }
    }

    /// A host as Istio resolves a short name: in the namespace of the object that names it.
    func qualified(_ host: String, namespace: String) -> String {
        let domain = compiler.clusterDomain
        switch host.split(separator: ".").count {
        case 1: return "\(host).\(namespace).svc.\(domain)"
        case 2: return "\(host).svc.\(domain)"
        case 3 where host.hasSuffix(".svc"): return "\(host).\(domain)"
        default: return host
        }
    }

    /// The rules of `virtualServices` for requests arriving on `port`.
    mutating func rules(from virtualServices: [VirtualServiceSpec], port: Int) -> [RouteRule<RouteAction>] {
        var result: [RouteRule<RouteAction>] = []
        for vs in virtualServices {
            let name = "\(vs.namespace)/\(vs.name)"
            for (index, rule) in vs.http.enumerated() {
                let origin = RuleOrigin(route: name, ruleIndex: index, creationTimestamp: vs.creationTimestamp)
                for match in rule.matches.isEmpty ? [VirtualServiceSpec.Match()] : rule.matches {
                    // Conditions a waypoint cannot evaluate never hold: the request falls through to later rules.
                    guard match.unsupported.isEmpty, match.port == nil || match.port == port else { continue }
                    result.append(RouteRule(match: Self.compile(match), action: action(rule, match, vs, port: port), origin: origin))
                }
            }
        }
        return result
    }

    private mutating func action(
        _ rule: VirtualServiceSpec.HTTPRule, _ match: VirtualServiceSpec.Match, _ vs: VirtualServiceSpec,
        port: Int
    ) -> RouteAction {
        guard rule.unsupported.isEmpty else { return .reply(.invalidBackend) }
        if let (status, body) = rule.directResponse { return .respond(status: status, body: body) }
        if let redirect = rule.redirect { return .redirect(redirect) }
        let name = "\(vs.namespace)/\(vs.name)"
        var weighted: [WeightedCluster] = []
        for destination in rule.route {
            weighted.append(
                WeightedCluster(
                    cluster: resolve(destination, namespace: vs.namespace, port: port, from: name),
                    weight: UInt32(destination.weight)))
        }
        let total = weighted.reduce(UInt32(0)) { $0 + $1.weight }
        guard total > 0 else { return .reply(.invalidBackend) }
        var rewrite: URLRewrite? = nil
        if rule.rewriteURI != nil || rule.rewriteRegex != nil || rule.rewriteAuthority != nil {
            var path: PathModifier? = rule.rewriteRegex.map { .replaceRegex($0.regex, $0.replacement) }
            if let uri = rule.rewriteURI {
                // Istio: a prefix match has its matched prefix replaced; any other match, the whole path.
                if let matched = match.uri, matched.kind == .prefix {
                    path = .replacePrefixMatch(Array(uri.utf8), matched: Array(matched.value.utf8))
                } else {
                    path = .replaceFullPath(Array(uri.utf8))
                }
            }
            rewrite = URLRewrite(hostname: rule.rewriteAuthority, path: path)
        }
        let mirrors = rule.mirrors.map {
            (cluster: resolve($0.destination, namespace: vs.namespace, port: port, from: name), percent: $0.percent)
        }
        let policy = ForwardPolicy(
            retry: rule.retries.map {
                .istio(attempts: $0.attempts, retryOn: $0.retryOn, remoteLocalities: $0.retryRemoteLocalities)
            },
            requestTimeout: rule.timeout, perTryTimeout: rule.retries.flatMap { $0.attempts > 0 ? $0.perTryTimeout : nil },
            requestHeaders: rule.requestHeaders, responseHeaders: rule.responseHeaders, rewrite: rewrite,
            mirrors: mirrors, delay: rule.fault?.delay.map { (duration: $0, percent: rule.fault!.delayPercent) })
        let abort = rule.fault?.abortStatus.map { (status: $0, percent: rule.fault!.abortPercent) }
        for (i, destination) in rule.route.enumerated() where destination.requestHeaders != nil || destination.responseHeaders != nil {
            weighted[i].policy = policy.addingHeaders(request: destination.requestHeaders, response: destination.responseHeaders)
        }
        return .forward(BackendSet(clusters: weighted, totalWeight: total, route: name, policy: policy, abort: abort))
    }

    /// A destination's cluster: a service (short names in the VirtualService's namespace) or a ServiceEntry
    /// host; the port given, else the request's port when the destination serves it, else its only port; the
    /// subset's cluster when one is named. -1 (500 when picked) for anything unknown.
    private mutating func resolve(_ destination: VirtualServiceSpec.Destination, namespace: String, port: Int, from vs: String) -> Int32 {
        let fqdn = qualified(destination.host, namespace: namespace)
        var base: String? = nil
        var ports: [Int] = []
        if let service = spec.services.first(where: { "\($0.name).\($0.namespace).svc.\(compiler.clusterDomain)" == fqdn }) {
            base = "\(service.namespace)/\(service.name)"
            ports = service.ports.map(\.port)
        } else if let entry = spec.serviceEntries.first(where: { $0.hosts.contains(destination.host) }) {
            base = destination.host
            ports = entry.ports.map(\.number)
        }
        let chosen = destination.port ?? (ports.contains(port) ? port : ports.count == 1 ? ports[0] : nil)
        if let base, let chosen {
            let key = "\(base):\(chosen)" + (destination.subset.map { "|\($0)" } ?? "")
            if let index = clusterIndex[key] { return index }
        }
        let described = destination.host + (destination.port.map { ":\($0)" } ?? "") + (destination.subset.map { " subset \($0)" } ?? "")
        warnOnce("VirtualService \(vs): destination \(described) not found; requests routed to it get 500")
        return -1
    }

    /// Regular expressions come compiled from the parser (a spec without one, made by hand, matches its pattern
    /// literally: never more than it says).
    static func compile(_ match: VirtualServiceSpec.Match) -> RequestMatch {
        var path = PathMatch.prefix([0x2F])
        if let uri = match.uri {
            switch uri.kind {
            case .exact, .present: path = .exact(Array(uri.value.utf8))  // `uri: {}` matches the empty path only
            case .prefix: path = .stringPrefix(Array(uri.value.utf8))
            case .regex: path = uri.regex.map(PathMatch.regex) ?? .exact(Array(uri.value.utf8))
            }
        }
        var headers: [HeaderMatch] = []
        if let authority = match.authority { headers.append(HeaderMatch(name: "host", value: value(authority))) }
        headers += match.headers.map { HeaderMatch(name: $0.name, value: value($0.match)) }
        headers += match.withoutHeaders.map { HeaderMatch(name: $0.name, value: value($0.match), negated: true) }
        return RequestMatch(
            path: path, ignoreCase: match.ignoreUriCase, methodMatch: match.method.map(value), headers: headers,
            queryParams: match.queryParams.map { QueryMatch(name: $0.name, value: value($0.match)) })
    }

    private static func value(_ spec: VirtualServiceSpec.StringMatchSpec) -> ValueMatch {
        switch spec.kind {
        case .exact: return .exact(Array(spec.value.utf8))
        case .prefix: return .prefix(Array(spec.value.utf8))
        case .regex: return spec.regex.map(ValueMatch.regex) ?? .exact(Array(spec.value.utf8))
        case .present: return .present
        }
    }

    /// What `waypoint check` says about VirtualServices: each once, however many ports they apply to.
    mutating func warnAboutVirtualServices() {
        for vs in spec.virtualServices {
            let label = "VirtualService \(vs.namespace)/\(vs.name)"
            if !vs.gateways.isEmpty && !vs.gateways.contains("mesh") {
                warnings.append("\(label): gateways \(vs.gateways.joined(separator: ", ")) do not include mesh: not applied by a waypoint")
                continue
            }
            for section in vs.ignoredSections { warnings.append("\(label): \(section) routes are not applied by a waypoint") }
            for (index, rule) in vs.http.enumerated() {
                if !rule.unsupported.isEmpty {
                    warnings.append(
                        "\(label): http[\(index)] uses \(rule.unsupported.joined(separator: ", ")), not supported: requests matching it get 500"
                    )
                }
                for field in rule.ignored {
                    warnings.append("\(label): http[\(index)] \(field) is not applied (requests are routed without it)")
                }
                for match in rule.matches where !match.unsupported.isEmpty {
                    warnings.append(
                        "\(label): http[\(index)] match on \(match.unsupported.joined(separator: ", ")) cannot be evaluated by a waypoint: that match never holds"
                    )
                }
            }
        }
    }
}
