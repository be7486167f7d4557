import JSON

/// A kind of object the waypoint reads, and where: one namespace's collection.
public struct WatchedKind: Sendable, Hashable {
    /// API group (`""` for the core group), version, plural resource and kind (`Service`).
    public var group: String
    public var version: String
    public var resource: String
    public var kind: String
    public var namespace: String
    /// A cluster-scoped kind read for one object only (`metadata.name` = `namespace`): the waypoint's Namespace.
    public var clusterScoped = false
    /// A namespaced kind read for one object only (`metadata.name`): the waypoint's own Gateway, a Service in
    /// another namespace that a route sends traffic to.
    public var objectName: String?
    /// A namespaced kind read for the objects with one label only (`key=value`): that Service's EndpointSlices.
    public var labelSelector: String?

    public init(group: String, version: String, resource: String, kind: String, namespace: String, clusterScoped: Bool = false) {
        (self.group, self.version, self.resource, self.kind, self.namespace) = (group, version, resource, kind, namespace)
        self.clusterScoped = clusterScoped
    }

    /// `apiVersion` as objects of this kind carry it.
    public var apiVersion: String { group.isEmpty ? version : "\(group)/\(version)" }

    /// The collection's path (`/api/v1/namespaces/NS/services`; a cluster-scoped kind's with its field selector).
    public var path: String {
        let base = group.isEmpty ? "/api/\(version)" : "/apis/\(group)/\(version)"
        if clusterScoped { return "\(base)/\(resource)?fieldSelector=metadata.name%3D\(namespace)" }
        let collection = "\(base)/namespaces/\(namespace)/\(resource)"
        if let objectName { return "\(collection)?fieldSelector=metadata.name%3D\(objectName)" }
        if let labelSelector { return "\(collection)?labelSelector=\(KindWatcher.escape(labelSelector))" }
        return collection
    }

    /// `kind namespace` (`kind namespace/name` for one object, `kind namespace key=value` for a label's) for logs
    /// and metrics.
    public var label: String {
        "\(kind) \(namespace)\(objectName.map { "/\($0)" } ?? "")\(labelSelector.map { " \($0)" } ?? "")"
    }

    /// The waypoint's own Gateway (its listeners' `allowedRoutes`).
    public static func gateway(named name: String, in namespace: String) -> WatchedKind {
        var kind = WatchedKind(
            group: "gateway.networking.k8s.io", version: "v1", resource: "gateways", kind: "Gateway", namespace: namespace)
        kind.objectName = name
        return kind
    }

    /// One Service of another namespace and its EndpointSlices: the backend of a route here.
    public static func service(named name: String, in namespace: String) -> [WatchedKind] {
        let all = all(in: namespace)
        var service = all.first { $0.kind == "Service" }!
        service.objectName = name
        var slices = all.first { $0.kind == "EndpointSlice" }!
        slices.labelSelector = "kubernetes.io/service-name=\(name)"
        return [service, slices]
    }

    /// The Pods of another namespace that a label selector (`k=v,k2=v2`) selects: a referenced Service's.
    public static func pods(selectedBy selector: String, in namespace: String) -> WatchedKind {
        var pods = all(in: namespace).first { $0.kind == "Pod" }!
        pods.labelSelector = selector
        return pods
    }

    /// Another namespace's DestinationRules: those of a Service there apply to its clients here too.
    public static func destinationRules(in namespace: String) -> WatchedKind { all(in: namespace).first { $0.kind == "DestinationRule" }! }

    /// Another namespace's ReferenceGrants, which say whether a route here may use a Service there.
    public static func referenceGrants(in namespace: String) -> WatchedKind { all(in: namespace).first { $0.kind == "ReferenceGrant" }! }

    /// What the waypoint reads in `namespace`: Services and EndpointSlices, Gateway API routes, Istio's routing,
    /// traffic and security objects.
    public static func all(in namespace: String) -> [WatchedKind] {
        [
            WatchedKind(group: "", version: "v1", resource: "namespaces", kind: "Namespace", namespace: namespace, clusterScoped: true),
            WatchedKind(group: "", version: "v1", resource: "services", kind: "Service", namespace: namespace),
            WatchedKind(group: "discovery.k8s.io", version: "v1", resource: "endpointslices", kind: "EndpointSlice", namespace: namespace),
            WatchedKind(group: "", version: "v1", resource: "pods", kind: "Pod", namespace: namespace),
            WatchedKind(group: "gateway.networking.k8s.io", version: "v1", resource: "httproutes", kind: "HTTPRoute", namespace: namespace),
            WatchedKind(group: "gateway.networking.k8s.io", version: "v1", resource: "grpcroutes", kind: "GRPCRoute", namespace: namespace),
            WatchedKind(
                group: "gateway.networking.k8s.io", version: "v1alpha2", resource: "tcproutes", kind: "TCPRoute", namespace: namespace),
            WatchedKind(
                group: "gateway.networking.k8s.io", version: "v1beta1", resource: "referencegrants", kind: "ReferenceGrant",
                namespace: namespace),
            WatchedKind(
                group: "networking.istio.io", version: "v1", resource: "virtualservices", kind: "VirtualService", namespace: namespace),
            WatchedKind(
                group: "networking.istio.io", version: "v1", resource: "destinationrules", kind: "DestinationRule", namespace: namespace),
            WatchedKind(
                group: "networking.istio.io", version: "v1", resource: "serviceentries", kind: "ServiceEntry", namespace: namespace),
            WatchedKind(
                group: "security.istio.io", version: "v1", resource: "authorizationpolicies", kind: "AuthorizationPolicy",
                namespace: namespace),
            WatchedKind(
                group: "security.istio.io", version: "v1", resource: "peerauthentications", kind: "PeerAuthentication", namespace: namespace
            ),
            WatchedKind(
                group: "security.istio.io", version: "v1", resource: "requestauthentications", kind: "RequestAuthentication",
                namespace: namespace),
        ]
    }

    /// The mesh-wide policies of the root namespace (authorization, peer and request authentication).
    public static func rootPolicies(in namespace: String) -> [WatchedKind] {
        all(in: namespace).filter { $0.group == "security.istio.io" }
    }

    /// One Secret: TLS credentials a DestinationRule names (`credentialName`).
    public static func secret(named name: String, in namespace: String) -> WatchedKind {
        var kind = WatchedKind(group: "", version: "v1", resource: "secrets", kind: "Secret", namespace: namespace)
        kind.objectName = name
        return kind
    }

    /// Istio's mesh config: the root namespace's `istio` ConfigMap (its ext_authz `extensionProviders`).
    public static func meshConfig(in namespace: String) -> WatchedKind {
        var kind = WatchedKind(group: "", version: "v1", resource: "configmaps", kind: "ConfigMap", namespace: namespace)
        kind.objectName = "istio"
        return kind
    }
}

/// The list-then-watch protocol of client-go's reflector for one kind, as a value with no I/O, so every
/// transition is tested: where a watch resumes, and which events change the objects as the waypoint keeps them.
///
/// Of each object it keeps only a digest of it as kept (`stamped`), to tell a real change from one in fields it
/// drops (a status, managedFields); the objects themselves go to the store.
///
/// Thread: its watcher's. Ownership: its `KindWatcher`.
public struct WatchCache: Sendable {
    public let kind: WatchedKind
    /// Each object's fingerprint, by `namespace/name`.
    private var seen: [String: Fingerprint] = [:]
    /// Where a watch resumes; empty until the first complete list.
    public private(set) var resourceVersion = ""
    /// The first complete list arrived.
    public private(set) var synced = false
    /// Objects of a list being read page by page (handed over whole when the last page arrives).
    private var listing: [String: JSONDocument] = [:]
    /// The last complete list, until `takeList`.
    private var listed: [String: JSONDocument]?

    public init(kind: WatchedKind) { self.kind = kind }

    /// How many objects the kind has.
    public var count: Int { seen.count }

    /// The keys (`namespace/name`) of the objects the kind has.
    public var keys: Dictionary<String, Fingerprint>.Keys { seen.keys }

    /// What to do after an input.
    public enum Next: Equatable, Sendable {
        /// Read the next page of the list, with this `continue` token.
        case listPage(String)
        /// Watch from `resourceVersion`.
        case watch
        /// Start the list over (410 Gone: the history is gone).
        case relist
    }

    /// A page of a LIST response (`{metadata: {resourceVersion, continue}, items: [...]}`); `first` when it is
    /// the answer to a list without a `continue` token. After the last page (`.watch`), `takeList` has them all.
    public mutating func receivedPage(_ page: JSONDocument, first: Bool) throws(APIError) -> Next {
        let root = page.root
        let items: [JSONNode]
        switch root["items"] {
        case let list? where list.kind == .array: items = list.elements
        case let list? where list.kind == .null: items = []  // an empty list as Go's encoder may write it
        default: throw APIError("a \(kind.kind) list without items")
        }
        if first { listing = [:] }
        for item in items { if let key = Self.key(item) { listing[key] = stamped(item) } }
        if let token = root["metadata"]?["continue"]?.string, !token.isEmpty { return .listPage(token) }
        seen = listing.mapValues(Self.fingerprint)
        listed = listing
        listing = [:]
        resourceVersion = root["metadata"]?["resourceVersion"]?.string ?? ""
        synced = true
        return .watch
    }

    /// The objects of the last complete list, once (by `namespace/name`, as kept).
    public mutating func takeList() -> [String: JSONDocument] {
        defer { listed = nil }
        return listed ?? [:]
    }

    /// What one event changed: an object as kept now, or nil when it was deleted.
    public struct Change: Sendable, Equatable {
        public let key: String
        public let object: JSONDocument?
    }

    /// One watch event (`{type, object}`): the change it makes, if any.
    public mutating func receivedEvent(_ event: JSONDocument) throws(APIError) -> (change: Change?, next: Next) {
        let root = event.root
        guard let type = root["type"]?.string, let object = root["object"] else { throw APIError("a watch event without type or object") }
        if let version = object["metadata"]?["resourceVersion"]?.string, type != "ERROR" { resourceVersion = version }
        switch type {
        case "ADDED", "MODIFIED":
            guard let key = Self.key(object) else { throw APIError("a \(kind.kind) without metadata.name") }
            let kept = stamped(object)
            let fingerprint = Self.fingerprint(kept)
            guard seen.updateValue(fingerprint, forKey: key) != fingerprint else { return (nil, .watch) }
            return (Change(key: key, object: kept), .watch)
        case "DELETED":
            guard let key = Self.key(object) else { throw APIError("a \(kind.kind) without metadata.name") }
            return (seen.removeValue(forKey: key).map { _ in Change(key: key, object: nil) }, .watch)
        case "BOOKMARK":
            return (nil, .watch)
        case "ERROR":
            // A Status object; 410 Gone: the resourceVersion is too old, list again.
            if object["code"]?.int == 410 { return (nil, .relist) }
            throw APIError("watch error: \(object["message"]?.string ?? "unknown")", status: object["code"]?.int ?? 0)
        default:
            throw APIError("unknown watch event type \(type)")
        }
    }

    /// A 410 Gone answer to a watch or a page: forget the resourceVersion; the objects keep serving until the
    /// new list replaces them.
    public mutating func gone() {
        resourceVersion = ""
        listing = [:]
    }

    /// `namespace/name` of an object.
    static func key(_ object: JSONNode) -> String? {
        guard let name = object["metadata"]?["name"]?.string else { return nil }
        return "\(object["metadata"]?["namespace"]?.string ?? "")/\(name)"
    }

    /// The object as kept, a document of its own: with `apiVersion` and `kind` first (list items leave them out);
    /// without `managedFields`; and of kinds that carry much more than the waypoint reads, only that (a Pod: its
    /// metadata, service account and IPs).
    private func stamped(_ object: JSONNode) -> JSONDocument {
        var writer = JSONWriter()
        guard object.kind == .object else {
            writer.copy(object)
            return writer.finish()
        }
        writer.beginObject()
        writer.key("apiVersion")
        writer.string(kind.apiVersion)
        writer.key("kind")
        writer.string(kind.kind)
        if kind.kind == "Pod" {
            writer.key("metadata")
            if let metadata = object["metadata"] { Self.writeMetadata(metadata, into: &writer) } else { writer.beginObject(); writer.end() }
            if let account = object["spec"]?["serviceAccountName"] {
                writer.key("spec")
                writer.beginObject()
                writer.key("serviceAccountName")
                writer.copy(account)
                writer.end()
            }
            if let status = object["status"] {
                writer.key("status")
                writer.beginObject()
                writer.key("podIP")
                if let ip = status["podIP"] { writer.copy(ip) } else { writer.null() }
                writer.key("podIPs")
                if let ips = status["podIPs"] { writer.copy(ips) } else { writer.beginArray(); writer.end() }
                writer.end()
            }
        } else {
            // Only a Pod's status is read; other kinds' (a route's conditions, written by istiod) is dropped.
            for (key, value) in object.entries where !key.named("kind") && !key.named("apiVersion") && !key.named("status") {
                writer.copy(key)
                if key.named("metadata") { Self.writeMetadata(value, into: &writer) } else { writer.copy(value) }
            }
        }
        writer.end()
        return writer.finish()
    }

    /// The metadata as kept: not `managedFields`, and no annotation `kubectl.kubernetes.io/last-applied-configuration`
    /// (a whole copy of the object as a string, on everything applied with `kubectl apply`).
    private static func writeMetadata(_ metadata: JSONNode, into writer: inout JSONWriter) {
        guard metadata.kind == .object else { return writer.copy(metadata) }
        writer.beginObject()
        for (key, value) in metadata.entries where !key.named("managedFields") {
            writer.copy(key)
            guard key.named("annotations"), value.kind == .object else {
                writer.copy(value)
                continue
            }
            writer.beginObject()
            for (name, annotation) in value.entries where !name.named("kubectl.kubernetes.io/last-applied-configuration") {
                writer.copy(name)
                writer.copy(annotation)
            }
            writer.end()
        }
        writer.end()
    }

    /// A digest of an object as kept, without its resourceVersion: equal for two versions that differ only in
    /// what the waypoint drops (a status update moves the resourceVersion and nothing else it reads).
    public struct Fingerprint: Equatable, Sendable {
        let digest: Int
    }

    /// A SipHash run over the kept document's entries and bytes, under the process's random seed: two versions
    /// of one object collide by chance once in 2^64 comparisons, and a crafted collision would need the seed.
    /// (The object's compact text was kept before: a KiB and more per object, and encoding it 29 % of a
    /// watcher's instructions under churn.)
    static func fingerprint(_ kept: JSONDocument) -> Fingerprint {
        var hasher = Hasher()
        kept.root.hash(into: &hasher, leavingOut: kept.root["metadata"]?.key("resourceVersion"))
        return Fingerprint(digest: hasher.finalize())
    }
}
