import WaypointCore
import YAML

/// What a kubeconfig says about reaching the API server, for its current context: the server, the CA and the
/// user's credential. Anything it cannot use is an error naming the field.
public struct Kubeconfig: Sendable {
    public var host: String
    public var port: UInt16
    /// PEM text of the CA (from `certificate-authority-data`, or the file `certificate-authority` names).
    public var trustBundle: String
    public var token: String?
    public var tokenFile: String?
    public var clientCertificate: String?
    public var clientKey: String?

    public static func load(path: String) throws(ConfigError) -> Kubeconfig {
        guard let text = readTextFile(path) else { throw ConfigError(file: path, message: "cannot read file") }
        let parsed: YAMLNode?
        do throws(YAMLError) {
            parsed = try YAMLDocuments(text).next()
        } catch {
            throw ConfigError(file: path, message: "invalid YAML: \(error)")
        }
        guard let root = parsed else { throw ConfigError(file: path, message: "empty kubeconfig") }
        let doc = ManifestNode(node: root, path: .root, location: .init(file: path, document: 0, object: nil))
        let contextName = try doc.required("current-context").string()
        func named(_ list: String, _ name: String) throws(ConfigError) -> ManifestNode {
            for entry in try doc.optionalArray(list) where try entry.required("name").string() == name {
                return try entry.required(String(list.dropLast()))
            }
            throw try doc.required(list).error("no entry named \"\(name)\"")
        }
        let context = try named("contexts", contextName)
        let cluster = try named("clusters", try context.required("cluster").string())
        let user = try named("users", try context.required("user").string())

        let serverNode = try cluster.required("server")
        let server = try serverNode.string()
        guard server.hasPrefix("https://") else { throw serverNode.error("only https:// API servers are supported") }
        var hostPort = String(server.dropFirst(8).prefix { $0 != "/" })
        var port: UInt16 = 443
        if let colon = hostPort.lastIndex(of: ":"), !hostPort.hasSuffix("]") {
            guard let parsed = UInt16(hostPort[hostPort.index(after: colon)...]) else {
                throw serverNode.error("invalid port in \(server)")
            }
            port = parsed
            hostPort = String(hostPort[..<colon])
        }
        let host = hostPort.hasPrefix("[") ? String(hostPort.dropFirst().dropLast()) : hostPort

        let trustBundle: String
        if let data = try cluster.optional("certificate-authority-data") {
            trustBundle = try Self.decoded(data)
        } else if let file = try cluster.optional("certificate-authority") {
            guard let pem = readTextFile(try file.string()) else { throw file.error("cannot read \(try file.string())") }
            trustBundle = pem
        } else {
            throw cluster.error(
                "certificate-authority-data or certificate-authority is required (the API server's certificate is always verified)")
        }

        var config = Kubeconfig(host: host, port: port, trustBundle: trustBundle)
        config.token = try user.optionalString("token")
        config.tokenFile = try user.optionalString("tokenFile")
        if let cert = try user.optional("client-certificate-data"), let key = try user.optional("client-key-data") {
            (config.clientCertificate, config.clientKey) = (try Self.decoded(cert), try Self.decoded(key))
        }
        for unsupported in ["exec", "auth-provider", "client-certificate", "client-key", "username"]
        where try user.optional(unsupported) != nil {
            throw try user.required(unsupported).error("not supported: use token, tokenFile or client-certificate-data/client-key-data")
        }
        guard config.token != nil || config.tokenFile != nil || config.clientCertificate != nil else {
            throw user.error("no credential: token, tokenFile or client-certificate-data/client-key-data is required")
        }
        return config
    }

    /// A `…-data` field: base64 of PEM text.
    private static func decoded(_ node: ManifestNode) throws(ConfigError) -> String {
        guard let bytes = base64Decoded(try node.string()) else { throw node.error("not valid base64") }
        return String(decoding: bytes, as: UTF8.self)
    }

    init(host: String, port: UInt16, trustBundle: String) { (self.host, self.port, self.trustBundle) = (host, port, trustBundle) }
}
