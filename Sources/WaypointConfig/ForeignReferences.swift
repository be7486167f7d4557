/// The Services that routes send traffic to in namespaces other than their own: what a Kubernetes source must
/// read beyond the namespaces it watches whole (one Service and its EndpointSlices each, by name; once the Service
/// is read, the Pods its selector selects, for subsets and workload identities), the DestinationRules of those
/// namespaces (Istio applies a Service's own namespace's rules to every client), where a Gateway API route's
/// reference needs a ReferenceGrant read, and the Secrets DestinationRules take TLS credentials from.
public struct ForeignReferences: Equatable, Sendable {
    public struct Service: Hashable, Sendable, Comparable {
        public var namespace: String
        public var name: String

        public init(namespace: String, name: String) { (self.namespace, self.name) = (namespace, name) }

        public static func < (a: Service, b: Service) -> Bool { (a.namespace, a.name) < (b.namespace, b.name) }
    }

    /// The Pods behind a Service: its namespace and its selector as a label selector (`k=v,k2=v2`, keys in order).
    public struct Pods: Hashable, Sendable, Comparable {
        public var namespace: String
        public var selector: String

        public static func < (a: Pods, b: Pods) -> Bool { (a.namespace, a.selector) < (b.namespace, b.selector) }
    }

    public var services: Set<Service> = []
    /// Namespaces whose ReferenceGrants decide whether a Gateway API route may use a Service there.
    public var grantNamespaces: Set<String> = []
    /// The Pods of the referenced Services read so far.
    public var pods: Set<Pods> = []
    /// Secrets of the waypoint's own namespace that DestinationRules name (`credentialName`, and its `-cacert`).
    public var secrets: Set<String> = []

    /// Namespaces with a referenced Service: their DestinationRules apply to it.
    public var namespaces: Set<String> { Set(services.map(\.namespace)) }

    public init() {}
}

extension ConfigSpec {
    /// The Services named in another namespace by HTTPRoute, GRPCRoute and TCPRoute backendRefs and mirrors (also
    /// those no ReferenceGrant allows yet: the grant may come), and by VirtualService destinations and mirrors
    /// (`name.namespace`, `name.namespace.svc` or `name.namespace.svc.DOMAIN`; Istio needs no grant), and by the
    /// mesh config's external authorizers; and the Secrets of DestinationRules' `credentialName`s.
    public func foreignReferences(clusterDomain: String) -> ForeignReferences {
        var found = ForeignReferences()
        for route in httpRoutes + tcpRoutes {
            for rule in route.rules {
                for ref in rule.backendRefs + rule.mirrors.map(\.backend)
                where ref.kind == "Service" && (ref.group == "" || ref.group == "core") && ref.namespace != route.namespace {
                    found.services.insert(.init(namespace: ref.namespace, name: ref.name))
                    found.grantNamespaces.insert(ref.namespace)
                }
            }
        }
        for service in virtualServices {
            for rule in service.http {
                for destination in rule.route + rule.mirrors.map(\.destination) {
                    guard let target = Self.service(host: destination.host, clusterDomain: clusterDomain),
                        target.namespace != service.namespace
                    else { continue }
                    found.services.insert(target)
                }
            }
        }
        for mesh in meshConfigs {
            for authorizer in mesh.authorizers {
                let host = authorizer.service.split(separator: "/", maxSplits: 1).last.map(String.init) ?? authorizer.service
                if let target = Self.service(host: host, clusterDomain: clusterDomain) { found.services.insert(target) }
            }
        }
        for rule in destinationRules {
            let policies = [rule.policy(port: nil)] + rule.portLevel.values + rule.subsets.flatMap { [$0.policy] + $0.portLevel.values }
            for case let name? in policies.map({ $0.tls?.credentialName }) {
                found.secrets.formUnion([name, "\(name)-cacert"])
            }
        }
        for service in services where found.services.contains(.init(namespace: service.namespace, name: service.name)) {
            guard !service.selector.isEmpty else { continue }  // no selector: its endpoints are managed by hand
            let selector = service.selector.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ",")
            found.pods.insert(.init(namespace: service.namespace, selector: selector))
        }
        return found
    }

    /// The Service a qualified host names (`name.namespace[.svc[.DOMAIN]]`); nil for a short name (the referrer's
    /// namespace) or any other host (a ServiceEntry's, say).
    static func service(host: String, clusterDomain: String) -> ForeignReferences.Service? {
        let labels = host.lowercased().split(separator: ".", omittingEmptySubsequences: false).map(String.init)
        guard labels.count >= 2, labels.allSatisfy({ !$0.isEmpty }) else { return nil }
        let rest = labels.dropFirst(2).joined(separator: ".")
        guard rest.isEmpty || rest == "svc" || rest == "svc.\(clusterDomain)" else { return nil }
        return .init(namespace: labels[1], name: labels[0])
    }
}
