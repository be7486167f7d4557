import Filters
import YAML

/// Istio's mesh config as the `istio` ConfigMap carries it (`data.mesh`, a YAML document in a string): the
/// waypoint reads its `extensionProviders` of the ext_authz kinds, which CUSTOM AuthorizationPolicies name.
public struct MeshConfigSpec: Sendable {
    public var namespace: String
    public var name: String
    public var authorizers: [ExternalAuthorizer]
    /// Fields read but not applied.
    public var warnings: [String] = []
}

/// Reads the `istio` ConfigMap's mesh config; every error names the field inside `data.mesh`.
enum MeshConfigParser {
    /// The ConfigMap that holds the mesh config (in Istio's root namespace).
    static let configMapName = "istio"

    static func meshConfig(_ doc: ManifestNode, namespace: String, name: String) throws(ConfigError) -> MeshConfigSpec {
        var spec = MeshConfigSpec(namespace: namespace, name: name, authorizers: [])
        guard let meshNode = try doc.optional("data")?.optional("mesh") else { return spec }
        let text = try meshNode.string()
        let root: YAMLNode?
        do {
            root = try YAMLDocuments(text).next()
        } catch {
            throw meshNode.error("invalid YAML: \(error)")
        }
        guard let root else { return spec }
        if case .scalar(let s) = root, s.isNull { return spec }
        let mesh = ManifestNode(node: root, path: meshNode.path, location: meshNode.location)
        var names: Set<String> = []
        for provider in try mesh.optionalArray("extensionProviders") {
            let nameNode = try provider.required("name")
            let name = try nameNode.string()
            guard names.insert(name).inserted else { throw nameNode.error("another extension provider has the name \"\(name)\"") }
            if let http = try provider.optional("envoyExtAuthzHttp") {
                spec.authorizers.append(try authorizer(http, name: name, api: .http(try httpSettings(http))))
            } else if let grpc = try provider.optional("envoyExtAuthzGrpc") {
                spec.authorizers.append(try authorizer(grpc, name: name, api: .grpc))
            }  // else tracing, logging and metrics providers: not the waypoint's business here
        }
        return spec
    }

    private static func authorizer(_ node: ManifestNode, name: String, api: ExternalAuthorizer.API) throws(ConfigError)
        -> ExternalAuthorizer
    {
        let service = try node.required("service").string()
        guard !service.isEmpty else { throw node.error("must name a Service host", at: "service") }
        let port = try node.required("port").int(in: 1...65535)
        var statusOnError: Int? = nil
        if let statusNode = try node.optional("statusOnError") {
            guard let status = Int(try statusNode.string()), (100...599).contains(status) else {
                throw statusNode.error("expected an HTTP status (100-599)")
            }
            statusOnError = status
        }
        return ExternalAuthorizer(
            name: name, api: api, service: service, port: port, timeout: try node.optionalDuration("timeout"),
            failOpen: try node.optional("failOpen")?.bool() ?? false, statusOnError: statusOnError,
            bodyInCheck: try bodyInCheck(node))
    }

    /// `includeRequestBodyInCheck`; `maxRequestBytes` must be positive (Envoy refuses 0).
    private static func bodyInCheck(_ node: ManifestNode) throws(ConfigError) -> ExternalAuthorizer.BodyInCheck? {
        guard let body = try node.optional("includeRequestBodyInCheck") else { return nil }
        guard let maxNode = try body.optional("maxRequestBytes") else {
            throw body.error("maxRequestBytes is required (Envoy buffers at most that much)", at: "maxRequestBytes")
        }
        return ExternalAuthorizer.BodyInCheck(
            maxBytes: try maxNode.int(in: 1...Int(UInt32.max)),
            allowPartial: try body.optional("allowPartialMessage")?.bool() ?? false,
            packAsBytes: try body.optional("packAsBytes")?.bool() ?? false)
    }

    private static func httpSettings(_ node: ManifestNode) throws(ConfigError) -> ExternalAuthorizer.HTTPSettings {
        func patterns(_ key: String) throws(ConfigError) -> [HeaderNamePattern]? {
            guard let list = try node.optional(key) else { return nil }
            var result: [HeaderNamePattern] = []
            for item in try list.array() { result.append(HeaderNamePattern(try item.string())) }
            return result
        }
        var settings = ExternalAuthorizer.HTTPSettings()
        if let prefixNode = try node.optional("pathPrefix") {
            let prefix = try prefixNode.string()
            guard prefix.hasPrefix("/") else { throw prefixNode.error("must start with /") }
            settings.pathPrefix = Array(prefix.utf8)
        }
        // `includeHeadersInCheck` is the deprecated name of `includeRequestHeadersInCheck`.
        if let included = try patterns("includeRequestHeadersInCheck") {
            settings.includeRequestHeaders = included
        } else {
            settings.includeRequestHeaders = try patterns("includeHeadersInCheck") ?? []
        }
        if let additional = try node.optional("includeAdditionalHeadersInCheck") {
            settings.additionalHeaders = try additional.stringMap().sorted { $0.key < $1.key }.map {
                (Array($0.key.lowercased().utf8), Array($0.value.utf8))
            }
        }
        settings.headersToUpstreamOnAllow = try patterns("headersToUpstreamOnAllow") ?? []
        settings.headersToDownstreamOnAllow = try patterns("headersToDownstreamOnAllow") ?? []
        settings.headersToDownstreamOnDeny = try patterns("headersToDownstreamOnDeny")
        return settings
    }
}
