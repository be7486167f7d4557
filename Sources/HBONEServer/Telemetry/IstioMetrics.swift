import Synchronization
import WaypointCore

/// Istio's standard metrics for one worker: `istio_requests_total`, `istio_request_duration_milliseconds`,
/// `istio_request_bytes`, `istio_response_bytes` per request, and `istio_tcp_*` per byte-stream tunnel, each
/// series labelled as Istio labels them (the source workload from the tunnel's baggage and its principal, the
/// destination workload from the endpoint's Pod, the destination service, protocol, response code and flags,
/// connection security policy).
///
/// The worker finds a request's series with one dictionary lookup on a key of small integers (sources,
/// destination workloads and services are interned when a connection starts or a config is swapped in, never
/// per request) and counts
/// with relaxed atomics; the scrape reads the published series from another thread. At most `capacity`
/// series per worker: later label sets are counted in one overflow series (labels `overflow`).
///
/// Thread: `record…` and `intern…` on the worker's loop thread; `samples()` from any. Ownership: the worker's
/// `WorkerCounters`.
public final class IstioMetrics: @unchecked Sendable {
    // SAFETY: series keys are written once, before `published` is raised (release) and read only below it
    // (acquire); counts are atomics; the name tables are behind a mutex (interning is per connection, not per
    // request). The key index is touched by the worker thread only.

    /// What distinguishes a series (interned names as indices into `names`).
    struct Key: Hashable {
        /// The caller (principal and workload labels), -1 unknown.
        var principal: Int32
        var service: Int32
        /// The destination workload (the endpoint's Pod), -1 unknown.
        var destination: Int32 = -1
        var code: UInt16
        var flags: UInt8
        /// 0 http, 1 grpc, 2 tcp.
        var kind: UInt8
        /// The gRPC status of a gRPC call's answer, -1 when there was none.
        var grpcStatus: Int8 = -1
        var mutualTLS: Bool
    }

    /// Istio's default buckets for request durations (ms) and sizes (bytes).
    public static let durationBuckets: [Double] = [
        0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000,
        60000, 300000, 600000, 1800000, 3600000,
    ]
    public static let sizeBuckets: [Double] = [1, 10, 100, 1000, 10000, 100000, 1000000, 10000000, 100000000, 1000000000]
    /// Per series: requests, duration buckets + sum (µs), request bytes buckets + sum, response bytes buckets +
    /// sum; for TCP series, opened, closed, received, sent in the first four.
    private static let durationBase = 1
    private static let requestBase = durationBase + durationBuckets.count + 1
    private static let responseBase = requestBase + sizeBuckets.count + 1
    private static let stride = responseBase + sizeBuckets.count + 1

    public let capacity: Int
    private let keys: UnsafeMutablePointer<Key>
    private let counts: UnsafeMutablePointer<Atomic<Int>>
    private let published = Atomic<Int>(0)
    private var index: [Key: Int32] = [:]
    /// Interned label values: sources (principal and workload), services (fqdn, name, namespace) and destination
    /// workloads.
    private let names = Mutex<Names>(Names())
    struct Names {
        var sources: [(principal: String?, workload: WorkloadLabels)] = []
        var services: [(String, String, String)] = []
        var destinations: [WorkloadLabels] = []
    }
    /// A caller as the tunnel names it: its principal and its `baggage` text.
    private struct SourceKey: Hashable {
        var principal: String?
        var baggage: String?
    }
    private var sourceIDs: [SourceKey: Int32] = [:]
    private var destinationIDs: [WorkloadLabels: Int32] = [:]
    private var serviceIDs: [String: Int32] = [:]
    public let overflowed = Atomic<Int>(0)
    /// Per interned service (up to `maxServices`): retries started, exchanges that succeeded after a retry, and
    /// retries refused by the budget.
    public static let maxServices = 1024
    private let retryCounts: UnsafeMutablePointer<Atomic<Int>>

    /// `capacity` series (plus the overflow one); memory is touched only as series appear.
    public init(capacity: Int = 2000) {
        self.capacity = capacity
        keys = .allocate(capacity: capacity + 1)
        counts = .allocate(capacity: (capacity + 1) * Self.stride)
        // The overflow series is slot `capacity`, ready from the start.
        (keys + capacity).initialize(to: Key(principal: -1, service: -1, code: 0, flags: 0, kind: 0, mutualTLS: false))
        for i in 0..<Self.stride { (counts + capacity * Self.stride + i).initialize(to: Atomic(0)) }
        retryCounts = .allocate(capacity: Self.maxServices * 3)
        for i in 0..<Self.maxServices * 3 { (retryCounts + i).initialize(to: Atomic(0)) }
    }

    deinit {
        let used = published.load(ordering: .acquiring)
        keys.deinitialize(count: used)
        (keys + capacity).deinitialize(count: 1)
        counts.deinitialize(count: used * Self.stride)
        (counts + capacity * Self.stride).deinitialize(count: Self.stride)
        keys.deallocate()
        counts.deallocate()
        retryCounts.deinitialize(count: Self.maxServices * 3)
        retryCounts.deallocate()
    }

    /// What became of a retry, counted per destination service.
    enum RetryEvent: Int { case started = 0, succeeded = 1, budgetExhausted = 2 }

    /// Counts a retry event for `service` (an interned id; -1 and ids past `maxServices` are not counted here).
    func recordRetry(service: Int32, _ event: RetryEvent) {
        guard service >= 0 && Int(service) < Self.maxServices else { return }
        retryCounts[Int(service) * 3 + event.rawValue].increment()
    }

    // MARK: Worker side

    /// The id of a caller: its principal (`cluster.local/ns/NS/sa/SA`) and the workload its tunnel's `baggage`
    /// names; -1 when neither is known (plaintext).
    func intern(source peer: PeerFacts) -> Int32 {
        guard peer.identity != nil || peer.baggage != nil else { return -1 }
        let key = SourceKey(principal: peer.identity?.principal, baggage: peer.baggage)
        if let id = sourceIDs[key] { return id }
        let workload = WorkloadLabels(baggage: peer.baggage, identityNamespace: peer.identity?.namespace)
        let id = names.withLock { tables -> Int32 in
            tables.sources.append((peer.identity?.principal, workload))
            return Int32(tables.sources.count - 1)
        }
        sourceIDs[key] = id
        return id
    }

    /// The id of a destination workload (an endpoint's Pod), interned when a config is swapped in.
    public func intern(destination workload: WorkloadLabels) -> Int32 {
        if let id = destinationIDs[workload] { return id }
        let id = names.withLock { tables -> Int32 in
            tables.destinations.append(workload)
            return Int32(tables.destinations.count - 1)
        }
        destinationIDs[workload] = id
        return id
    }

    /// The id of a destination service (its fqdn, name and namespace).
    public func intern(service fqdn: String, name: String, namespace: String) -> Int32 {
        if let id = serviceIDs[fqdn] { return id }
        let id = names.withLock { tables -> Int32 in
            tables.services.append((fqdn, name, namespace))
            return Int32(tables.services.count - 1)
        }
        serviceIDs[fqdn] = id
        return id
    }

    /// One HTTP request: status, Envoy-style response flags, duration and body sizes.
    func recordRequest(
        principal: Int32, service: Int32, destination: Int32, grpc: Bool, grpcStatus: Int, mutualTLS: Bool, status: Int,
        flags: StaticString,
        durationMs: Double, requestBytes: Int, responseBytes: Int
    ) {
        let base =
            slot(
                Key(
                    principal: principal, service: service, destination: destination, code: UInt16(clamping: status),
                    flags: Self.flagIndex(flags),
                    kind: grpc ? 1 : 0, grpcStatus: Int8(clamping: grpcStatus), mutualTLS: mutualTLS)) * Self.stride
        counts[base].increment()
        Self.observe(durationMs, Self.durationBuckets, counts + base + Self.durationBase, scale: 1000)
        Self.observe(Double(requestBytes), Self.sizeBuckets, counts + base + Self.requestBase, scale: 1)
        Self.observe(Double(responseBytes), Self.sizeBuckets, counts + base + Self.responseBase, scale: 1)
    }

    /// A byte-stream tunnel opened (`closed` false) or closed with its byte counts.
    func recordTCP(principal: Int32, service: Int32, mutualTLS: Bool, closed: Bool, received: Int = 0, sent: Int = 0) {
        let base = slot(Key(principal: principal, service: service, code: 0, flags: 0, kind: 2, mutualTLS: mutualTLS)) * Self.stride
        if closed {
            counts[base + 1].increment()
            counts[base + 2].increment(by: received)
            counts[base + 3].increment(by: sent)
        } else {
            counts[base].increment()
        }
    }

    /// The series for `key`, created on first use; the overflow series once `capacity` are in use.
    @inline(__always)
    private func slot(_ key: Key) -> Int {
        // Consecutive requests mostly share their labels: compare with the last key before hashing.
        if key == lastKey { return lastSlot }
        let slot = findSlot(key)
        if slot != capacity {  // the overflow series counts each request it takes
            lastKey = key
            lastSlot = slot
        }
        return slot
    }

    private var lastKey = Key(principal: -2, service: -2, code: 0, flags: 0, kind: 0, mutualTLS: false)
    private var lastSlot = 0

    private func findSlot(_ key: Key) -> Int {
        if let found = index[key] { return Int(found) }
        let used = published.load(ordering: .relaxed)
        guard used < capacity else {
            overflowed.increment()
            return capacity
        }
        (keys + used).initialize(to: key)
        for i in 0..<Self.stride { (counts + used * Self.stride + i).initialize(to: Atomic(0)) }
        published.store(used + 1, ordering: .releasing)
        index[key] = Int32(used)
        return used
    }

    /// Cumulative histogram: every bucket at or above the value, plus the sum (scaled to an integer).
    @inline(__always)
    private static func observe(_ value: Double, _ buckets: [Double], _ cells: UnsafeMutablePointer<Atomic<Int>>, scale: Double) {
        var i = buckets.count
        while i > 0 && value <= buckets[i - 1] { i -= 1 }
        // `i` is the first bucket the value fits in; cumulative counts are summed at scrape, so count it once here.
        if i < buckets.count { cells[i].increment() }
        cells[buckets.count].increment(by: Int(value * scale))
    }

    /// Envoy's response flags this proxy sets (the access log's `response_flags`).
    static let flagNames: [StaticString] = ["-", "NR", "UH", "UF", "RBAC", "DR", "UT", "UC", "DC", "UO"]
    @inline(__always)
    static func flagIndex(_ flags: StaticString) -> UInt8 {
        let wanted = UnsafeBufferPointer(start: flags.utf8Start, count: flags.utf8CodeUnitCount)
        for (i, name) in flagNames.enumerated()
        where UnsafeBufferPointer(start: name.utf8Start, count: name.utf8CodeUnitCount).elementsEqual(wanted) {
            return UInt8(i)
        }
        return 0
    }

    // MARK: Scrape side

    /// One series as the scrape renders it.
    struct Series {
        /// The labels of every family but `istio_requests_total`, whose `requestLabels` add `grpc_response_status`.
        var labels: [(String, String)]
        var requestLabels: [(String, String)]
        var kind: UInt8
        /// Requests; duration, request size and response size as (per-bucket counts, sum); or TCP counts.
        var requests: Int
        var duration: ([Int], Double)
        var requestSize: ([Int], Double)
        var responseSize: ([Int], Double)
        var tcp: (opened: Int, closed: Int, received: Int, sent: Int)
    }

    /// Every published series (and the overflow one when it was used), with Istio's label names and values.
    func samples() -> [Series] {
        let used = published.load(ordering: .acquiring)
        let tables = names.withLock { $0 }
        var result: [Series] = []
        for slot in Array(0..<used) + [capacity] {
            let base = slot * Self.stride
            let key = keys[slot]
            func cells(_ offset: Int, _ n: Int) -> ([Int], Double) {
                ((0..<n).map { counts[base + offset + $0].value }, Double(counts[base + offset + n].value))
            }
            let duration = cells(Self.durationBase, Self.durationBuckets.count)
            let requestSize = cells(Self.requestBase, Self.sizeBuckets.count)
            let responseSize = cells(Self.responseBase, Self.sizeBuckets.count)
            let requests = counts[base].value
            let tcp = (counts[base].value, counts[base + 1].value, counts[base + 2].value, counts[base + 3].value)
            if slot == capacity && requests == 0 && tcp.1 == 0 { continue }
            result.append(
                Series(
                    labels: labels(key, tables, overflow: slot == capacity, grpcStatus: false),
                    requestLabels: labels(key, tables, overflow: slot == capacity, grpcStatus: true), kind: key.kind, requests: requests,
                    duration: (duration.0, duration.1 / 1000), requestSize: requestSize,
                    responseSize: responseSize, tcp: tcp))
        }
        return result
    }

    /// Istio's labels, in Istio's order.
    private func labels(_ key: Key, _ tables: Names, overflow: Bool, grpcStatus: Bool) -> [(String, String)] {
        if overflow {
            return [
                "source_workload", "source_canonical_service", "source_canonical_revision", "source_workload_namespace",
                "source_principal", "source_app", "source_version", "source_cluster", "destination_workload",
                "destination_workload_namespace", "destination_app", "destination_version", "destination_service",
                "destination_canonical_service", "destination_canonical_revision", "destination_service_name",
                "destination_service_namespace", "request_protocol", "response_code", grpcStatus ? "grpc_response_status" : nil,
                "response_flags", "connection_security_policy",
            ].compactMap { $0.map { ($0, "overflow") } }
        }
        let source = key.principal >= 0 ? tables.sources[Int(key.principal)] : (principal: nil, workload: WorkloadLabels())
        let destination = key.destination >= 0 ? tables.destinations[Int(key.destination)] : WorkloadLabels()
        let service = key.service >= 0 ? tables.services[Int(key.service)] : ("unknown", "unknown", "unknown")
        var labels: [(String, String)] = [
            ("source_workload", source.workload.workload), ("source_canonical_service", source.workload.canonicalService),
            ("source_canonical_revision", source.workload.canonicalRevision),
            ("source_workload_namespace", source.workload.namespace),
            ("source_principal", source.principal.map { "spiffe://" + $0 } ?? "unknown"), ("source_app", source.workload.app),
            ("source_version", source.workload.version), ("source_cluster", source.workload.cluster),
            ("destination_workload", destination.workload), ("destination_workload_namespace", destination.namespace),
            ("destination_app", destination.app), ("destination_version", destination.version),
            ("destination_service", service.0), ("destination_canonical_service", destination.canonicalService),
            ("destination_canonical_revision", destination.canonicalRevision), ("destination_service_name", service.1),
            ("destination_service_namespace", service.2), ("request_protocol", ["http", "grpc", "tcp"][Int(key.kind)]),
        ]
        if key.kind != 2 {
            labels.append(("response_code", String(key.code)))
            // As Istio: on istio_requests_total only, empty for a request that is not a gRPC call or got no status.
            if grpcStatus { labels.append(("grpc_response_status", key.grpcStatus >= 0 ? String(key.grpcStatus) : "")) }
            labels.append(("response_flags", Self.flagNames[Int(key.flags)].description))
        }
        labels.append(("connection_security_policy", key.mutualTLS ? "mutual_tls" : "none"))
        return labels
    }
}

extension IstioMetrics {
    /// The Prometheus text of every worker's series, series with the same labels summed.
    public static func prometheusText(_ workers: [IstioMetrics]) -> String {
        var merged: [String: Series] = [:]
        var order: [String] = []
        // istio_requests_total is split further, by grpc_response_status.
        var requestCounts: [String: Int] = [:]
        var requestOrder: [String] = []
        for worker in workers {
            for series in worker.samples() {
                if series.kind != 2 {
                    let key = labelText([("reporter", "waypoint")] + series.requestLabels)
                    if requestCounts[key] == nil { requestOrder.append(key) }
                    requestCounts[key, default: 0] += series.requests
                }
                let key = labelText([("reporter", "waypoint")] + series.labels)
                if var existing = merged[key] {
                    existing.requests += series.requests
                    existing.duration = add(existing.duration, series.duration)
                    existing.requestSize = add(existing.requestSize, series.requestSize)
                    existing.responseSize = add(existing.responseSize, series.responseSize)
                    existing.tcp = (
                        existing.tcp.opened + series.tcp.opened, existing.tcp.closed + series.tcp.closed,
                        existing.tcp.received + series.tcp.received, existing.tcp.sent + series.tcp.sent
                    )
                    merged[key] = existing
                } else {
                    merged[key] = series
                    order.append(key)
                }
            }
        }
        let http = order.filter { merged[$0]!.kind != 2 }
        let tcp = order.filter { merged[$0]!.kind == 2 }
        var text = ""
        func family(_ name: String, _ type: String, _ help: String, _ keys: [String], _ body: (String, Series) -> Void) {
            text += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n"
            for key in keys { body(key, merged[key]!) }
        }
        text += "# HELP istio_requests_total Requests, by Istio's standard labels.\n# TYPE istio_requests_total counter\n"
        for key in requestOrder { text += "istio_requests_total{\(key)} \(requestCounts[key]!)\n" }
        for (name, help, buckets, pick) in [
            ("istio_request_duration_milliseconds", "Request duration in milliseconds.", durationBuckets, { (s: Series) in s.duration }),
            ("istio_request_bytes", "Request body size in bytes.", sizeBuckets, { (s: Series) in s.requestSize }),
            ("istio_response_bytes", "Response body size in bytes.", sizeBuckets, { (s: Series) in s.responseSize }),
        ] as [(String, String, [Double], (Series) -> ([Int], Double))] {
            family(name, "histogram", help, http) { key, s in
                let (counts, sum) = pick(s)
                var cumulative = 0
                for (bound, count) in zip(buckets, counts) {
                    cumulative += count
                    text += "\(name)_bucket{\(key),le=\"\(format(bound))\"} \(cumulative)\n"
                }
                text += "\(name)_bucket{\(key),le=\"+Inf\"} \(s.requests)\n"
                text += "\(name)_sum{\(key)} \(format(sum))\n\(name)_count{\(key)} \(s.requests)\n"
            }
        }
        for (name, help, pick) in [
            ("istio_tcp_connections_opened_total", "Byte-stream tunnels opened.", { (s: Series) in s.tcp.opened }),
            ("istio_tcp_connections_closed_total", "Byte-stream tunnels closed.", { (s: Series) in s.tcp.closed }),
            (
                "istio_tcp_received_bytes_total", "Bytes received from callers through byte-stream tunnels.",
                { (s: Series) in s.tcp.received }
            ),
            ("istio_tcp_sent_bytes_total", "Bytes sent to callers through byte-stream tunnels.", { (s: Series) in s.tcp.sent }),
        ] as [(String, String, (Series) -> Int)] {
            family(name, "counter", help, tcp) { key, s in text += "\(name){\(key)} \(pick(s))\n" }
        }
        // Retries per destination service, summed over workers by service name.
        var retries: [String: [Int]] = [:]
        for worker in workers {
            let services = worker.names.withLock { $0.services }
            for (id, service) in services.enumerated() where id < maxServices {
                let counts = (0..<3).map { worker.retryCounts[id * 3 + $0].value }
                guard counts.contains(where: { $0 > 0 }) else { continue }
                retries[service.0, default: [0, 0, 0]] = zip(retries[service.0] ?? [0, 0, 0], counts).map(+)
            }
        }
        text += "# HELP waypoint_service_retries_total Retries by destination service, by what became of them.\n"
        text += "# TYPE waypoint_service_retries_total counter\n"
        for (service, counts) in retries.sorted(by: { $0.key < $1.key }) {
            for (result, count) in zip(["started", "succeeded", "budget_exhausted"], counts) {
                text += "waypoint_service_retries_total{\(labelText([("destination_service", service), ("result", result)]))} \(count)\n"
            }
        }
        let overflow = workers.reduce(0) { $0 + $1.overflowed.value }
        text += "# HELP waypoint_istio_series_overflow_total Requests counted in the overflow series (per-worker series cap reached).\n"
        text += "# TYPE waypoint_istio_series_overflow_total counter\nwaypoint_istio_series_overflow_total \(overflow)\n"
        return text
    }

    private static func add(_ a: ([Int], Double), _ b: ([Int], Double)) -> ([Int], Double) {
        (zip(a.0, b.0).map(+), a.1 + b.1)
    }

    private static func labelText(_ labels: [(String, String)]) -> String {
        labels.map { name, value in
            var escaped = ""
            for c in value {
                switch c {
                case "\\": escaped += "\\\\"
                case "\"": escaped += "\\\""
                case "\n": escaped += "\\n"
                default: escaped.append(c)
                }
            }
            return "\(name)=\"\(escaped)\""
        }.joined(separator: ",")
    }

    private static func format(_ value: Double) -> String {
        value == value.rounded() && abs(value) < 1e15 ? String(Int(value)) : String(value)
    }
}
