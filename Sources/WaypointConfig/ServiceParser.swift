import WaypointCore

/// Reads Service, EndpointSlice and ServiceEntry documents.
enum ServiceParser {
    static func service(_ doc: ManifestNode, namespace: String, name: String, creation: String) throws(ConfigError) -> ServiceSpec {
        let spec = try doc.required("spec")
        var clusterIP = try spec.optionalString("clusterIP")
        if let ip = clusterIP {
            if ip == "None" || ip.isEmpty {
                clusterIP = nil  // headless
            } else if SocketAddress(ip: ip, port: 0) == nil {
                throw try spec.required("clusterIP").error("\"\(ip)\" is not an IP address")
            }
        }
        var ports: [ServicePortSpec] = []
        for node in try spec.optionalArray("ports") {
            let port = try node.required("port").int(in: 1...65535)
            let target: ServicePortSpec.TargetPort
            if let t = try node.optional("targetPort") {
                if let n = try? t.int(in: 1...65535) {
                    target = .number(n)
                } else {
                    let text = try t.string()
                    guard !text.isEmpty, Int(text) == nil else {
                        throw t.error("expected a port number 1...65535 or a port name, got \"\(text)\"")
                    }
                    target = .name(text)
                }
            } else {
                target = .number(port)
            }
            ports.append(
                ServicePortSpec(
                    name: try node.optionalString("name") ?? "", port: port, targetPort: target,
                    appProtocol: try node.optionalString("appProtocol")))
        }
        if ports.count > 1, let unnamed = ports.firstIndex(where: { $0.name.isEmpty }) {
            throw doc.error("a Service with several ports must name each one", field: "spec.ports[\(unnamed)].name")
        }
        return ServiceSpec(
            namespace: namespace, name: name, clusterIP: clusterIP, ports: ports, creationTimestamp: creation,
            labels: try doc.required("metadata").optional("labels")?.stringMap() ?? [:],
            selector: try spec.optional("selector")?.stringMap() ?? [:])
    }

    static func endpointSlice(_ doc: ManifestNode, namespace: String, name: String) throws(ConfigError) -> EndpointSliceSpec {
        let labels = try doc.required("metadata").optional("labels")?.stringMap() ?? [:]
        guard let serviceName = labels["kubernetes.io/service-name"] else {
            throw doc.error("label kubernetes.io/service-name is required", field: "metadata.labels")
        }
        if let type = try doc.optionalString("addressType"), type != "IPv4" && type != "IPv6" {
            throw try doc.required("addressType").error("unsupported address type \"\(type)\" (IPv4 or IPv6)")
        }
        var ports: [(name: String, port: Int)] = []
        for node in try doc.optionalArray("ports") {
            ports.append((try node.optionalString("name") ?? "", try node.required("port").int(in: 1...65535)))
        }
        var endpoints: [(addresses: [String], ready: Bool, pod: String?, zone: String?, node: String?)] = []
        for node in try doc.optionalArray("endpoints") {
            var addresses: [String] = []
            for a in try node.required("addresses").array() {
                let ip = try a.string()
                guard SocketAddress(ip: ip, port: 0) != nil else { throw a.error("\"\(ip)\" is not an IP address") }
                addresses.append(ip)
            }
            // Kubernetes: "nil should be interpreted as true".
            let ready = try node.optional("conditions")?.optional("ready")?.bool() ?? true
            let target = try node.optional("targetRef")
            let pod = try target?.optionalString("kind") == "Pod" ? try target?.optionalString("name") : nil
            endpoints.append((addresses, ready, pod, try node.optionalString("zone"), try node.optionalString("nodeName")))
        }
        let annotations = try doc.required("metadata").optional("annotations")?.stringMap() ?? [:]
        return EndpointSliceSpec(
            namespace: namespace, name: name, serviceName: serviceName, ports: ports, endpoints: endpoints,
            tunnel: annotations[EndpointSliceSpec.tunnelKey] == "http")
    }

    static func serviceEntry(_ doc: ManifestNode, namespace: String, name: String) throws(ConfigError) -> ServiceEntrySpec {
        let spec = try doc.required("spec")
        let hostNodes = try spec.required("hosts").array()
        guard !hostNodes.isEmpty else { throw try spec.required("hosts").error("at least one host is required") }
        var hosts: [String] = []
        for h in hostNodes { hosts.append(try h.string().lowercased()) }
        var addresses: [String] = []
        for a in try spec.optionalArray("addresses") {
            let ip = try a.string()
            guard SocketAddress(ip: ip, port: 0) != nil else {
                throw a.error("\"\(ip)\" is not an IP address (CIDR ranges are not supported)")
            }
            addresses.append(ip)
        }
        var ports: [ServiceEntrySpec.Port] = []
        for p in try spec.optionalArray("ports") {
            ports.append(
                .init(
                    name: try p.optionalString("name") ?? "", number: try p.required("number").int(in: 1...65535),
                    targetPort: try p.optional("targetPort")?.int(in: 1...65535), proto: try p.optionalString("protocol")))
        }
        let resolutionNode = try spec.optional("resolution")
        let resolutionText = try resolutionNode?.string() ?? "NONE"
        guard let resolution = ServiceEntrySpec.Resolution(rawValue: resolutionText) else {
            throw (resolutionNode ?? spec).error("unknown resolution \"\(resolutionText)\" (NONE, STATIC, DNS or DNS_ROUND_ROBIN)")
        }
        var endpoints: [ServiceEntrySpec.Endpoint] = []
        if resolution == .none, let first = try spec.optionalArray("endpoints").first {
            throw first.error("endpoints need resolution STATIC, DNS or DNS_ROUND_ROBIN (with NONE, the default, Istio rejects them)")
        }
        for e in try spec.optionalArray("endpoints") {
            let address = try e.required("address").string()
            guard SocketAddress(ip: address, port: 0) != nil || resolution.resolvesNames else {
                throw try e.required("address").error(
                    "\"\(address)\" is not an IP address (a host name needs resolution: DNS or DNS_ROUND_ROBIN)")
            }
            var endpointPorts: [String: Int] = [:]
            if let portsNode = try e.optional("ports") {
                for (key, _) in try portsNode.stringMap() {
                    endpointPorts[key] = try portsNode.required(key).int(in: 1...65535)
                }
            }
            var locality: Locality? = nil
            if let text = try e.optionalString("locality") {
                guard let parsed = Locality(text) else { throw try e.required("locality").error("a locality is region/zone/subzone") }
                locality = parsed
            }
            endpoints.append(
                .init(
                    address: address, ports: endpointPorts, labels: try e.optional("labels")?.stringMap() ?? [:],
                    locality: locality))
        }
        return ServiceEntrySpec(
            namespace: namespace, name: name, hosts: hosts, addresses: addresses, ports: ports, endpoints: endpoints, resolution: resolution
        )
    }

    /// A Secret's `data` (base64) and `stringData` (which wins, as the API server merges it).
    static func secret(_ doc: ManifestNode, namespace: String, name: String) throws(ConfigError) -> SecretSpec {
        var data: [String: [UInt8]] = [:]
        if let node = try doc.optional("data") {
            for (key, text) in try node.stringMap() {
                guard let bytes = base64Decoded(text) else { throw try node.required(key).error("is not base64") }
                data[key] = bytes
            }
        }
        for (key, text) in try doc.optional("stringData")?.stringMap() ?? [:] { data[key] = Array(text.utf8) }
        return SecretSpec(namespace: namespace, name: name, data: data)
    }

    static func namespace(_ doc: ManifestNode, name: String) throws(ConfigError) -> NamespaceSpec {
        NamespaceSpec(name: name, labels: try doc.required("metadata").optional("labels")?.stringMap() ?? [:])
    }

    static func node(_ doc: ManifestNode, name: String) throws(ConfigError) -> NodeSpec {
        NodeSpec(name: name, labels: try doc.required("metadata").optional("labels")?.stringMap() ?? [:])
    }

    static func pod(_ doc: ManifestNode, namespace: String, name: String) throws(ConfigError) -> PodSpec {
        let labels = try doc.required("metadata").optional("labels")?.stringMap() ?? [:]
        var ips: [String] = []
        if let status = try doc.optional("status") {
            for node in try status.optionalArray("podIPs") { ips.append(try node.required("ip").string()) }
            if let ip = try status.optionalString("podIP"), !ips.contains(ip) { ips.append(ip) }
        }
        for (i, ip) in ips.enumerated() where SocketAddress(ip: ip, port: 0) == nil {
            throw doc.error("\"\(ip)\" is not an IP address", field: "status.podIPs[\(i)]")
        }
        let account = try doc.optional("spec")?.optionalString("serviceAccountName") ?? ""
        // The controller among the owners (a ReplicaSet's Deployment is found by its name, as Istio does).
        var owner: (kind: String, name: String)? = nil
        for reference in try doc.required("metadata").optionalArray("ownerReferences") {
            guard let kind = try reference.optionalString("kind"), let ownerName = try reference.optionalString("name") else { continue }
            let controller = try reference.optional("controller")?.bool() ?? false
            if owner == nil || controller { owner = (kind, ownerName) }
        }
        return PodSpec(
            namespace: namespace, name: name, labels: labels, ips: ips, serviceAccount: account.isEmpty ? "default" : account,
            workload: WorkloadLabels(pod: name, namespace: namespace, labels: labels, owner: owner))
    }
}
