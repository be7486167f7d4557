import JSON
import WaypointCore
import YAML

/// Reads Kubernetes manifests (files or directories of `.yaml`/`.yml`/`.json`, multi-document) into a
/// `ConfigSpec`, collecting every error with its file, document and field.
///
/// Directories are read in name order; entries starting with `.` are skipped, which also skips the
/// `..data`/`..2024_…` folders of a mounted ConfigMap while following its top-level symlinks.
public enum ManifestLoader {
    public static func load(paths: [String], defaultNamespace: String) throws(ConfigErrors) -> ConfigSpec {
        var spec = ConfigSpec()
        var errors: [ConfigError] = []
        for path in paths {
            for file in files(at: path, errors: &errors) {
                guard let text = readTextFile(file) else {
                    errors.append(ConfigError(file: file, message: "cannot read file"))
                    continue
                }
                load(text: text, file: file, defaultNamespace: defaultNamespace, into: &spec, errors: &errors)
            }
        }
        if !errors.isEmpty { throw ConfigErrors(errors: errors) }
        return spec
    }

    /// Parses manifests from text; `file` names them in errors.
    public static func load(text: String, file: String, defaultNamespace: String) throws(ConfigErrors) -> ConfigSpec {
        var spec = ConfigSpec()
        var errors: [ConfigError] = []
        load(text: text, file: file, defaultNamespace: defaultNamespace, into: &spec, errors: &errors)
        if !errors.isEmpty { throw ConfigErrors(errors: errors) }
        return spec
    }

    /// Parses manifests from files (as `load(paths:)`) and objects from the Kubernetes API (`source` names them in
    /// errors, with the object's kind, namespace and name); every error of both is thrown together.
    public static func load(paths: [String], objects: [JSONDocument], source: String, defaultNamespace: String) throws(ConfigErrors)
        -> ConfigSpec
    {
        var spec = ConfigSpec()
        var errors: [ConfigError] = []
        do { spec = try load(paths: paths, defaultNamespace: defaultNamespace) } catch { errors = error.errors }
        for object in objects {
            switch load(object: object, source: source, defaultNamespace: defaultNamespace) {
            case .success(let fragment): spec.append(fragment)
            case .failure(let error): errors.append(error)
            }
        }
        if !errors.isEmpty { throw ConfigErrors(errors: errors) }
        return spec
    }

    /// One API object as a spec of its own.
    static func load(object: JSONDocument, source: String, defaultNamespace: String) -> Result<ConfigSpec, ConfigError> {
        var spec = ConfigSpec()
        let location = ManifestNode.Location(file: source, document: 0, object: nil)
        do throws(ConfigError) {
            try loadDocument(
                ManifestNode(json: object.root, path: .root, location: location), defaultNamespace: defaultNamespace, into: &spec)
        } catch {
            return .failure(error)
        }
        return .success(spec)
    }

    static func files(at path: String, errors: inout [ConfigError]) -> [String] {
        guard let directory = isDirectory(path) else {
            errors.append(ConfigError(file: path, message: "no such file or directory"))
            return []
        }
        guard directory else { return [path] }
        guard let names = directoryEntries(path) else {
            errors.append(ConfigError(file: path, message: "cannot list directory"))
            return []
        }
        return names.filter { !$0.hasPrefix(".") && ($0.hasSuffix(".yaml") || $0.hasSuffix(".yml") || $0.hasSuffix(".json")) }
            .sorted().map { "\(path)/\($0)" }
    }

    static func load(text: String, file: String, defaultNamespace: String, into spec: inout ConfigSpec, errors: inout [ConfigError]) {
        let documents = YAMLDocuments(text)
        var index = 0
        while true {
            let root: YAMLNode?
            do {
                root = try documents.next()
            } catch {
                errors.append(ConfigError(file: file, document: index, message: "invalid YAML: \(error)"))
                return
            }
            guard let root else { return }
            defer { index += 1 }
            if case .scalar(let s) = root, s.isNull { continue }  // empty document
            let location = ManifestNode.Location(file: file, document: index, object: nil)
            do throws(ConfigError) {
                try loadDocument(ManifestNode(node: root, path: .root, location: location), defaultNamespace: defaultNamespace, into: &spec)
            } catch {
                errors.append(error)
            }
        }
    }

    /// A Kubernetes object name (RFC 1123 subdomain, `dots`) or namespace (RFC 1123 label): lower-case letters,
    /// digits and `-` (and `.`), starting and ending with a letter or digit.
    static func isName(_ text: String, maxLength: Int, dots: Bool) -> Bool {
        let bytes = Array(text.utf8)
        func alphanumeric(_ b: UInt8) -> Bool { (b >= 0x61 && b <= 0x7A) || (b >= 0x30 && b <= 0x39) }
        guard let first = bytes.first, let last = bytes.last, bytes.count <= maxLength, alphanumeric(first), alphanumeric(last) else {
            return false
        }
        return bytes.allSatisfy { alphanumeric($0) || $0 == 0x2D || (dots && $0 == 0x2E) }
    }

    static func loadDocument(_ root: ManifestNode, defaultNamespace: String, into spec: inout ConfigSpec) throws(ConfigError) {
        guard root.isMapping else { throw root.error("a manifest must be a mapping") }
        let apiVersion = try root.required("apiVersion").string()
        let kind = try root.required("kind").string()
        if kind == "List", apiVersion == "v1" {  // `kubectl get -o yaml` output
            for item in try root.optionalArray("items") { try loadDocument(item, defaultNamespace: defaultNamespace, into: &spec) }
            return
        }
        let metadata = try root.required("metadata")
        let nameNode = try metadata.required("name")
        let name = try nameNode.string()
        // Kubernetes' own rules: names key the compiled tables (`namespace/name`), so an empty one or a `/` in
        // either would make two objects one, or break the key.
        guard isName(name, maxLength: 253, dots: true) else {
            throw nameNode.error("must be a lowercase RFC 1123 name (a-z, 0-9, '-', '.'; at most 253)")
        }
        var namespace = defaultNamespace
        if let node = try metadata.optional("namespace") {
            namespace = try node.string()
            guard isName(namespace, maxLength: 63, dots: false) else {
                throw node.error("must be a lowercase RFC 1123 label (a-z, 0-9, '-'; at most 63)")
            }
        }
        let creation = try metadata.optionalString("creationTimestamp") ?? ""
        let doc = root.describing("\(kind) \(namespace)/\(name)")
        // The group decides the kind; any served version of it reads the same (v1, v1beta1, v1alpha3, ...).
        let parts = apiVersion.split(separator: "/")
        let group = parts.count == 2 ? String(parts[0]) : ""
        switch (group, kind) {
        case ("", "Service"):
            spec.services.append(try ServiceParser.service(doc, namespace: namespace, name: name, creation: creation))
        case ("", "Pod"):
            spec.pods.append(try ServiceParser.pod(doc, namespace: namespace, name: name))
        case ("", "Node"):
            spec.nodes.append(try ServiceParser.node(doc, name: name))
        case ("", "Secret"):
            spec.secrets.append(try ServiceParser.secret(doc, namespace: namespace, name: name))
        case ("", "Namespace"):
            spec.namespaces.append(try ServiceParser.namespace(doc, name: name))
        case ("", "ConfigMap") where name == MeshConfigParser.configMapName:
            let mesh = try MeshConfigParser.meshConfig(doc, namespace: namespace, name: name)
            spec.meshConfigs.append(mesh)
            spec.warnings += mesh.warnings
        case ("discovery.k8s.io", "EndpointSlice"):
            spec.endpointSlices.append(try ServiceParser.endpointSlice(doc, namespace: namespace, name: name))
        case ("networking.istio.io", "ServiceEntry"):
            spec.serviceEntries.append(try ServiceParser.serviceEntry(doc, namespace: namespace, name: name))
        case ("gateway.networking.k8s.io", "Gateway"):
            spec.gateways.append(try RouteParser.gateway(doc, namespace: namespace, name: name))
        case ("networking.istio.io", "DestinationRule"):
            spec.destinationRules.append(try TrafficPolicyParser.destinationRule(doc, namespace: namespace, name: name))
        case ("security.istio.io", "AuthorizationPolicy"):
            spec.authorizationPolicies.append(try SecurityParser.authorizationPolicy(doc, namespace: namespace, name: name))
        case ("security.istio.io", "RequestAuthentication"):
            spec.requestAuthentications.append(try SecurityParser.requestAuthentication(doc, namespace: namespace, name: name))
        case ("security.istio.io", "PeerAuthentication"):
            spec.peerAuthentications.append(try SecurityParser.peerAuthentication(doc, namespace: namespace, name: name))
        case ("gateway.networking.k8s.io", "HTTPRoute"):
            spec.httpRoutes.append(try RouteParser.httpRoute(doc, namespace: namespace, name: name, creation: creation))
        case ("gateway.networking.k8s.io", "TCPRoute"):
            spec.tcpRoutes.append(try RouteParser.tcpRoute(doc, namespace: namespace, name: name, creation: creation))
        case ("gateway.networking.k8s.io", "ReferenceGrant"):
            spec.referenceGrants.append(try RouteParser.referenceGrant(doc, namespace: namespace, name: name))
        case ("gateway.networking.k8s.io", "GRPCRoute"):
            spec.httpRoutes.append(try RouteParser.grpcRoute(doc, namespace: namespace, name: name, creation: creation))
        case ("networking.istio.io", "VirtualService"):
            spec.virtualServices.append(try VirtualServiceParser.virtualService(doc, namespace: namespace, name: name, creation: creation))
        default:
            spec.warnings.append(
                "\(doc.location.file): document \(doc.location.document): skipping unsupported kind \(apiVersion) \(kind) \(namespace)/\(name)"
            )
        }
    }
}
