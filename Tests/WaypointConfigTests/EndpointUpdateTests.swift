import Filters
import Testing
@testable import WaypointConfig
import WaypointCore

/// An endpoint update must give what compiling everything gives: after each of many random EndpointSlice and
/// Pod changes (a rollout, relabelling, deletions), every cluster, subset and tunnel destination of the updated
/// snapshot equals the full compile's, and a worker patching its pools as told ends with the same endpoints.
@Suite struct EndpointUpdateTests {
    static let services = """
        apiVersion: v1
        kind: Service
        metadata: {name: web, namespace: shop}
        spec: {clusterIP: 10.96.0.1, ports: [{name: http, port: 80}, {name: admin, port: 81}]}
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: reviews, namespace: shop}
        spec: {clusterIP: 10.96.0.2, ports: [{name: http, port: 9080}]}
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: ratings, namespace: shop}
        spec: {clusterIP: 10.96.0.3, ports: [{name: http, port: 9080}]}
        ---
        apiVersion: networking.istio.io/v1
        kind: DestinationRule
        metadata: {name: reviews, namespace: shop}
        spec:
          host: reviews
          subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
        ---
        apiVersion: networking.istio.io/v1
        kind: DestinationRule
        metadata: {name: ratings, namespace: shop}
        spec: {host: ratings, trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x-user}}}}

        """

    /// A deterministic generator (the same steps on every run).
    struct Steps {
        var state: UInt64 = 0x9E37_79B9_7F4A_7C15
        mutating func next(_ bound: Int) -> Int {
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            return Int((state >> 33) % UInt64(bound))
        }
    }

    static func pod(_ n: Int, version: String, ambient: Bool) -> PodSpec {
        var labels = ["version": version, "app": "shop"]
        if ambient { labels["istio.io/dataplane-mode"] = "ambient" }
        var workload = WorkloadLabels()
        workload.version = version
        return PodSpec(
            namespace: "shop", name: "pod-\(n)", labels: labels, ips: ["10.0.0.\(n)"], serviceAccount: "sa-\(n % 3)", workload: workload)
    }

    static func slice(_ service: String, _ pods: [Int], ready: Bool = true) -> EndpointSliceSpec {
        EndpointSliceSpec(
            namespace: "shop", name: "\(service)-1", serviceName: service, ports: [("http", 8080), ("admin", 8081)],
            endpoints: pods.map { (["10.0.0.\($0)"], ready, "pod-\($0)", nil, nil) })
    }

    static func version(_ snapshot: Snapshot, _ endpoint: Int32) -> String {
        let workload = snapshot.endpointWorkloads[Int(endpoint)]
        return workload >= 0 ? snapshot.workloads[Int(workload)].version : "-"
    }

    /// What routing sees: each cluster's endpoints (address, transport, workload version) and the tunnel
    /// destinations (address → where to).
    /// An endpoint's transport with its HBONE peer's name (indices into `peerAccounts` differ between compiles).
    static func transport(_ snapshot: Snapshot, _ i: Int32) -> String {
        guard case .hbone(let peer) = snapshot.endpointTransports[Int(i)] else { return "\(snapshot.endpointTransports[Int(i)])" }
        return peer >= 0 ? "hbone(\(snapshot.peerAccounts[Int(peer)]))" : "hbone(any)"
    }

    static func view(_ snapshot: Snapshot) -> [String] {
        var lines: [String] = []
        for cluster in snapshot.clusters {
            let members = cluster.endpoints.map { i in
                "\(snapshot.endpoints[Int(i)]) \(transport(snapshot, i)) \(version(snapshot, i))"
            }
            lines.append("\(cluster.name): \(members.sorted()) ring=\(cluster.ring != nil)")
        }
        for address in Set(snapshot.destinations.keys).union(snapshot.workloadAddresses.keys) {
            let destination = snapshot.destination(for: address)!
            let target =
                destination.endpoint >= 0 ? snapshot.endpoints[Int(destination.endpoint)].description : "cluster \(destination.cluster)"
            lines.append("\(address) -> \(target) \(destination.name)")
        }
        return lines.sorted()
    }

    @Test func updatesMatchAFullCompileThroughManyChanges() throws {
        let compiler = SnapshotCompiler(namespace: "shop")
        var spec = try ManifestLoader.load(text: Self.services, file: "test.yaml", defaultNamespace: "shop")
        var pods = (1...12).map { Self.pod($0, version: $0 % 2 == 0 ? "v2" : "v1", ambient: $0 % 4 == 0) }
        var slices = ["web": [1, 2, 3], "reviews": [4, 5, 6, 7], "ratings": [8]]
        func assemble() -> ConfigSpec {
            var next = spec
            next.pods = pods
            next.endpointSlices = slices.keys.sorted().map { Self.slice($0, slices[$0]!) }
            return next
        }
        spec = assemble()
        var compiled = compiler.compileKeepingState(spec, generation: 1)
        let lineage = compiled.snapshot.lineage
        // The worker's pools: address and transport per index, patched as the snapshots say.
        var pools = zip(compiled.snapshot.endpoints, compiled.snapshot.endpointTransports).map { ($0, $1) }
        var steps = Steps()
        for generation in UInt64(2)...300 {
            var changes = ConfigSpec()
            let service = ["web", "reviews", "ratings"][steps.next(3)]
            switch steps.next(4) {
            case 0:  // a rollout step: one endpoint replaced by a new Pod
                var members = slices[service] ?? []
                if !members.isEmpty { members.remove(at: steps.next(members.count)) }
                let n = 13 + steps.next(40)
                if !pods.contains(where: { $0.name == "pod-\(n)" }) {
                    pods.append(Self.pod(n, version: steps.next(2) == 0 ? "v1" : "v2", ambient: steps.next(2) == 0))
                    changes.pods.append(pods.last!)
                }
                members.append(n)
                if let old = slices[service] { changes.endpointSlices.append(Self.slice(service, old)) }
                slices[service] = members
                changes.endpointSlices.append(Self.slice(service, members))
            case 1 where !pods.isEmpty:  // a Pod relabelled: subsets follow
                let i = steps.next(pods.count)
                changes.pods.append(pods[i])
                let version = pods[i].labels["version"] == "v1" ? "v2" : "v1"
                pods[i] = Self.pod(Int(pods[i].ips[0].split(separator: ".").last!)!, version: version, ambient: pods[i].labels.count > 2)
                changes.pods.append(pods[i])
            case 2:  // a slice deleted, or created again
                if let old = slices.removeValue(forKey: service) {
                    changes.endpointSlices.append(Self.slice(service, old))
                } else {
                    slices[service] = [1 + steps.next(12)]
                    changes.endpointSlices.append(Self.slice(service, slices[service]!))
                }
            case _ where pods.isEmpty:
                continue
            default:  // a Pod deleted with its endpoints
                let i = steps.next(pods.count)
                let n = Int(pods[i].ips[0].split(separator: ".").last!)!
                changes.pods.append(pods.remove(at: i))
                for (name, members) in slices where members.contains(n) {
                    changes.endpointSlices.append(Self.slice(name, members))
                    slices[name] = members.filter { $0 != n }
                    changes.endpointSlices.append(Self.slice(name, slices[name]!))
                }
            }
            spec = assemble()
            let previousCount = compiled.snapshot.endpoints.count
            // ~50 addresses can never leave 1,024 dead endpoints: every step must be an update
            guard let updated = compiler.update(compiled, spec: spec, changes: changes, generation: generation) else {
                Issue.record("generation \(generation) asked for a full compile")
                return
            }
            let full = compiler.compile(spec, generation: generation)
            #expect(Self.view(updated.snapshot) == Self.view(full), "generation \(generation)")
            #expect(updated.snapshot.lineage == compiled.snapshot.lineage)
            let snapshot = updated.snapshot
            let revised = Set(snapshot.revisedEndpoints)
            for i in 0..<previousCount where !revised.contains(Int32(i)) {
                #expect(snapshot.endpoints[i] == compiled.snapshot.endpoints[i], "an index keeps its address unless revised")
            }
            for i in snapshot.revisedEndpoints { pools[Int(i)] = (snapshot.endpoints[Int(i)], snapshot.endpointTransports[Int(i)]) }
            pools += zip(snapshot.endpoints, snapshot.endpointTransports).dropFirst(pools.count).map { ($0, $1) }
            for cluster in snapshot.clusters {
                for i in cluster.endpoints {
                    #expect(pools[Int(i)].0 == snapshot.endpoints[Int(i)] && pools[Int(i)].1 == snapshot.endpointTransports[Int(i)])
                }
            }
            compiled = updated
        }
        #expect(compiled.snapshot.lineage == lineage)
    }

    /// A rollout that gives every replacement a new address (as Pods get): the dead endpoints' indices go to the
    /// new addresses, so the tables stay the size of the live endpoints and no step needs a full compile; a
    /// worker told of the revised indices ends with the right pools.
    @Test func newAddressesTakeTheIndicesOfDeadEndpoints() throws {
        let compiler = SnapshotCompiler(namespace: "shop")
        let base = try ManifestLoader.load(text: Self.services, file: "test.yaml", defaultNamespace: "shop")
        func slice(_ hosts: [Int]) -> EndpointSliceSpec {
            EndpointSliceSpec(
                namespace: "shop", name: "web-1", serviceName: "web", ports: [("http", 8080)],
                endpoints: hosts.map { (["10.1.\($0 / 250).\($0 % 250 + 1)"], true, nil, nil, nil) })
        }
        var hosts = Array(0..<10)
        var spec = base
        spec.endpointSlices = [slice(hosts)]
        var compiled = compiler.compileKeepingState(spec, generation: 1)
        var pools = zip(compiled.snapshot.endpoints, compiled.snapshot.endpointTransports).map { ($0, $1) }
        for generation in UInt64(2)...3_000 {  // 2,990 new addresses: over 1,024, which dead endpoints once allowed
            var changes = ConfigSpec()
            changes.endpointSlices = [slice(hosts)]
            hosts[Int(generation) % hosts.count] = Int(generation) + 10
            spec.endpointSlices = [slice(hosts)]
            changes.endpointSlices.append(spec.endpointSlices[0])
            guard let updated = compiler.update(compiled, spec: spec, changes: changes, generation: generation) else {
                Issue.record("generation \(generation) asked for a full compile")
                return
            }
            compiled = updated
            let snapshot = compiled.snapshot
            for i in snapshot.revisedEndpoints { pools[Int(i)] = (snapshot.endpoints[Int(i)], snapshot.endpointTransports[Int(i)]) }
            pools += zip(snapshot.endpoints, snapshot.endpointTransports).dropFirst(pools.count).map { ($0, $1) }
        }
        let snapshot = compiled.snapshot
        // Each host is an endpoint of both of web's ports (81 has no slice port: its own number); the last step
        // freed the two of the host it replaced.
        #expect(snapshot.endpoints.count == 22)
        let web = try #require(snapshot.clusters.first { $0.name == "shop/web:80" })
        #expect(
            web.endpoints.map { snapshot.endpoints[Int($0)].description }.sorted()
                == hosts.map { "10.1.\($0 / 250).\($0 % 250 + 1):8080" }.sorted())
        for i in web.endpoints { #expect(pools[Int(i)].0 == snapshot.endpoints[Int(i)]) }
        #expect(snapshot.lineage == 1)
    }

    @Test func onlyEndpointSlicesAndPodsAreEndpointChanges() throws {
        let loaded = try ManifestLoader.load(text: Self.services, file: "test.yaml", defaultNamespace: "shop")
        var changes = ConfigSpec()
        changes.pods = [Self.pod(1, version: "v1", ambient: false)]
        changes.endpointSlices = [Self.slice("web", [1])]
        #expect(changes.onlyEndpoints)
        #expect(!loaded.onlyEndpoints)
    }

    /// Free indices that new addresses do not take (a scale-down) stay within a lineage up to a quarter of the
    /// live endpoints and 1,024; past that the update asks for a full compile, which starts a new lineage
    /// without them.
    @Test func aLargeScaleDownBringsAFullCompile() throws {
        let compiler = SnapshotCompiler(namespace: "shop")
        var spec = try ManifestLoader.load(text: Self.services, file: "test.yaml", defaultNamespace: "shop")
        func slice(_ hosts: Range<Int>) -> EndpointSliceSpec {
            EndpointSliceSpec(
                namespace: "shop", name: "web-1", serviceName: "web", ports: [("http", 8080)],
                endpoints: hosts.map { (["10.2.\($0 / 250).\($0 % 250 + 1)"], true, nil, nil, nil) })
        }
        spec.endpointSlices = [slice(0..<3000)]
        let compiled = compiler.compileKeepingState(spec, generation: 1)
        var changes = ConfigSpec()
        changes.endpointSlices = spec.endpointSlices
        // Two endpoints per host (ports 8080 and 81, the admin port's numeric target).
        spec.endpointSlices = [slice(0..<2500)]  // 1,000 free, 5,000 live
        changes.endpointSlices.append(spec.endpointSlices[0])
        let smaller = try #require(compiler.update(compiled, spec: spec, changes: changes, generation: 2))
        #expect(smaller.snapshot.endpoints.count == 6000 && smaller.snapshot.lineage == 1)
        changes.endpointSlices = spec.endpointSlices
        spec.endpointSlices = [slice(0..<10)]
        changes.endpointSlices.append(spec.endpointSlices[0])
        #expect(compiler.update(smaller, spec: spec, changes: changes, generation: 3) == nil)
        let full = compiler.compileKeepingState(spec, generation: 3)
        #expect(full.snapshot.endpoints.count == 20 && full.snapshot.lineage == 3)
    }
}
