import Filters
import Regex
import WaypointCore

/// Reads VirtualService documents (networking.istio.io): `hosts` and `http[]`, as Istio's reference describes them.
enum VirtualServiceParser {
    static func virtualService(_ doc: ManifestNode, namespace: String, name: String, creation: String) throws(ConfigError)
        -> VirtualServiceSpec
    {
        let spec = try doc.required("spec")
        var hosts: [String] = []
        for h in try spec.required("hosts").array() {
            let host = try h.string().lowercased()
            guard !host.isEmpty, !host.contains("/") else { throw h.error("invalid host \"\(host)\"") }
            hosts.append(host)
        }
        guard !hosts.isEmpty else { throw try spec.required("hosts").error("at least one host is required") }
        var rules: [VirtualServiceSpec.HTTPRule] = []
        for r in try spec.optionalArray("http") { rules.append(try rule(r)) }
        var ignored: [String] = []
        for key in ["tcp", "tls"] where try spec.optional(key) != nil { ignored.append(key) }
        var gateways: [String] = []
        for g in try spec.optionalArray("gateways") { gateways.append(try g.string()) }
        return VirtualServiceSpec(
            namespace: namespace, name: name, creationTimestamp: creation, hosts: hosts, gateways: gateways,
            http: rules, ignoredSections: ignored)
    }

    private static func rule(_ r: ManifestNode) throws(ConfigError) -> VirtualServiceSpec.HTTPRule {
        var rule = VirtualServiceSpec.HTTPRule()
        rule.name = try r.optionalString("name")
        for m in try r.optionalArray("match") { rule.matches.append(try match(m)) }
        let routes = try r.optionalArray("route")
        for d in routes {
            var destination = try self.destination(try d.required("destination"))
            if let weight = try d.optional("weight") {
                destination.weight = try weight.int(in: 0...100)
            } else {
                destination.weight = routes.count == 1 ? 100 : 0
            }
            if let headers = try d.optional("headers") {
                destination.requestHeaders = try headerOperations(try headers.optional("request"))
                destination.responseHeaders = try headerOperations(try headers.optional("response"))
            }
            rule.route.append(destination)
        }
        if let redirect = try r.optional("redirect") {
            let code = try redirect.optional("redirectCode")?.int(in: 300...399) ?? 301
            let scheme = try redirect.optionalString("scheme")
            if let scheme, scheme != "http" && scheme != "https" {
                throw try redirect.required("scheme").error("scheme must be http or https")
            }
            let uri = try redirect.optionalString("uri")
            if let uri, !uri.hasPrefix("/") { throw try redirect.required("uri").error("a path must start with \"/\"") }
            if try redirect.optional("derivePort") != nil { rule.unsupported.append("redirect.derivePort") }
            rule.redirect = RequestRedirect(
                scheme: scheme, hostname: try redirect.optionalString("authority"),
                port: try redirect.optional("port")?.int(in: 1...65535),
                path: uri.map { .replaceFullPath(Array($0.utf8)) }, statusCode: code)
        }
        if let direct = try r.optional("directResponse") {
            let status = try direct.required("status").int(in: 200...599)
            var body: [UInt8] = []
            if let b = try direct.optional("body") {
                if let text = try b.optionalString("string") {
                    body = Array(text.utf8)
                } else if let encoded = try b.optional("bytes") {
                    guard let decoded = base64Decoded(try encoded.string()) else {
                        throw encoded.error("body.bytes must be base64")
                    }
                    body = decoded
                }
            }
            rule.directResponse = (status, body)
        }
        if let rewrite = try r.optional("rewrite") {
            rule.rewriteURI = try rewrite.optionalString("uri")
            if let uri = rule.rewriteURI, !uri.hasPrefix("/") { throw try rewrite.required("uri").error("a path must start with \"/\"") }
            rule.rewriteAuthority = try rewrite.optionalString("authority")
            if let regexRewrite = try rewrite.optional("uriRegexRewrite") {
                let pattern = try regexRewrite.required("match").string()
                let regex: Regex
                do { regex = try Regex(pattern, anchored: false) } catch {
                    throw try regexRewrite.required("match").error(error.description)
                }
                let (replacement, highestGroup) = Regex.pcre2Replacement(fromRE2: try regexRewrite.required("rewrite").string())
                guard highestGroup <= regex.captureCount else {
                    throw try regexRewrite.required("rewrite").error("names group \\\(highestGroup); the pattern has \(regex.captureCount)")
                }
                guard rule.rewriteURI == nil else { throw regexRewrite.error("uri and uriRegexRewrite exclude each other") }
                rule.rewriteRegex = (regex, replacement)
            }
        }
        if let headers = try r.optional("headers") {
            rule.requestHeaders = try headerOperations(try headers.optional("request"))
            rule.responseHeaders = try headerOperations(try headers.optional("response"))
        }
        rule.timeout = try r.optionalDuration("timeout", zeroIsNil: true)
        if let retries = try r.optional("retries") {
            let retryOn = try retries.optionalString("retryOn")
            if let retryOn { try checkRetryOn(retryOn, try retries.required("retryOn")) }
            // Istio: `attempts` unset (0) disables retries for the rule, perTryTimeout included.
            rule.retries = .init(
                attempts: try retries.optional("attempts")?.int(in: 0...100) ?? 0,
                perTryTimeout: try retries.optionalDuration("perTryTimeout"), retryOn: retryOn,
                retryRemoteLocalities: try retries.optional("retryRemoteLocalities")?.bool() ?? false)
        }
        if let mirror = try r.optional("mirror") {
            var percent = 100.0
            if let percentage = try r.optional("mirrorPercentage") {
                percent = try percentage.required("value").number(in: 0...100)
            } else if let value = try r.optional("mirrorPercent") {
                percent = Double(try value.int(in: 0...100))
            }
            rule.mirrors.append((try destination(mirror), percent))
        }
        for m in try r.optionalArray("mirrors") {
            let percent = try m.optional("percentage").map { p throws(ConfigError) in try p.required("value").number(in: 0...100) } ?? 100
            rule.mirrors.append((try destination(try m.required("destination")), percent))
        }
        if let fault = try r.optional("fault") {
            var spec = VirtualServiceSpec.Fault()
            if let delay = try fault.optional("delay") {
                guard let fixed = try delay.optionalDuration("fixedDelay") else {
                    throw delay.error("fixedDelay is required (exponentialDelay is not supported)")
                }
                spec.delay = fixed
                spec.delayPercent = try percentage(delay)
            }
            if let abort = try fault.optional("abort") {
                guard let status = try abort.optional("httpStatus")?.int(in: 200...599) else {
                    throw abort.error("httpStatus is required (grpcStatus and http2Error are not supported)")
                }
                spec.abortStatus = status
                spec.abortPercent = try percentage(abort)
            }
            rule.fault = spec
        }
        if try r.optional("delegate") != nil { rule.unsupported.append("delegate") }
        // Browser-facing CORS headers matter little for mesh traffic; routing goes on without them.
        if try r.optional("corsPolicy") != nil { rule.ignored.append("corsPolicy") }
        let actions = [!rule.route.isEmpty, rule.redirect != nil, rule.directResponse != nil].filter { $0 }.count
        guard actions == 1 else {
            throw r.error(
                actions == 0 ? "a rule needs route, redirect or directResponse" : "route, redirect and directResponse exclude each other")
        }
        if rule.route.count > 1 && rule.route.allSatisfy({ $0.weight == 0 }) {
            throw try r.required("route").error("weights are required when there is more than one destination")
        }
        return rule
    }

    /// `percentage.value` (a double), or the deprecated integer `percent`; 100 when neither is given.
    private static func percentage(_ node: ManifestNode) throws(ConfigError) -> Double {
        if let p = try node.optional("percentage") { return try p.required("value").number(in: 0...100) }
        if let p = try node.optional("percent") { return Double(try p.int(in: 0...100)) }
        return 100
    }

    private static func destination(_ d: ManifestNode) throws(ConfigError) -> VirtualServiceSpec.Destination {
        let port = try d.optional("port").map { p throws(ConfigError) in try p.required("number").int(in: 1...65535) }
        return .init(host: try d.required("host").string().lowercased(), port: port, subset: try d.optionalString("subset"), weight: 100)
    }

    /// The retry conditions Istio accepts (Envoy's names plus status codes).
    static let retryConditions: Set<String> = [
        "5xx", "gateway-error", "reset", "reset-before-request", "connect-failure", "envoy-ratelimited", "retriable-4xx",
        "refused-stream", "retriable-status-codes", "retriable-headers", "http3-post-connect-failure",
        "cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable",
    ]

    private static func checkRetryOn(_ text: String, _ node: ManifestNode) throws(ConfigError) {
        for item in text.split(separator: ",").map({ String($0).trimmingWhitespace() }) {
            if let code = Int(item), (100...599).contains(code) { continue }
            guard retryConditions.contains(item) else { throw node.error("unknown retry condition \"\(item)\"") }
        }
    }

    private static func match(_ m: ManifestNode) throws(ConfigError) -> VirtualServiceSpec.Match {
        var match = VirtualServiceSpec.Match()
        if let uri = try m.optional("uri") {
            match.uri = try stringMatch(uri)
            if match.uri?.kind == .present { throw uri.error("uri needs exact, prefix or regex") }
        }
        match.ignoreUriCase = try m.optional("ignoreUriCase")?.bool() ?? false
        if let method = try m.optional("method") { match.method = try stringMatch(method) }
        if let authority = try m.optional("authority") { match.authority = try stringMatch(authority) }
        for (name, value) in try m.optional("headers")?.entries() ?? [] {
            match.headers.append((name.lowercased(), try stringMatch(value)))
        }
        for (name, value) in try m.optional("withoutHeaders")?.entries() ?? [] {
            match.withoutHeaders.append((name.lowercased(), try stringMatch(value)))
        }
        for (name, value) in try m.optional("queryParams")?.entries() ?? [] {
            let parsed = try stringMatch(value)
            if parsed.kind == .prefix { throw value.error("query parameters match exact or regex") }
            match.queryParams.append((name, parsed))
        }
        match.port = try m.optional("port")?.int(in: 1...65535)
        for key in ["sourceLabels", "sourceNamespace", "scheme", "statPrefix"] where try m.optional(key) != nil {
            match.unsupported.append(key)
        }
        for g in try m.optionalArray("gateways") where try g.string() != "mesh" { match.unsupported.append("gateways") }
        return match
    }

    private static func stringMatch(_ node: ManifestNode) throws(ConfigError) -> VirtualServiceSpec.StringMatchSpec {
        let entries = try node.entries()
        guard entries.count <= 1 else { throw node.error("a string match has one of exact, prefix or regex") }
        guard let (key, value) = entries.first else { return .init(kind: .present, value: "") }
        guard let kind = VirtualServiceSpec.StringMatchSpec.Kind(rawValue: key), kind != .present else {
            throw value.error("unsupported string match \"\(key)\" (exact, prefix, regex)")
        }
        let text = try value.string()
        guard kind == .regex else { return .init(kind: kind, value: text) }
        do { return .init(kind: kind, value: text, regex: try Regex(text)) } catch { throw value.error(error.description) }
    }

    private static func headerOperations(_ node: ManifestNode?) throws(ConfigError) -> HeaderModifier? {
        guard let node else { return nil }
        func pairs(_ key: String) throws(ConfigError) -> [(String, String)] {
            var result: [(String, String)] = []
            for (name, value) in try node.optional(key)?.entries() ?? [] {
                try RouteParser.checkName(name, value)
                result.append((name, try value.string()))
            }
            return result
        }
        var remove: [String] = []
        for item in try node.optionalArray("remove") {
            let name = try item.string()
            try RouteParser.checkName(name, item)
            remove.append(name)
        }
        return HeaderModifier(set: try pairs("set"), add: try pairs("add"), remove: remove)
    }
}
