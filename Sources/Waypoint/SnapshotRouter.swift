import EventLoop
import Filters
import HBONEServer
import HTTPRouter
import WaypointConfig
import WaypointCore

/// Routes requests with the worker's current snapshot: host → rules → weighted backend → round-robin endpoint.
///
/// Thread: its worker's loop thread only. Ownership: the worker; it swaps the snapshot when one is posted.
final class SnapshotRouter: RequestRouter {
    private(set) var snapshot: Snapshot
    /// The worker's counters (authorization decisions).
    private let counters: WorkerCounters
    /// Next round-robin position per cluster of `snapshot`.
    private var roundRobin: [UInt32]
    private var random: FastRandom

    init(snapshot: Snapshot, seed: UInt64, counters: WorkerCounters) {
        self.snapshot = snapshot
        self.counters = counters
        roundRobin = Array(repeating: 0, count: snapshot.clusters.count)
        random = FastRandom(seed: seed)
    }

    func replace(_ next: Snapshot) {
        snapshot = next
        roundRobin = Array(repeating: 0, count: next.clusters.count)
    }

    func route(_ head: RequestHead, _ bytes: UnsafeRawBufferPointer, destination: Destination?, peer: PeerFacts) -> RouteDecision {
        // Which virtual host (service) this is for: the tunnel's destination, else the Host header.
        var host: Int32 = -1
        var port: UInt16? = nil
        if let destination {
            host = destination.virtualHost
            port = destination.port
        } else if !head.host.isEmpty, let found = snapshot.routes.virtualHost(forHost: head.host.bytes(in: bytes)) {
            (host, port) = found
        }
        // Security first, as Envoy's RBAC filter runs before the router: a denied request learns nothing of routes.
        if host >= 0 && snapshot.strictMTLS[Int(host)] && peer.identity == nil { return .reply(.mtlsRequired) }
        let policies = host >= 0 ? snapshot.authorization[Int(host)] : snapshot.unmatchedHostPolicies
        if !policies.isEmpty && !authorize(policies, head, bytes, peer: peer, port: port ?? destination?.port) {
            return .reply(.rbacDenied)
        }
        if let destination, destination.virtualHost < 0 {
            return .forward(endpoint: destination.endpoint, route: destination.name)  // workload address
        }
        let rules = host >= 0 ? snapshot.routes.virtualHosts[Int(host)].rules(forPort: port) : nil
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

    func authorizeTCP(to destination: Destination, peer: PeerFacts) -> Bool {
        let policies = destination.virtualHost >= 0 ? snapshot.authorization[Int(destination.virtualHost)] : snapshot.unmatchedHostPolicies
        guard !policies.isEmpty else { return true }
        return record(policies.evaluate(Self.connectionAttributes(peer, port: destination.port), audited: audited))
    }

    /// Evaluates the policies for an HTTP request.
    private func authorize(_ policies: PolicySet, _ head: RequestHead, _ bytes: UnsafeRawBufferPointer, peer: PeerFacts,
                           port: UInt16?) -> Bool {
        var request = Self.connectionAttributes(peer, port: port)
        // Host: lower-cased, without its port (hosts compare case-insensitively: CVE-2021-39155).
        let (name, _) = RouteTable<RouteAction>.split(head.host.bytes(in: bytes))
        let host = (name.map { Array($0) } ?? []).map(HTTP1Parser.lowercased)
        return host.withUnsafeBytes { host in
            request.http = AuthorizationRequest.HTTP(
                host: host, method: head.method.bytes(in: bytes), path: head.path.bytes(in: bytes),
                header: { name in Self.headerValue(head, bytes, name) })
            return record(policies.evaluate(request, audited: audited))
        }
    }

    /// A header's value by lower-case name; repeated headers joined with `,` (as Envoy presents them), so a
    /// second copy of a header can neither hide nor replace the first.
    private static func headerValue(_ head: RequestHead, _ bytes: UnsafeRawBufferPointer, _ name: [UInt8]) -> [UInt8]? {
        var value: [UInt8]? = nil
        for field in head.headers where Int(field.name.count) == name.count {
            let fieldName = field.name.bytes(in: bytes)
            guard zip(fieldName, name).allSatisfy({ HTTP1Parser.lowercased($0) == $1 }) else { continue }
            if value == nil { value = Array(field.value.bytes(in: bytes)) } else { value! += [0x2C] + field.value.bytes(in: bytes) }
        }
        return value
    }

    private static func connectionAttributes(_ peer: PeerFacts, port: UInt16?) -> AuthorizationRequest {
        var request = AuthorizationRequest()
        if let identity = peer.identity {
            request.principal = identity.principal
            request.namespace = identity.namespace
            request.serviceAccount = identity.serviceAccount
            request.trustDomain = identity.trustDomain
        }
        request.sourceIP = peer.sourceIPBytes
        request.sourceIPText = peer.sourceIP
        request.destinationIP = peer.destinationIPBytes
        request.destinationIPText = peer.destinationIP
        request.destinationPort = port
        return request
    }

    /// Counts a decision; true when allowed.
    private func record(_ decision: AuthorizationDecision) -> Bool {
        switch decision {
        case .allow(let policy):
            counters.authorizationAllowed.increment()
            if let policy { counters.countPolicy(policy, "allow") }
            return true
        case .deny(let policy):
            counters.authorizationDenied.increment()
            counters.countPolicy(policy ?? "(no ALLOW policy matched)", "deny")
            return false
        }
    }

    private var audited: (String) -> Void { { [counters] policy in counters.countPolicy(policy, "audit") } }

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
