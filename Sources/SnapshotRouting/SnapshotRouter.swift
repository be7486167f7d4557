import Filters
import HBONEServer
import HTTPRouter
import JWT
import WaypointConfig
import WaypointCore

/// Routes requests with the worker's current snapshot: host → rules → weighted backend → round-robin endpoint.
///
/// Thread: its worker's loop thread only. Ownership: the worker; it swaps the snapshot when one is posted.
public final class SnapshotRouter: RequestRouter {
    public private(set) var snapshot: Snapshot
    /// Per virtual host of the snapshot: its service interned in the worker's Istio metrics.
    private var serviceIDs: [Int32] = []
    /// Per policy of the snapshot: its slot in `policyCounters` (allow at 3i, deny at 3i+1, audit at 3i+2).
    private var policySlots: [String: Int] = [:]
    private var policyCounters: CounterArray
    /// The worker's counters (authorization decisions).
    private let counters: WorkerCounters
    /// Next round-robin position per cluster of `snapshot`.
    private var roundRobin: [UInt32]
    private var random: FastRandom

    /// Outlier detection state by endpoint (this worker's view, as Envoy's per-worker detectors).
    private struct EndpointHealth {
        var fiveXX = 0
        var gateway = 0
        var ejections = 0
        var ejectedUntil = 0.0
    }
    private var health: [Int32: EndpointHealth] = [:]
    /// Per endpoint index of this lineage: the generation of the snapshot that last gave it another address
    /// (0: none did), so that an index a request held from before is not taken for the new address.
    private var readdressed: [UInt64] = []
    /// The lineage before this one, kept to renumber what requests routed under it still hold.
    private var previous = PreviousLineage()
    private struct PreviousLineage {
        var lineage: UInt64 = 0
        var readdressed: [UInt64] = []
        var endpoints: [SocketAddress] = []
        /// Per cluster of the previous lineage: its index now (by name), -1 when it is gone.
        var clusters: [Int32] = []
    }
    /// The loop's time, for ejections.
    private let now: () -> Double
    /// Requests this worker has in flight to an endpoint (set by the worker once its server exists).
    public var requestsInFlight: (Int32) -> Int = { _ in 0 }

    public init(snapshot: Snapshot, seed: UInt64, counters: WorkerCounters, now: @escaping () -> Double = { 0 }) {
        self.snapshot = snapshot
        self.counters = counters
        self.now = now
        (policySlots, policyCounters) = Self.policyCounters(snapshot, counters)
        roundRobin = Array(repeating: 0, count: snapshot.clusters.count)
        random = FastRandom(seed: seed)
        readdressed = Array(repeating: 0, count: snapshot.endpoints.count)
        serviceIDs = snapshot.services.map { counters.istio.intern(service: $0.fqdn, name: $0.name, namespace: $0.namespace) }
    }

    public func replace(_ next: Snapshot) {
        if next.lineage == snapshot.lineage {
            // Endpoints changed only: hosts, policies and clusters are the same, and indices kept their address
            // but revised ones may not (a dead endpoint's index given to a new address): its health is not theirs.
            if readdressed.count < next.endpoints.count {
                readdressed.append(contentsOf: repeatElement(0, count: next.endpoints.count - readdressed.count))
            }
            for endpoint in next.revisedEndpoints where snapshot.endpoints[Int(endpoint)] != next.endpoints[Int(endpoint)] {
                health[endpoint] = nil
                readdressed[Int(endpoint)] = next.generation
            }
            snapshot = next
            return
        }
        var clusterIndex: [String: Int32] = [:]
        for (i, cluster) in next.clusters.enumerated() { clusterIndex[cluster.name] = Int32(i) }
        previous = PreviousLineage(
            lineage: snapshot.lineage, readdressed: readdressed, endpoints: snapshot.endpoints,
            clusters: snapshot.clusters.map { clusterIndex[$0.name] ?? -1 })
        readdressed = Array(repeating: 0, count: next.endpoints.count)
        // Endpoint indices change with the snapshot: outlier state follows each endpoint's address, so a reload
        // neither brings ejected endpoints back nor forgets their errors (Envoy keeps it for hosts that stay).
        var index: [SocketAddress: Int32] = [:]
        for (i, address) in next.endpoints.enumerated() { index[address] = Int32(i) }
        var kept: [Int32: EndpointHealth] = [:]
        for (old, state) in health { if let new = index[snapshot.endpoints[Int(old)]] { kept[new] = state } }
        health = kept
        verifiedTokens = [:]
        snapshot = next
        (policySlots, policyCounters) = Self.policyCounters(next, counters)
        roundRobin = Array(repeating: 0, count: next.clusters.count)
        serviceIDs = next.services.map { counters.istio.intern(service: $0.fqdn, name: $0.name, namespace: $0.namespace) }
    }

    public var generation: UInt64 { snapshot.generation }

    public func renumber(cluster: inout Int32, endpoint: inout Int32, since generation: inout UInt64) {
        guard generation != snapshot.generation else { return }
        defer { generation = snapshot.generation }
        if generation >= snapshot.lineage {
            // This lineage: clusters keep their indices, and an endpoint its address unless an update readdressed it.
            if endpoint >= 0 && readdressed[Int(endpoint)] > generation { endpoint = -1 }
            return
        }
        guard generation >= previous.lineage, previous.lineage != 0 else {
            (cluster, endpoint) = (-1, -1)  // two reloads ago or more: nothing left to tell what the indices meant
            return
        }
        let address = endpoint >= 0 && previous.readdressed[Int(endpoint)] <= generation ? previous.endpoints[Int(endpoint)] : nil
        if cluster >= 0 { cluster = previous.clusters[Int(cluster)] }
        endpoint =
            address.flatMap { address in
                // The endpoint at the same address in the same cluster (a subset's variant keeps its own TLS), or the
                // workload at that address.
                guard cluster >= 0 else {
                    return snapshot.destinations[address] == nil ? snapshot.workloadAddresses[address]?.endpoint : nil
                }
                return snapshot.clusters[Int(cluster)].endpoints.first { snapshot.endpoints[Int($0)] == address }
            } ?? -1
    }

    public func route(_ head: RequestHead, _ bytes: UnsafeRawBufferPointer, destination: inout Destination?, peer: PeerFacts)
        -> RouteDecision
    {
        // A tunnel accepted under an earlier snapshot: its address looked up again, once (gone: it stays stale).
        if isStale(destination), let address = destination?.address, let now = self.destination(for: address) { destination = now }
        var labels = RouteLabels()
        var jwtHeaders: HeaderModifier? = nil
        var check: ExternalCheck? = nil
        var action = action(head, bytes, destination: destination, peer: peer, labels: &labels, jwtHeaders: &jwtHeaders, check: &check)
        if let jwtHeaders, case .forward(let endpoint, let route, let cluster, let policy) = action {
            action = .forward(endpoint: endpoint, route: route, cluster: cluster, policy: policy.applying(first: jwtHeaders))
        }
        return RouteDecision(action, labels: labels, check: check)
    }

    /// The decision's action; `labels` gets the deciding policy and the destination service on the way,
    /// `jwtHeaders` what a verified JWT changes in the forwarded request, and `check` the external check a
    /// CUSTOM policy calls for (asked first: the action assumes it allows).
    private func action(
        _ head: RequestHead, _ bytes: UnsafeRawBufferPointer, destination: Destination?, peer: PeerFacts,
        labels: inout RouteLabels, jwtHeaders: inout HeaderModifier?, check: inout ExternalCheck?
    ) -> RouteDecision.Action {
        // A tunnel whose address the current snapshot no longer serves: 503, never the Host header.
        if isStale(destination) { return .reply(.noHealthyUpstream) }
        // Which virtual host (service) this is for: the tunnel's destination, else the Host header.
        var host: Int32 = -1
        var port: UInt16? = nil
        if let destination {
            host = destination.virtualHost
            port = destination.port
        } else if !head.host.isEmpty, let found = snapshot.routes.virtualHost(forHost: head.host.bytes(in: bytes)) {
            (host, port) = found
        }
        labels.service = host >= 0 ? serviceIDs[Int(host)] : -1
        // Security first, as Envoy's RBAC filter runs before the router: a denied request learns nothing of routes.
        if host >= 0 && snapshot.strictMTLS[Int(host)] && peer.identity == nil { return .reply(.mtlsRequired) }
        // RequestAuthentication before authorization, as Envoy's jwt_authn runs before RBAC: a token that is not
        // valid is refused (401); a valid one names the request's principal and claims.
        var jwt: JWTIdentity? = nil
        if snapshot.hasAuthentication, let rules = host >= 0 ? snapshot.authentication[Int(host)] : snapshot.unmatchedHostAuthentication {
            switch authenticate(rules, head, bytes, host: host) {
            case .failure(let rejection):
                counters.jwtRejected.increment()
                return .reply(.jwtRejected(rejection))
            case .success(let identity):
                jwt = identity
                jwtHeaders = identity?.requestHeaders
            }
        }
        // Checked in place first: copying a PolicySet out of the array costs retains, so only when one applies.
        let hasPolicies = host >= 0 ? !snapshot.authorization[Int(host)].isEmpty : !snapshot.unmatchedHostPolicies.isEmpty
        if hasPolicies {
            let policies = host >= 0 ? snapshot.authorization[Int(host)] : snapshot.unmatchedHostPolicies
            let (decision, custom) = authorize(policies, head, bytes, peer: peer, port: port ?? destination?.port, jwt: jwt)
            if let custom { check = externalCheck(custom, head, bytes, peer: peer, port: port ?? destination?.port) }
            switch decision {
            case .allow(let policy), .deny(let policy): labels.policy = policy
            }
            if !record(decision) { return .reply(.rbacDenied) }
        }
        if let destination, destination.virtualHost < 0 {
            return .forward(endpoint: destination.endpoint, route: destination.name, cluster: -1, policy: .standard)  // workload address
        }
        let rules = host >= 0 ? snapshot.routes.virtualHosts[Int(host)].rules(forPort: port) : nil
        guard let action = rules?.route(head, bytes) else { return .reply(.noRoute) }
        switch action {
        case .reply(let reply):
            return .reply(reply)
        case .respond(let status, let body):
            return .respond(status: status, body: body, delay: nil)
        case .redirect(let redirect):
            let (name, hostPort) = RouteTable<RouteAction>.split(head.host.bytes(in: bytes))
            let target = head.target.bytes(in: bytes)
            let location = redirect.location(
                host: name ?? UnsafeRawBufferPointer(start: nil, count: 0), requestPort: hostPort,
                path: head.path.bytes(in: bytes),
                query: UnsafeRawBufferPointer(rebasing: target[min(Int(head.path.count), target.count)...]))
            return .redirect(status: redirect.statusCode, location: location)
        case .forward(let backends):
            if let abort = backends.abort, roll(abort.percent) {
                counters.faultAborts.increment()
                // Envoy's fault filter delays first: a delay that applies too holds the abort back.
                var delay: Duration? = nil
                if let fault = backends.policy.delay, roll(fault.percent) {
                    counters.faultDelays.increment()
                    delay = fault.duration
                }
                return .respond(status: abort.status, body: Self.abortBody, delay: delay)
            }
            let chosen = backends.clusters[pick(backends)]
            let cluster = chosen.cluster
            guard cluster >= 0 else { return .reply(.invalidBackend) }
            let endpoint: Int32?
            if snapshot.clusters[Int(cluster)].originalDestination {
                endpoint = originalEndpoint(cluster, destination)
            } else {
                endpoint = nextEndpoint(cluster, hash: requestHash(cluster, head, bytes, peer))
            }
            guard let endpoint else { return .reply(.noHealthyUpstream) }
            return .forward(endpoint: endpoint, route: backends.route, cluster: cluster, policy: chosen.policy ?? backends.policy)
        }
    }

    public func destination(for address: SocketAddress) -> Destination? {
        guard var found = snapshot.destination(for: address) else { return nil }
        (found.address, found.lineage) = (address, snapshot.lineage)
        return found
    }

    /// Whether a tunnel's `destination` came from an earlier snapshot whose indices mean something else now: a
    /// full compile since (a new lineage renumbers virtual hosts and clusters), or an endpoint update that gave
    /// its workload endpoint's index to another address. Reads fields only: this runs for every request.
    @inline(__always) private func isStale(_ destination: Destination?) -> Bool {
        guard let lineage = destination?.lineage, lineage != 0 else { return false }  // 0: not a tunnel's lookup
        if lineage != snapshot.lineage { return true }
        guard let endpoint = destination?.endpoint, endpoint >= 0 else { return false }
        return Int(endpoint) >= snapshot.endpoints.count || snapshot.endpoints[Int(endpoint)] != destination?.address
    }

    public func service(of destination: Destination) -> Int32 {
        if isStale(destination) { return destination.address.flatMap(self.destination(for:)).map(service(of:)) ?? -1 }
        return destination.virtualHost >= 0 ? serviceIDs[Int(destination.virtualHost)] : -1
    }

    public func authorizeTCP(to destination: Destination, peer: PeerFacts) -> Bool {
        let policies = destination.virtualHost >= 0 ? snapshot.authorization[Int(destination.virtualHost)] : snapshot.unmatchedHostPolicies
        guard !policies.isEmpty else { return true }
        return record(policies.evaluate(Self.connectionAttributes(peer, port: destination.port), audited: audited))
    }

    /// Verified tokens by virtual host and token: a token is verified once per worker while it is valid (a
    /// signature check costs 20-60 µs; a lookup well under one). Emptied when full and on each new snapshot.
    private var verifiedTokens: [VerifiedToken: JWTIdentity] = [:]
    private struct VerifiedToken: Hashable {
        let host: Int32
        let location: Int
        let token: [UInt8]

        /// The token's bytes in one go (an array of bytes hashes byte by byte: ~3 µs for an RS256 token).
        func hash(into hasher: inout Hasher) {
            hasher.combine(host)
            hasher.combine(location)
            token.withUnsafeBytes { hasher.combine(bytes: $0) }
        }
    }
    private static let verifiedTokensLimit = 4096

    /// The request's JWTs checked against `rules`: nil without a token; the first token's identity when all are
    /// valid; the first failure otherwise.
    private func authenticate(_ rules: RequestAuthenticator, _ head: RequestHead, _ bytes: UnsafeRawBufferPointer, host: Int32)
        -> Result<JWTIdentity?, JWTRejection>
    {
        let http = AuthorizationRequest.HTTP(
            host: UnsafeRawBufferPointer(start: nil, count: 0), method: head.method.bytes(in: bytes), path: head.path.bytes(in: bytes),
            head: head, headBytes: bytes)
        let target = head.target.bytes(in: bytes)
        let query = target.firstIndex(of: 0x3F).map { Array(target[($0 + 1)...]) } ?? []
        let tokens = rules.tokens(in: RequestAuthenticator.Request(header: { http.header($0) }, query: query))
        var first: JWTIdentity? = nil
        for presented in tokens {
            let key = VerifiedToken(host: host, location: presented.locationIndex, token: presented.token)
            let now = self.now()
            if let cached = verifiedTokens[key], (cached.expiry.map { now <= $0 + RequestAuthenticator.clockSkew } ?? true) {
                first = first ?? cached
                continue
            }
            switch rules.verify(presented, now: now) {
            case .failure(let rejection):
                return .failure(rejection)
            case .success(let identity):
                if verifiedTokens.count >= Self.verifiedTokensLimit { verifiedTokens.removeAll(keepingCapacity: true) }
                verifiedTokens[key] = identity
                first = first ?? identity
            }
        }
        return .success(first)
    }

    /// Evaluates the policies for an HTTP request: the decision of DENY and ALLOW, and the CUSTOM policy whose
    /// external authorizer is asked first, if one matches.
    private func authorize(
        _ policies: PolicySet, _ head: RequestHead, _ bytes: UnsafeRawBufferPointer, peer: PeerFacts,
        port: UInt16?, jwt: JWTIdentity?
    ) -> (AuthorizationDecision, custom: AuthorizationPolicy?) {
        var request = Self.connectionAttributes(peer, port: port)
        request.jwt = jwt
        // Host: lower-cased, without its port (hosts compare case-insensitively: CVE-2021-39155); on the stack.
        let (name, _) = RouteTable<RouteAction>.split(head.host.bytes(in: bytes))
        let host = name ?? UnsafeRawBufferPointer(start: nil, count: 0)
        return withUnsafeTemporaryAllocation(of: UInt8.self, capacity: max(host.count, 1)) { lower in
            for i in 0..<host.count { lower[i] = HTTP1Parser.lowercased(host[i]) }
            request.http = AuthorizationRequest.HTTP(
                host: UnsafeRawBufferPointer(UnsafeMutableBufferPointer(rebasing: lower[0..<host.count])),
                method: head.method.bytes(in: bytes), path: head.path.bytes(in: bytes), head: head, headBytes: bytes)
            return (policies.evaluate(request, audited: audited), policies.externalCheck(request))
        }
    }

    /// What the CUSTOM policy's authorizer is asked about the request.
    private func externalCheck(
        _ policy: AuthorizationPolicy, _ head: RequestHead, _ bytes: UnsafeRawBufferPointer, peer: PeerFacts, port: UInt16?
    ) -> ExternalCheck {
        let authorizer = snapshot.authorizers[Int(policy.provider)]
        switch authorizer.api {
        case .http(let settings):
            let out = ByteBuffer(capacity: 512)
            ExternalAuthorizer.httpCheck(settings, head, bytes, into: out)
            return ExternalCheck(authorizer: authorizer, policy: policy.name, request: Array(out.readable))
        case .grpc:
            let now = self.now()
            let sourcePort = peer.sourceAddress.split(separator: ":").last.flatMap { UInt32($0) } ?? 0
            let attributes = ExternalAuthorizer.Attributes(
                sourceIP: peer.sourceIP, sourcePort: sourcePort, sourcePrincipal: peer.identity?.description,
                destinationIP: peer.destinationIP, destinationPort: UInt32(port ?? 0),
                protocolName: head.isHTTP2 ? "HTTP/2" : head.isHTTP10 ? "HTTP/1.0" : "HTTP/1.1",
                time: (Int64(now), UInt32(max(0, (now - now.rounded(.down)) * 1e9))))
            return ExternalCheck(
                authorizer: authorizer, policy: policy.name, request: ExternalAuthorizer.grpcCheck(head, bytes, attributes))
        }
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
        request.destinationIP = peer.destinationIPBytes
        request.destinationPort = port
        return request
    }

    /// Counts a decision; true when allowed.
    private func record(_ decision: AuthorizationDecision) -> Bool {
        switch decision {
        case .allow(let policy):
            counters.authorizationAllowed.increment()
            if let policy { count(policy, 0) }
            return true
        case .deny(let policy):
            counters.authorizationDenied.increment()
            if let policy { count(policy, 1) } else { counters.authorizationNoAllowMatched.increment() }
            return false
        }
    }

    private func count(_ policy: String, _ result: Int) {
        if let slot = policySlots[policy] { policyCounters.increment(slot + result) }
    }

    private var audited: (String) -> Void {
        { [unowned(unsafe) self] policy in if let slot = self.policySlots[policy] { self.policyCounters.increment(slot + 2) } }
    }

    /// Slots for every policy of `snapshot`, and the worker's fresh counters for them.
    private static func policyCounters(_ snapshot: Snapshot, _ counters: WorkerCounters) -> ([String: Int], CounterArray) {
        var names: [String] = []
        var seen: Set<String> = []
        for set in snapshot.authorization + [snapshot.unmatchedHostPolicies] {
            for policy in set.custom + set.deny + set.allow + set.audit where seen.insert(policy.name).inserted {
                names.append(policy.name)
            }
        }
        var slots: [String: Int] = [:]
        for (i, name) in names.enumerated() { slots[name] = 3 * i }
        return (slots, counters.publishPolicyCounters(labels: names.flatMap { ["\($0)|allow", "\($0)|deny", "\($0)|audit"] }))
    }

    public func alternateEndpoint(cluster: Int32, failed: Int32, history: inout RetryHistory) -> Int32 {
        history.endpoints.append(failed)
        guard cluster >= 0, !snapshot.clusters[Int(cluster)].originalDestination else { return failed }
        guard failed >= 0 else { return nextEndpoint(cluster) ?? -1 }  // renumbered away by a reload: a fresh pick
        let members = snapshot.clusters[Int(cluster)].endpoints
        guard members.count > 1 else { return failed }
        let checkHealth = !health.isEmpty && snapshot.clusters[Int(cluster)].outlierDetection != nil
        // Istio gives consistent-hash routes no previous-hosts predicate: the retry stays on the hashed endpoint
        // unless it was ejected meanwhile.
        if case .consistentHash = snapshot.clusters[Int(cluster)].loadBalancer, !(checkHealth && isEjected(failed)) {
            return failed
        }
        if history.remoteLocalities, let tiers = snapshot.clusters[Int(cluster)].tiers {
            if let tier = tiers.firstIndex(where: { $0.contains(failed) }) { history.tiersTried |= 1 << tier }
            // The try about to be made is number endpoints.count + 1: at 3, 5, ... (update frequency 2) the tiers
            // tried so far are left out.
            if history.endpoints.count % 2 == 0 { history.tiersExcluded = history.tiersTried }
        }
        // Envoy's previous-hosts predicate: up to 5 picks by the balancer for one not tried yet.
        var pick: Int32? = nil
        for _ in 0..<5 {
            pick = nextEndpoint(cluster, excludingTiers: history.tiersExcluded)
            if let pick, !history.endpoints.contains(pick) { return pick }
        }
        // Then, as Envoy, the balancer's last pick when tiers apply (a retry never leaves its tier by itself);
        // otherwise the next endpoint round-robin not tried (nor ejected), else the last pick.
        if snapshot.clusters[Int(cluster)].tiers != nil { return pick ?? failed }
        let start = roundRobin[Int(cluster)]
        for offset in 0..<UInt32(members.count) {
            let candidate = members[Int((start &+ offset) % UInt32(members.count))]
            if !history.endpoints.contains(candidate) && !(checkHealth && isEjected(candidate)) {
                roundRobin[Int(cluster)] = start &+ offset &+ 1
                return candidate
            }
        }
        return pick ?? failed
    }

    public func isReachable(_ destination: Destination) -> Bool {
        guard destination.cluster >= 0 else { return true }
        if let backends = snapshot.tcpRoutes[tcpRouteKey(destination.virtualHost, destination.port)] {
            return backends.clusters.contains { $0.cluster >= 0 && $0.weight > 0 && reaches($0.cluster, destination) }
        }
        return reaches(destination.cluster, destination)
    }

    /// Whether `cluster` has an endpoint for a request through `destination`.
    private func reaches(_ cluster: Int32, _ destination: Destination) -> Bool {
        snapshot.clusters[Int(cluster)].originalDestination
            ? originalEndpoint(cluster, destination) != nil : !snapshot.clusters[Int(cluster)].endpoints.isEmpty
    }

    /// A passthrough cluster's endpoint for a request through `destination`: the one at the address its tunnel
    /// named (a subset's may be a variant with its own TLS), when the cluster has it; nil otherwise (the plaintext
    /// listener, or a route from another service's address), so that passthrough never reaches an address no
    /// tunnel asked for.
    private func originalEndpoint(_ cluster: Int32, _ destination: Destination?) -> Int32? {
        guard let original = destination?.originalEndpoint, original >= 0 else { return nil }
        let address = snapshot.endpoints[Int(original)]
        return snapshot.clusters[Int(cluster)].endpoints.first { snapshot.endpoints[Int($0)] == address }
    }

    public func endpoints(inCluster cluster: Int32) -> [Int32] {
        cluster >= 0 ? snapshot.clusters[Int(cluster)].endpoints : []
    }

    public func pickEndpoint(inCluster cluster: Int32) -> Int32? {
        cluster >= 0 && !snapshot.clusters[Int(cluster)].originalDestination ? nextEndpoint(cluster) : nil
    }

    public func pickEndpoint(for destination: Destination) -> Int32? {
        guard destination.cluster >= 0 else { return destination.endpoint }
        var cluster = destination.cluster
        if let backends = snapshot.tcpRoutes[tcpRouteKey(destination.virtualHost, destination.port)] {
            cluster = backends.clusters[pick(backends)].cluster
            guard cluster >= 0 else { return nil }
        }
        return snapshot.clusters[Int(cluster)].originalDestination ? originalEndpoint(cluster, destination) : nextEndpoint(cluster)
    }

    /// An endpoint of the cluster by its load balancer, passing over ejected endpoints (all of them count while
    /// fewer than `minHealthPercent` are healthy: Envoy's panic mode); nil when none is ready or all are
    /// ejected. `hash` is the request's key for a consistent hash. With locality tiers, the balancer picks
    /// within a tier chosen by the tiers' health (`excludingTiers`: bits of tiers to leave out, for
    /// `retryRemoteLocalities`).
    @inline(__always)
    private func nextEndpoint(_ cluster: Int32, hash: UInt64? = nil, excludingTiers: UInt8 = 0) -> Int32? {
        var members = snapshot.clusters[Int(cluster)].endpoints
        guard !members.isEmpty else { return nil }
        var checkHealth = !health.isEmpty && snapshot.clusters[Int(cluster)].outlierDetection != nil
        if checkHealth, let detection = snapshot.clusters[Int(cluster)].outlierDetection, detection.minHealthPercent > 0,
            detection.panics(healthy: members.count { !isEjected($0) }, size: members.count)
        {
            checkHealth = false  // panic: ejections are ignored
        }
        if let tiers = snapshot.clusters[Int(cluster)].tiers {
            members = tiers[tier(tiers, checkHealth: checkHealth, excluding: excludingTiers)]
        }
        if members.count > 1 {
            switch snapshot.clusters[Int(cluster)].loadBalancer {
            case .roundRobin:
                break
            case .leastRequest:
                // Power of two choices: two distinct random members, the one with fewer requests in flight.
                let r = random.next()
                let first = Int(UInt32(truncatingIfNeeded: r) % UInt32(members.count))
                let second = (first + 1 + Int(UInt32(truncatingIfNeeded: r >> 32) % UInt32(members.count - 1))) % members.count
                var (a, b) = (members[first], members[second])
                if requestsInFlight(b) < requestsInFlight(a) { swap(&a, &b) }
                if !checkHealth || !isEjected(a) { return a }
                if !isEjected(b) { return b }
            case .random:
                let pick = members[Int(random.next() % UInt64(members.count))]
                if !checkHealth || !isEjected(pick) { return pick }
            case .consistentHash:
                if let hash, let ring = snapshot.clusters[Int(cluster)].ring {
                    for skip in 0..<members.count {
                        let pick = members[Int(ring.member(for: hash, skip: skip))]
                        if !checkHealth || !isEjected(pick) { return pick }
                    }
                }
            }
        }
        let position = roundRobin[Int(cluster)]
        roundRobin[Int(cluster)] = position &+ 1
        let pick = members[Int(position % UInt32(members.count))]
        guard checkHealth, isEjected(pick) else { return pick }
        for offset in 1..<max(members.count, 1) {
            let candidate = members[Int((position &+ UInt32(offset)) % UInt32(members.count))]
            if !isEjected(candidate) { return candidate }
        }
        return nil  // every endpoint ejected and no panic: no healthy upstream
    }

    /// Envoy's priority load with its overprovisioning factor of 1.4: each tier, nearest first, takes
    /// min(100 %, 1.4 × its healthy share) of the requests until they are all placed (spread in proportion when
    /// the tiers together fall short). Left-out tiers count as unhealthy; if that leaves none, none is left out;
    /// if no tier is healthy, the nearest takes all.
    private func tier(_ tiers: [[Int32]], checkHealth: Bool, excluding: UInt8) -> Int {
        if !checkHealth && excluding & 1 == 0 { return 0 }  // the nearest tier is whole: it takes everything
        return withUnsafeTemporaryAllocation(of: Int.self, capacity: tiers.count) { health in
            var total = 0
            for (i, members) in tiers.enumerated() {
                let healthy = excluding & (1 << i) != 0 ? 0 : checkHealth ? members.count { !isEjected($0) } : members.count
                health[i] = min(100, 140 * healthy / members.count)
                total += health[i]
            }
            guard total > 0 else { return excluding != 0 ? tier(tiers, checkHealth: checkHealth, excluding: 0) : 0 }
            var draw = Int(random.next() % UInt64(min(total, 100)))
            for i in 0..<tiers.count {
                if draw < health[i] { return i }
                draw -= health[i]
            }
            return 0
        }
    }

    /// The consistent-hash key of a request for a cluster that hashes, nil otherwise or when the request has
    /// no such key (then it is balanced round-robin, as Envoy spreads requests without a key).
    private func requestHash(_ cluster: Int32, _ head: RequestHead, _ bytes: UnsafeRawBufferPointer, _ peer: PeerFacts) -> UInt64? {
        guard case .consistentHash(let key) = snapshot.clusters[Int(cluster)].loadBalancer else { return nil }
        switch key {
        case .sourceIP:
            return peer.sourceIPBytes.map { HashRing.hash($0) }
        case .header(let name):
            return head.firstHeader(name, in: bytes).map { HashRing.hash($0) }
        case .queryParameter(let name):
            return head.queryParameter(name, in: bytes).map { HashRing.hash($0) }
        }
    }

    private func isEjected(_ endpoint: Int32) -> Bool { (health[endpoint]?.ejectedUntil ?? 0) > now() }

    public func limits(cluster: Int32) -> ClusterLimits? {
        cluster >= 0 ? snapshot.clusters[Int(cluster)].limits : nil
    }

    public func reportAttempt(endpoint: Int32, cluster: Int32, result: OutlierDetection.Result) {
        guard cluster >= 0, let detection = snapshot.clusters[Int(cluster)].outlierDetection else { return }
        var state = health[endpoint] ?? EndpointHealth()
        let trips = detection.record(result, fiveXX: &state.fiveXX, gateway: &state.gateway)
        if trips && !isEjected(endpoint) {
            let members = snapshot.clusters[Int(cluster)].endpoints
            let ejected = members.filter(isEjected).count
            if detection.mayEject(ejected: ejected, size: members.count) {
                let back = state.ejectedUntil > 0 ? Duration.milliseconds(Int64((now() - state.ejectedUntil) * 1000)) : .zero
                state.ejections = detection.decayed(state.ejections, healthyFor: back) + 1
                let (seconds, attoseconds) = detection.ejectionTime(state.ejections).components
                state.ejectedUntil = now() + Double(seconds) + Double(attoseconds) / 1e18
                state.fiveXX = 0
                state.gateway = 0
                counters.outlierEjections.increment()
            }
        }
        health[endpoint] = state
    }

    /// Envoy's body for an injected abort.
    private static let abortBody = Array("fault filter abort".utf8)

    /// True for `percent` % of calls (Istio percentages have a resolution of 0.0001 %).
    private func roll(_ percent: Double) -> Bool {
        percent >= 100 || Double(random.next() % 1_000_000) < percent * 10_000
    }

    /// Weighted random choice (an index into `backends.clusters`); weight-0 entries are never chosen.
    @inline(__always)
    private func pick(_ backends: BackendSet) -> Int {
        if backends.clusters.count == 1 { return 0 }
        return backends.entry(at: UInt32(truncatingIfNeeded: random.next() % UInt64(backends.totalWeight)))
    }
}
