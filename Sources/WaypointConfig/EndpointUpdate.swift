import Filters
import HTTPRouter
import JWT
import WaypointCore

/// A compilation kept for the next one: when only EndpointSlices and Pods changed (a rollout, an autoscaler),
/// `SnapshotCompiler.update` resolves the Services they touch again instead of compiling everything.
public struct CompiledConfig {
    var state: CompileState
    public let snapshot: Snapshot

    /// Drops the spec this was compiled from, which an update does not read (it is given the next one): the
    /// parsed objects this shared with the config source can then change in place instead of being copied.
    public mutating func releaseSpec() { state.spec = ConfigSpec() }
}

/// What resolving a Service's endpoints looks up: Pods by name and IP, Node localities and the slices of each
/// service.
struct EndpointLookups {
    var podsByName: [ObjectKey: PodSpec] = [:]
    var podsByIP: [String: PodSpec] = [:]
    var nodeLocality: [String: Locality] = [:]
    /// By Service (grouped once: filtering every slice per service was quadratic).
    var slicesByService: [ObjectKey: [EndpointSliceSpec]] = [:]

    /// `services`: only their slices (an update); nil: all.
    init(_ spec: ConfigSpec, services: ObjectKeys? = nil) {
        for pod in spec.pods {
            podsByName[ObjectKey(pod.namespace, pod.name)] = pod
            for ip in pod.ips { podsByIP[ip] = pod }
        }
        for node in spec.nodes { nodeLocality[node.name] = Locality(nodeLabels: node.labels) }
        let slices = spec.endpointSlices
        guard let services else {
            for slice in slices { slicesByService[slice.service, default: []].append(slice) }
            return
        }
        // By index: a slice is copied (its strings and arrays retained) only when its Service is asked for.
        for i in slices.indices where services.contains(slices[i].service) {
            slicesByService[slices[i].service, default: []].append(slices[i])
        }
    }
}

/// The few objects an update touches, asked about once per object of a kind (with the key the object holds,
/// hashed when it was parsed): a handful are compared in a list, their hashes first, more looked up in a set.
struct ObjectKeys {
    private let set: Set<ObjectKey>
    private let few: [ObjectKey]?

    init(_ set: Set<ObjectKey>) {
        self.set = set
        few = set.count <= 16 ? Array(set) : nil
    }

    func contains(_ key: ObjectKey) -> Bool {
        guard let few else { return set.contains(key) }
        return few.contains(key)
    }
}

extension ConfigSpec {
    /// Whether this holds EndpointSlices and Pods only (what an endpoint update can apply).
    var onlyEndpoints: Bool {
        services.isEmpty && serviceEntries.isEmpty && gateways.isEmpty && httpRoutes.isEmpty && virtualServices.isEmpty
            && tcpRoutes.isEmpty && authorizationPolicies.isEmpty && peerAuthentications.isEmpty && destinationRules.isEmpty
            && requestAuthentications.isEmpty
            && nodes.isEmpty && namespaces.isEmpty && referenceGrants.isEmpty && meshConfigs.isEmpty && secrets.isEmpty
            && warnings.isEmpty
    }
}

extension SnapshotCompiler {
    /// A snapshot of `spec`, and what the next `update` needs.
    public func compileKeepingState(_ spec: ConfigSpec, generation: UInt64, previous: Snapshot? = nil) -> CompiledConfig {
        var state = CompileState(spec: spec, compiler: self)
        state.build()
        state.lineage = generation
        state.assignLimits(keeping: previous)
        let snapshot = state.snapshot(
            generation: generation, routes: RouteTable(virtualHosts: state.virtualHosts, names: state.names), revised: [])
        return CompiledConfig(state: state, snapshot: snapshot)
    }

    /// `compiled` with `spec`, which differs from the spec it was compiled from only in the EndpointSlices and
    /// Pods of `changes` (their old and new versions): the Services they touch get their endpoints resolved
    /// again, everything else is kept. The snapshot stays in `compiled`'s lineage. nil: compile everything.
    /// `compiled` is consumed: the tables only it holds are then updated in place, not copied.
    public func update(_ compiled: consuming CompiledConfig, spec: ConfigSpec, changes: ConfigSpec, generation: UInt64)
        -> CompiledConfig?
    {
        let serving = compiled.snapshot
        var state = (consume compiled).state
        guard let touched = state.updateEndpoints(spec, touching: ObjectKeys(Self.services(touchedBy: changes, in: spec))) else {
            return nil
        }
        let snapshot = state.snapshot(
            generation: generation, routes: serving.routes, revised: state.revised(among: touched, since: serving))
        return CompiledConfig(state: state, snapshot: snapshot)
    }

    /// `namespace/name` of the Services whose endpoints `changes` may change: those of a changed slice, and
    /// those with an endpoint a changed Pod backs (by the slice's targetRef or by IP).
    static func services(touchedBy changes: ConfigSpec, in spec: ConfigSpec) -> Set<ObjectKey> {
        var touched = Set(changes.endpointSlices.map(\.service))
        guard !changes.pods.isEmpty else { return touched }
        let names = Set(changes.pods.map { ObjectKey($0.namespace, $0.name) })
        let ips = Set(changes.pods.flatMap(\.ips))
        for slice in spec.endpointSlices {
            let backed = slice.endpoints.contains { endpoint in
                endpoint.pod.map { names.contains(ObjectKey(slice.namespace, $0)) } == true
                    || endpoint.addresses.contains(where: ips.contains)
            }
            if backed { touched.insert(slice.service) }
        }
        return touched
    }
}

extension CompileState {
    /// Resolves the endpoints of `services` again from `spec` (their clusters, subsets, rings and locality
    /// tiers). Endpoint indices keep their address while listed; one no cluster lists any more is dead: its
    /// workload address is refused, and its index goes to a new address of a later update. Returns the indices
    /// this may have changed (the clusters' old and new members); nil: a full compile is due (a subset's own TLS,
    /// or many more free indices than new addresses take).
    mutating func updateEndpoints(_ spec: ConfigSpec, touching services: ObjectKeys) -> [Int32]? {
        self.spec = spec
        guard endpointVariants.isEmpty else { return nil }  // a subset's own TLS: resolved by a full compile
        let lookups = EndpointLookups(spec, services: services)
        var dropped: [Int32] = []
        var touched: [Int32] = []
        for s in spec.services.indices where services.contains(spec.services[s].key) {
            let service = spec.services[s]  // copied only when touched
            for port in service.ports {
                guard let cluster = clusterIndex["\(service.namespace)/\(service.name):\(port.port)"] else { return nil }
                let members = members(of: service, port: port, lookups)
                let i = Int(cluster)
                for endpoint in clusters[i].endpoints { endpointRefs[Int(endpoint)] -= 1 }
                for endpoint in members { endpointRefs[Int(endpoint)] += 1 }
                dropped += clusters[i].endpoints
                touched += members
                clusters[i].endpoints = members
                refresh(cluster: i)
                for subset in subsets[cluster] ?? [] {
                    let s = Int(subset.cluster)
                    clusters[s].endpoints = self.members(members, selectedBy: subset.labels)
                    refresh(cluster: s)
                }
            }
        }
        for endpoint in dropped where endpointRefs[Int(endpoint)] == 0 { retire(endpoint) }
        // Free indices beyond a quarter of the rest (and 1,024): the endpoints shrank for good; compile afresh.
        guard freeEndpoints.count <= max(1024, (endpoints.count - freeEndpoints.count) / 4) else { return nil }
        return touched + dropped
    }

    /// A cluster's ring and locality tiers after its members changed.
    private mutating func refresh(cluster i: Int) {
        setLoadBalancer(clusters[i].loadBalancer, of: i)
        groupByLocality(i)
    }

    /// An endpoint no cluster lists: tunnels to its address are refused, what its Pod said is forgotten, and its
    /// index is free for a new address (if this one comes back it is resolved as new).
    private mutating func retire(_ endpoint: Int32) {
        let address = endpoints[Int(endpoint)]
        dropWorkload(endpoint)
        if endpointIndex[address] == endpoint { endpointIndex[address] = nil }
        endpointTransports[Int(endpoint)] = .plaintext
        endpointWorkloads[Int(endpoint)] = -1
        endpointRefs[Int(endpoint)] = -1  // free: once only, though two clusters dropped it
        endpointLabels[endpoint] = nil
        endpointLocality[endpoint] = nil
        freeEndpoints.append(endpoint)
    }

    /// Of `touched`, the endpoints of `before` whose address, transport or workload differ now (each once): the
    /// workers renew their pools and forget their health.
    func revised(among touched: [Int32], since before: Snapshot) -> [Int32] {
        var revised = Set<Int32>()
        for endpoint in touched where Int(endpoint) < before.endpoints.count {
            let i = Int(endpoint)
            if endpoints[i] != before.endpoints[i] || endpointTransports[i] != before.endpointTransports[i]
                || endpointWorkloads[i] != before.endpointWorkloads[i]
            {
                revised.insert(endpoint)
            }
        }
        return revised.sorted()
    }

    /// Connection-pool limits for each cluster with such settings: `previous`'s for a cluster of the same name and
    /// settings, so that what is counted carries over a reload (an endpoint update keeps them as they are).
    mutating func assignLimits(keeping previous: Snapshot?) {
        var kept: [String: ClusterLimits] = [:]
        for cluster in previous?.clusters ?? [] { if let limits = cluster.limits { kept[cluster.name] = limits } }
        for i in clusters.indices {
            guard let settings = clusters[i].connectionPool else { continue }
            clusters[i].limits = kept[clusters[i].name].flatMap { $0.settings == settings ? $0 : nil } ?? ClusterLimits(settings)
        }
    }

    func snapshot(generation: UInt64, routes: RouteTable<RouteAction>, revised: [Int32]) -> Snapshot {
        Snapshot(
            generation: generation, lineage: lineage, routes: routes, clusters: clusters, endpoints: endpoints,
            endpointTransports: endpointTransports, peerAccounts: peerAccounts, workloads: workloads, endpointWorkloads: endpointWorkloads,
            revisedEndpoints: revised,
            destinations: destinations, workloadAddresses: workloadAddresses, tcpRoutes: tcpRoutes,
            authorization: authorization, unmatchedHostPolicies: unmatchedHostPolicies, authentication: authentication,
            unmatchedHostAuthentication: unmatchedHostAuthentication, strictMTLS: strictMTLS, services: services, authorizers: authorizers,
            upstreamTLS: upstreamTLS,
            dump: dumpSource(generation: generation), warnings: spec.warnings + warnings)
    }
}
