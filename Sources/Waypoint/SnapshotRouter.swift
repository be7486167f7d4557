import EventLoop
import HBONEServer
import HTTPRouter
import WaypointConfig
import WaypointCore

/// Routes requests with the worker's current snapshot: host → rules → weighted backend → round-robin endpoint.
///
/// Thread: its worker's loop thread only. Ownership: the worker; it swaps the snapshot when one is posted.
final class SnapshotRouter: RequestRouter {
    private(set) var snapshot: Snapshot
    /// Next round-robin position per cluster of `snapshot`.
    private var roundRobin: [UInt32]
    private var random: FastRandom

    init(snapshot: Snapshot, seed: UInt64) {
        self.snapshot = snapshot
        roundRobin = Array(repeating: 0, count: snapshot.clusters.count)
        random = FastRandom(seed: seed)
    }

    func replace(_ next: Snapshot) {
        snapshot = next
        roundRobin = Array(repeating: 0, count: next.clusters.count)
    }

    func route(_ head: RequestHead, _ bytes: UnsafeRawBufferPointer, destination: Destination?) -> RouteDecision {
        let rules: RuleSet<RouteAction>?
        if let destination {
            // Inside a tunnel the destination is the service the client dialed, whatever the Host header says.
            guard destination.virtualHost >= 0 else {
                return .forward(endpoint: destination.endpoint, route: destination.name)  // workload address
            }
            rules = snapshot.routes.virtualHosts[Int(destination.virtualHost)].rules(forPort: destination.port)
        } else {
            rules = head.host.isEmpty ? nil : snapshot.routes.ruleSet(forHost: head.host.bytes(in: bytes))
        }
        guard let action = rules?.route(head, bytes) else { return .reply(.noRoute) }
        switch action {
        case .reply(let reply):
            return .reply(reply)
        case .forward(let backends):
            let cluster = pick(backends)
            guard cluster >= 0 else { return .reply(.invalidBackend) }
            guard let endpoint = nextEndpoint(cluster) else { return .reply(.noHealthyUpstream) }
            return .forward(endpoint: endpoint, route: backends.route)
        }
    }

    func destination(for address: SocketAddress) -> Destination? { snapshot.destinations[address] }

    func isReachable(_ destination: Destination) -> Bool {
        destination.cluster < 0 || !snapshot.clusters[Int(destination.cluster)].endpoints.isEmpty
    }

    func pickEndpoint(for destination: Destination) -> Int32? {
        destination.cluster >= 0 ? nextEndpoint(destination.cluster) : destination.endpoint
    }

    /// Round-robin over the cluster's ready endpoints.
    @inline(__always)
    private func nextEndpoint(_ cluster: Int32) -> Int32? {
        let members = snapshot.clusters[Int(cluster)].endpoints
        guard !members.isEmpty else { return nil }
        let position = roundRobin[Int(cluster)]
        roundRobin[Int(cluster)] = position &+ 1
        return members[Int(position % UInt32(members.count))]
    }

    /// Weighted random choice; weight-0 entries are never chosen.
    @inline(__always)
    private func pick(_ backends: BackendSet) -> Int32 {
        if backends.clusters.count == 1 { return backends.clusters[0].cluster }
        var point = UInt32(truncatingIfNeeded: random.next() % UInt64(backends.totalWeight))
        for entry in backends.clusters {
            if point < entry.weight { return entry.cluster }
            point -= entry.weight
        }
        return backends.clusters[backends.clusters.count - 1].cluster
    }
}
