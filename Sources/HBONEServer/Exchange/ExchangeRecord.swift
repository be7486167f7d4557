import Filters
import WaypointCore

/// What one request and its tries come to, whatever carried it (HTTP/1.1 or h2c): the decision's names for
/// telemetry, the tries' bookkeeping, and what went each way. Both pipelines fill one, and `ProxyServer.report`
/// turns it into the counters, outlier detection, Istio's metrics, the span and the access-log line, once, so
/// that every transport reports the same way.
///
/// Thread: its exchange's. Ownership: a value inside its exchange; a new request starts with one assignment.
struct ExchangeRecord {
    /// When the request head was complete (the loop's clock).
    var start = 0.0
    /// The status sent downstream; 0 while none was.
    var status = 0
    /// Envoy's response flags (`NR`, `UH`, `RBAC`, `DR`, `UF`, `UC`, `UT`, `UO`, `DC`), `-` when none apply.
    var flags: StaticString = "-"
    /// Request bytes taken from the client and response bytes sent to it (HTTP/1.1: heads included; h2c: bodies).
    var bytesReceived = 0
    var bytesSent = 0
    /// The matched route's name, when the request was routed.
    var route: String?
    /// The deciding AuthorizationPolicy and the destination service, as routing named them.
    var labels = RouteLabels()
    /// A gRPC call (`content-type: application/grpc…`): Istio's metrics say so, and its status counts.
    var grpc = false
    /// Where the last try went (the upstream's address text for the log and span; the endpoint and its cluster
    /// for outlier detection and retries; -1 before routing).
    var upstreamAddress: String?
    var endpoint: Int32 = -1
    var cluster: Int32 = -1
    /// The snapshot whose numbering `endpoint` and `cluster` are in: a reload may come while the exchange waits,
    /// so they are renumbered (`renumber(in:)`) before each use.
    var generation: UInt64 = 0
    /// The try under way or last made: 1 until a retry.
    var attempt = 1
    /// The request went upstream: it is counted in the retry budget's base and the backend's requests in flight
    /// until `RetryBudget.leave`.
    var inFlight = false
    /// Why a failure that called for a retry was answered as is.
    var retryNote: StaticString?
    /// The span, when the request is traced.
    var span: Span?

    /// Tries made upstream, for the access log (0: answered here without one).
    var attempts: Int { inFlight || attempt > 1 ? attempt : 0 }

    /// Brings `endpoint` and `cluster` into the numbering of `router`'s snapshot (-1 for what a reload took away).
    mutating func renumber(in router: RequestRouter) {
        router.renumber(cluster: &cluster, endpoint: &endpoint, since: &generation)
    }
}

extension ProxyServer {
    /// The end of one request, reported the same way for every transport: the response counters, a retry that
    /// succeeded, the last try's result for outlier detection (a gRPC status counts as its HTTP equivalent, as
    /// in Envoy), Istio's request metrics, the span and the access-log line. `grpc`: the call's status, when
    /// the answer carried one.
    func report(
        _ record: ExchangeRecord, grpc: GRPCStatus?, protocol: StaticString, peer: PeerFacts, principal: Int32,
        log fields: RequestLogFields?
    ) {
        // The last try's endpoint and cluster in the current numbering (the record itself is not copied).
        var (endpoint, cluster, generation) = (record.endpoint, record.cluster, record.generation)
        if generation != routingGeneration { router.renumber(cluster: &cluster, endpoint: &endpoint, since: &generation) }
        let status = record.status
        if status > 0 {
            let outcome = grpc.map { OutlierDetection.httpStatus(forGRPC: $0.code) } ?? status
            if record.inFlight { router.reportAttempt(endpoint: endpoint, cluster: cluster, result: .status(outcome)) }
            if record.attempt > 1 && outcome >= 200 && outcome < 500 {
                counters.retriesSucceeded.increment()
                counters.istio.recordRetry(service: record.labels.service, .succeeded)
            }
            counters.countResponse(status)
            counters.istio.recordRequest(
                principal: principal, service: record.labels.service,
                destination: upstreams.pool(endpoint)?.destinationWorkload ?? -1,
                grpc: record.grpc, grpcStatus: grpc?.code ?? -1,
                mutualTLS: peer.identity != nil, status: status, flags: record.flags, durationMs: (loop.now - record.start) * 1000,
                requestBytes: record.bytesReceived, responseBytes: record.bytesSent)
        }
        if let span = record.span, let tracer = settings.tracer {
            span.end = loop.now
            span.status = status
            if let upstream = record.upstreamAddress { span.attributes.append(("upstream_address", upstream)) }
            tracer.submit(span)
        }
        guard let accessLog else { return }
        accessLog.record(
            AccessLog.Entry(
                startTime: record.start, duration: loop.now - record.start, request: fields ?? RequestLogFields(), protocol: `protocol`,
                client: peer.sourceAddress, principal: peer.identity?.principal, status: status, flags: record.flags,
                bytesReceived: record.bytesReceived, bytesSent: record.bytesSent, upstream: record.upstreamAddress, route: record.route,
                policy: record.labels.policy, attempts: record.attempts, retryNote: record.retryNote, grpc: grpc))
    }

    /// Decides whether the request is traced (its `traceparent`'s sampled flag, else the sample rate) and, if so,
    /// opens its span in the record; only then are the request's `method`, `authority` and `target` read (only
    /// traced requests allocate for it).
    func startSpan(
        _ record: inout ExchangeRecord, _ tracer: SpanExporter, traceparent: UnsafeRawBufferPointer, protocol: String,
        peer: PeerFacts, request: () -> (method: String, authority: String, target: String)
    ) {
        guard let context = TraceContext.decide(traceparent: traceparent, sampleRate: tracer.sampleRate, random: &random) else { return }
        let (method, authority, target) = request()
        var attributes = [("http.method", method), ("http.url", "http://" + authority + target), ("http.protocol", `protocol`)]
        if let principal = peer.identity?.principal { attributes.append(("peer.principal", "spiffe://" + principal)) }
        if let route = record.route { attributes.append(("route_name", route)) }
        record.span = Span(context: context, name: authority + "/*", start: record.start, attributes: attributes)
    }
}

/// A gRPC call's outcome as its answer said it (`grpc-status`, `grpc-message`): Istio's `grpc_response_status`
/// and the access log's `grpc_status` and `grpc_message`.
struct GRPCStatus {
    var code: Int
    /// As sent (percent-encoded, gRPC's wire form).
    var message: String?
}
