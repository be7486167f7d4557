import Filters
import Regex
import WaypointCore

/// Reads Gateway and HTTPRoute documents (gateway.networking.k8s.io/v1).
enum RouteParser {
    static func gateway(_ doc: ManifestNode, namespace: String, name: String) throws(ConfigError) -> GatewaySpec {
        let spec = try doc.required("spec")
        var listeners: [GatewaySpec.Listener] = []
        for l in try spec.required("listeners").array() {
            var listener = GatewaySpec.Listener(
                name: try l.required("name").string(), port: try l.required("port").int(in: 1...65535),
                proto: try l.required("protocol").string(), hostname: try l.optionalString("hostname"))
            if let allowed = try l.optional("allowedRoutes") {
                if let namespaces = try allowed.optional("namespaces") {
                    switch try namespaces.optionalString("from") ?? "Same" {
                    case "Same": listener.allowedRoutes.from = .same
                    case "All": listener.allowedRoutes.from = .all
                    case "Selector": listener.allowedRoutes.from = .selector(try labelSelector(try namespaces.required("selector")))
                    case let other: throw namespaces.error("unknown from \"\(other)\" (Same, All or Selector)", field: "from")
                    }
                }
                if let kinds = try allowed.optional("kinds") {
                    var names: [String] = []
                    for kind in try kinds.array() {
                        let group = try kind.optionalString("group") ?? "gateway.networking.k8s.io"
                        guard group == "gateway.networking.k8s.io" else { continue }  // no route kinds of other groups here
                        names.append(try kind.required("kind").string())
                    }
                    listener.allowedRoutes.kinds = names
                }
            }
            listeners.append(listener)
        }
        var gateway = GatewaySpec(
            namespace: namespace, name: name, gatewayClassName: try spec.optionalString("gatewayClassName") ?? "",
            listeners: listeners)
        let labels = try doc.required("metadata").optional("labels")
        if let waypointFor = try labels?.optionalString("istio.io/waypoint-for") {
            guard let traffic = GatewaySpec.TrafficType(rawValue: waypointFor) else {
                throw labels!.error(
                    "unknown istio.io/waypoint-for \"\(waypointFor)\" (service, workload, all or none)", field: "istio.io/waypoint-for")
            }
            gateway.waypointFor = traffic
        }
        return gateway
    }

    static func httpRoute(
        _ doc: ManifestNode, namespace: String, name: String, creation: String,
        matchesOf readMatch: (ManifestNode) throws(ConfigError) -> HTTPRouteSpec.MatchSpec = { m throws(ConfigError) in try match(m) }
    ) throws(ConfigError) -> HTTPRouteSpec {
        let spec = try doc.required("spec")
        var parents: [HTTPRouteSpec.ParentRef] = []
        for p in try spec.optionalArray("parentRefs") {
            let group = try p.optionalString("group") ?? "gateway.networking.k8s.io"
            let kind = try p.optionalString("kind") ?? "Gateway"
            let ref = HTTPRouteSpec.ParentRef(
                group: group, kind: kind, namespace: try p.optionalString("namespace") ?? namespace,
                name: try p.required("name").string(), port: try p.optional("port")?.int(in: 1...65535),
                sectionName: try p.optionalString("sectionName"))
            guard ref.isService || ref.isGateway else {
                throw p.error("unsupported parent \(group.isEmpty ? "" : group + "/")\(kind): expected a Service or a Gateway")
            }
            parents.append(ref)
        }
        var hostnames: [String] = []
        for h in try spec.optionalArray("hostnames") {
            let host = try h.string().lowercased()
            guard !host.isEmpty, !host.contains(":"), host == "*" || !host.dropFirst().contains("*") else {
                throw h.error("invalid hostname \"\(host)\"")
            }
            hostnames.append(host)
        }
        var rules: [HTTPRouteSpec.Rule] = []
        for r in try spec.optionalArray("rules") {
            var matches: [HTTPRouteSpec.MatchSpec] = []
            for m in try r.optionalArray("matches") { matches.append(try readMatch(m)) }
            var backends: [HTTPRouteSpec.BackendRef] = []
            for b in try r.optionalArray("backendRefs") {
                var ref = try backendRef(b, namespace: namespace)
                for f in try b.optionalArray("filters") {
                    switch try f.required("type").string() {
                    case "RequestHeaderModifier": ref.requestHeaders = try headerModifier(try f.required("requestHeaderModifier"))
                    case "ResponseHeaderModifier": ref.responseHeaders = try headerModifier(try f.required("responseHeaderModifier"))
                    case let other: ref.unsupportedFilters.append(other)
                    }
                }
                backends.append(ref)
            }
            var rule = HTTPRouteSpec.Rule(matches: matches, backendRefs: backends)
            for ref in backends { rule.unsupportedFilters += ref.unsupportedFilters.map { "\($0) (on backendRef \(ref.name))" } }
            if let timeouts = try r.optional("timeouts") {
                rule.requestTimeout = try timeouts.optionalDuration("request", zeroIsNil: true)
                rule.backendRequestTimeout = try timeouts.optionalDuration("backendRequest", zeroIsNil: true)
                if let request = rule.requestTimeout, let backend = rule.backendRequestTimeout, backend > request {
                    throw try timeouts.required("backendRequest").error("backendRequest must not be longer than request (Gateway API)")
                }
            }
            if let retry = try r.optional("retry") {
                var codes: [Int] = []
                for c in try retry.optionalArray("codes") { codes.append(try c.int(in: 400...599)) }
                rule.retry = .init(
                    codes: codes, attempts: try retry.optional("attempts")?.int(in: 0...10) ?? 1,
                    backoff: try retry.optionalDuration("backoff", zeroIsNil: true))
            }
            for f in try r.optionalArray("filters") {
                let type = try f.required("type").string()
                switch type {
                case "RequestHeaderModifier": rule.requestHeaders = try headerModifier(try f.required("requestHeaderModifier"))
                case "ResponseHeaderModifier": rule.responseHeaders = try headerModifier(try f.required("responseHeaderModifier"))
                case "URLRewrite":
                    let node = try f.required("urlRewrite")
                    rule.rewrite = URLRewrite(hostname: try node.optionalString("hostname"), path: try pathModifier(node, matches))
                case "RequestRedirect":
                    let node = try f.required("requestRedirect")
                    let scheme = try node.optionalString("scheme")
                    if let scheme, scheme != "http" && scheme != "https" {
                        throw try node.required("scheme").error("scheme must be http or https")
                    }
                    rule.redirect = RequestRedirect(
                        scheme: scheme, hostname: try node.optionalString("hostname"), port: try node.optional("port")?.int(in: 1...65535),
                        path: try pathModifier(node, matches), statusCode: try redirectStatus(node))
                case "RequestMirror":
                    let node = try f.required("requestMirror")
                    var percent = 100.0
                    if let value = try node.optional("percent") {
                        percent = Double(try value.int(in: 0...100))
                    } else if let fraction = try node.optional("fraction") {
                        let numerator = try fraction.required("numerator").int(in: 0...Int(Int32.max))
                        let denominator = try fraction.optional("denominator")?.int(in: 1...Int(Int32.max)) ?? 100
                        guard numerator <= denominator else { throw fraction.error("numerator must not exceed denominator") }
                        percent = Double(numerator) * 100 / Double(denominator)
                    }
                    rule.mirrors.append(
                        .init(backend: try backendRef(try node.required("backendRef"), namespace: namespace), percent: percent))
                default: rule.unsupportedFilters.append(type)
                }
            }
            rules.append(rule)
        }
        return HTTPRouteSpec(
            namespace: namespace, name: name, creationTimestamp: creation, parentRefs: parents,
            hostnames: hostnames, rules: rules)
    }

    /// A Kubernetes label selector: `matchLabels` and `matchExpressions` (In, NotIn, Exists, DoesNotExist).
    static func labelSelector(_ node: ManifestNode) throws(ConfigError) -> LabelSelector {
        var selector = LabelSelector()
        if let labels = try node.optional("matchLabels") { selector.matchLabels = try labels.stringMap() }
        for expression in try node.optionalArray("matchExpressions") {
            let op = try expression.required("operator")
            guard let parsed = LabelSelector.Operator(rawValue: try op.string()) else {
                throw op.error("unknown operator \"\(try op.string())\" (In, NotIn, Exists or DoesNotExist)")
            }
            var values: [String] = []
            for value in try expression.optionalArray("values") { values.append(try value.string()) }
            selector.matchExpressions.append(.init(key: try expression.required("key").string(), op: parsed, values: values))
        }
        return selector
    }

    /// A ReferenceGrant (gateway.networking.k8s.io/v1beta1): which kinds in which namespaces may refer to what here.
    static func referenceGrant(_ doc: ManifestNode, namespace: String, name: String) throws(ConfigError) -> ReferenceGrantSpec {
        let spec = try doc.required("spec")
        var grant = ReferenceGrantSpec(namespace: namespace, name: name, from: [], to: [])
        for from in try spec.required("from").array() {
            grant.from.append(
                .init(
                    group: try from.required("group").string(), kind: try from.required("kind").string(),
                    namespace: try from.required("namespace").string()))
        }
        for to in try spec.required("to").array() {
            grant.to.append(
                .init(group: try to.required("group").string(), kind: try to.required("kind").string(), name: try to.optionalString("name"))
            )
        }
        return grant
    }

    /// A TCPRoute (gateway.networking.k8s.io/v1alpha2): parents and weighted backendRefs; a TCP stream has
    /// nothing to match or filter.
    static func tcpRoute(_ doc: ManifestNode, namespace: String, name: String, creation: String) throws(ConfigError) -> HTTPRouteSpec {
        let spec = try doc.required("spec")
        for (i, r) in try spec.optionalArray("rules").enumerated() {
            for key in ["matches", "filters"] where try r.optional(key) != nil {
                throw try r.required(key).error("a TCPRoute rule has only backendRefs (rules[\(i)])")
            }
        }
        var route = try httpRoute(doc, namespace: namespace, name: name, creation: creation)
        route.kind = "TCPRoute"
        return route
    }

    /// A GRPCRoute as the HTTP/2 routes it means: a method match becomes a path match on `/service/method`
    /// (exact service and method: Exact; service only: PathPrefix `/service`; otherwise an anchored regular
    /// expression), headers as they are; filters and backendRefs as an HTTPRoute's.
    static func grpcRoute(_ doc: ManifestNode, namespace: String, name: String, creation: String) throws(ConfigError) -> HTTPRouteSpec {
        var route = try httpRoute(doc, namespace: namespace, name: name, creation: creation, matchesOf: grpcMatch)
        route.kind = "GRPCRoute"
        return route
    }

    /// A path match on a gRPC method pattern, compiled here.
    private static func methodPath(_ pattern: String, _ method: ManifestNode) throws(ConfigError) -> HTTPRouteSpec.PathMatchSpec {
        do { return .init(type: "RegularExpression", value: pattern, regex: try Regex(pattern)) } catch {
            throw method.error(error.description)
        }
    }

    private static func grpcMatch(_ m: ManifestNode) throws(ConfigError) -> HTTPRouteSpec.MatchSpec {
        var path: HTTPRouteSpec.PathMatchSpec? = nil
        if let method = try m.optional("method") {
            let type = try method.optionalString("type") ?? "Exact"
            let service = try method.optionalString("service")
            let name = try method.optionalString("method")
            guard service != nil || name != nil else { throw method.error("one of service and method is required") }
            switch type {
            case "Exact":
                for (key, value) in [("service", service), ("method", name)] {
                    if let value, value.isEmpty || value.contains("/") {
                        throw try method.required(key).error("must not be empty or contain \"/\"")
                    }
                }
                if let service, let name {
                    path = .init(type: "Exact", value: "/\(service)/\(name)")
                } else if let service {
                    path = .init(type: "PathPrefix", value: "/\(service)")
                } else if let name {
                    path = try methodPath("/[^/]+/\(Regex.quote(name))", method)
                }
            case "RegularExpression":
                path = try methodPath("/(?:\(service ?? "[^/]+"))/(?:\(name ?? "[^/]+"))", method)
            default:
                throw try method.required("type").error("unsupported method match type \"\(type)\" (Exact, RegularExpression)")
            }
        }
        var match = try self.match(m, allowing: ["headers"])
        match.path = path
        return match
    }

    private static func backendRef(_ b: ManifestNode, namespace: String) throws(ConfigError) -> HTTPRouteSpec.BackendRef {
        .init(
            group: try b.optionalString("group") ?? "", kind: try b.optionalString("kind") ?? "Service",
            namespace: try b.optionalString("namespace") ?? namespace, name: try b.required("name").string(),
            port: try b.optional("port")?.int(in: 1...65535), weight: try b.optional("weight")?.int(in: 0...1_000_000) ?? 1)
    }

    private static func redirectStatus(_ node: ManifestNode) throws(ConfigError) -> Int {
        guard let status = try node.optional("statusCode") else { return 302 }
        let code = try status.int(in: 100...599)
        guard [301, 302, 303, 307, 308].contains(code) else { throw status.error("statusCode must be 301, 302, 303, 307 or 308") }
        return code
    }

    /// A `path` modifier; ReplacePrefixMatch needs every match of the rule to be a PathPrefix (Gateway API).
    private static func pathModifier(_ node: ManifestNode, _ matches: [HTTPRouteSpec.MatchSpec]) throws(ConfigError) -> PathModifier? {
        guard let path = try node.optional("path") else { return nil }
        switch try path.required("type").string() {
        case "ReplaceFullPath":
            let value = try path.required("replaceFullPath").string()
            guard value.hasPrefix("/") else { throw try path.required("replaceFullPath").error("a path must start with \"/\"") }
            return .replaceFullPath(Array(value.utf8))
        case "ReplacePrefixMatch":
            let value = try path.required("replacePrefixMatch").string()
            guard value.hasPrefix("/") else { throw try path.required("replacePrefixMatch").error("a path must start with \"/\"") }
            guard matches.allSatisfy({ $0.path == nil || $0.path?.type == "PathPrefix" }) else {
                throw path.error("ReplacePrefixMatch needs the rule's matches to be PathPrefix")
            }
            return .replacePrefixMatch(Array(value.utf8), matched: [])
        case let other:
            throw try path.required("type").error("unsupported path modifier \"\(other)\" (ReplaceFullPath, ReplacePrefixMatch)")
        }
    }

    /// Headers a modifier may not touch: they frame the message or belong to the hop.
    static let protectedHeaders: Set<String> = [
        "content-length", "transfer-encoding", "connection", "keep-alive", "upgrade",
        "te", "trailer", "proxy-connection",
    ]

    private static func headerModifier(_ node: ManifestNode) throws(ConfigError) -> HeaderModifier {
        func pairs(_ key: String) throws(ConfigError) -> [(String, String)] {
            var result: [(String, String)] = []
            for item in try node.optionalArray(key) {
                let name = try item.required("name").string()
                try checkName(name, item)
                result.append((name, try item.required("value").string()))
            }
            return result
        }
        var remove: [String] = []
        for item in try node.optionalArray("remove") {
            let name = try item.string()
            try checkName(name, item)
            remove.append(name)
        }
        return HeaderModifier(set: try pairs("set"), add: try pairs("add"), remove: remove)
    }

    static func checkName(_ name: String, _ node: ManifestNode) throws(ConfigError) {
        guard !name.isEmpty, name.utf8.allSatisfy(HTTP1Parser.isTokenChar) else { throw node.error("invalid header name \"\(name)\"") }
        guard !protectedHeaders.contains(name.lowercased()) else {
            throw node.error("header \(name) frames the message or belongs to the connection and cannot be modified")
        }
    }

    /// `allowing`: which parts are read (a GRPCRoute match has only headers besides its method).
    private static func match(_ m: ManifestNode, allowing parts: Set<String> = ["path", "headers", "queryParams", "method"])
        throws(ConfigError) -> HTTPRouteSpec.MatchSpec
    {
        var path: HTTPRouteSpec.PathMatchSpec? = nil
        if parts.contains("path"), let p = try m.optional("path") {
            let type = try p.optionalString("type") ?? "PathPrefix"
            let value = try p.optionalString("value") ?? "/"
            var regex: Regex? = nil
            switch type {
            case "Exact", "PathPrefix":
                guard value.hasPrefix("/") else { throw try p.required("value").error("a path must start with \"/\"") }
            case "RegularExpression":
                do { regex = try Regex(value) } catch { throw try p.required("value").error(error.description) }
            default:
                throw try p.required("type").error("unsupported path match type \"\(type)\" (Exact, PathPrefix, RegularExpression)")
            }
            path = .init(type: type, value: value, regex: regex)
        }
        var headers: [HTTPRouteSpec.HeaderMatchSpec] = []
        for h in try m.optionalArray("headers") {
            let type = try h.optionalString("type") ?? "Exact"
            let value = try h.required("value").string()
            var regex: Regex? = nil
            switch type {
            case "Exact": break
            case "RegularExpression":
                do { regex = try Regex(value) } catch { throw try h.required("value").error(error.description) }
            default:
                throw try h.required("type").error("unsupported header match type \"\(type)\" (Exact, RegularExpression)")
            }
            headers.append(.init(type: type, name: try h.required("name").string(), value: value, regex: regex))
        }
        var queryParams: [HTTPRouteSpec.HeaderMatchSpec] = []
        for q in try parts.contains("queryParams") ? m.optionalArray("queryParams") : [] {
            let type = try q.optionalString("type") ?? "Exact"
            let value = try q.required("value").string()
            var regex: Regex? = nil
            switch type {
            case "Exact": break
            case "RegularExpression":
                do { regex = try Regex(value) } catch { throw try q.required("value").error(error.description) }
            default:
                throw try q.required("type").error("unsupported query match type \"\(type)\" (Exact, RegularExpression)")
            }
            queryParams.append(.init(type: type, name: try q.required("name").string(), value: value, regex: regex))
        }
        let method = parts.contains("method") ? try m.optionalString("method") : nil
        if let method, !["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"].contains(method) {
            throw try m.required("method").error("unsupported method \"\(method)\"")
        }
        return .init(path: path, headers: headers, method: method, queryParams: queryParams)
    }
}
