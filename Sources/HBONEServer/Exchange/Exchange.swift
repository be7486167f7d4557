import EventLoop
import Filters
import WaypointCore

/// One request's life, whatever carries it: the route decision, fault delays and waits for a connection, the
/// tries (retry state, per-try and route timeouts, backoff, the next endpoint), the local answers and their flags,
/// and one report when it ends. Transports (`DownstreamConnection` for HTTP/1.1, `H2CExchange` for h2c) move the
/// bytes and call in with what happened; every transport gets every feature from here, the same way.
///
/// Thread: its worker's loop thread only. Ownership: its transport (an HTTP/1.1 connection reuses one for each of
/// its requests, an h2c stream has its own); its timers die with it, so they never outlive what they act on.
final class Exchange {
    /// Where the request stands. A new request starts from `.idle` with one assignment. Trivial (no reference in
    /// any case), so that reading it costs no retain: the data plane asks it several times per request.
    enum State {
        /// No request.
        case idle
        /// The head is complete and being routed.
        case routing
        /// A CUSTOM policy's authorizer wants the request body (`includeRequestBodyInCheck`): it is buffered
        /// before the check goes out.
        case collectingBody
        /// A CUSTOM policy's external authorizer is asked; the decision's action waits for its answer.
        case authorizing
        /// A fault delay, after which the request is forwarded or (a fault abort) answered with `heldAnswer`.
        case delayed(then: AfterDelay)
        /// A connection of the backend under circuit breaking (`tcp.maxConnections`), up to the connect timeout.
        case waitingForConnection
        /// A try is out and no response head has arrived.
        case trying
        /// A try failed with this outcome; its retry waits out the backoff.
        case backoff(RetryPolicy.Outcome)
        /// The response head went downstream: no retry any more.
        case responding
        /// The response is complete, or the request was answered here.
        case complete
    }

    enum AfterDelay {
        case forward
        case answer
    }

    /// Set once, right after both exist (the transport owns the exchange).
    unowned(unsafe) var transport: (any ExchangeTransport)?
    private unowned(unsafe) let server: ProxyServer
    private let peer: PeerFacts
    /// The caller, interned for Istio's metrics.
    private let principal: Int32
    private let protocolName: StaticString
    private(set) var state = State.idle
    /// What the request and its tries come to, for telemetry.
    var record = ExchangeRecord()
    /// What the access log says about the request (nil when the log is off).
    let log: RequestLogFields?
    /// The matched route's header changes, retries and timeouts.
    private(set) var policy = ForwardPolicy.standard
    /// The backend's DestinationRule connection-pool settings.
    private(set) var limits: ClusterLimits?
    /// The route's retry policy, else the proxy's default (nil: no retries).
    private(set) var retryPolicy: RetryPolicy?
    /// The fault abort a fault delay holds back.
    private var heldAnswer: LocalAnswer?
    /// While an external authorizer is asked: the check, the decision's action, and the call in flight.
    private var checked: (check: ExternalCheck, action: RouteDecision.Action)?
    private var checkCall: ExternalCheckCall?
    /// All tries together: the route's timeout, or a shorter one the transport sets (a gRPC call's deadline).
    var requestTimeout: Duration?
    /// Where the tries went (retries avoid them).
    private var history = RetryHistory()
    /// Ends a fault delay, a wait for a connection or a retry's backoff.
    private var waitTimer: Timer?
    private var tryTimer: Timer?
    private var requestTimer: Timer?

    init(server: ProxyServer, peer: PeerFacts, principal: Int32, protocol: StaticString) {
        self.server = server
        self.peer = peer
        self.principal = principal
        protocolName = `protocol`
        log = server.accessLog != nil ? RequestLogFields() : nil
    }

    var isIdle: Bool {
        if case .idle = state { return true }
        return false
    }

    /// The request's head waits with its transport (a fault delay, a wait for a connection): nothing of it has
    /// gone upstream yet.
    var holdsRequest: Bool {
        switch state {
        case .collectingBody, .authorizing, .delayed, .waitingForConnection: return true
        default: return false
        }
    }

    /// The request body is wanted for an external check: the transport calls `bodyArrived()` as it comes.
    var collectsBody: Bool {
        if case .collectingBody = state { return true }
        return false
    }

    /// No try is out while one will be (a check, a delay, a wait for a connection, a retry's backoff): h2c keeps
    /// the request body meanwhile.
    var isWaiting: Bool {
        switch state {
        case .collectingBody, .authorizing, .delayed, .waitingForConnection, .backoff: return true
        default: return false
        }
    }

    /// A try is out or its response is streaming: the upstream's bytes are wanted.
    var isForwarding: Bool {
        switch state {
        case .trying, .responding: return true
        default: return false
        }
    }

    /// Something of the response went downstream (or all of it).
    var hasResponded: Bool {
        switch state {
        case .responding, .complete: return true
        default: return false
        }
    }

    var isComplete: Bool {
        if case .complete = state { return true }
        return false
    }

    // MARK: - Routing

    /// A request head is complete.
    func start() {
        state = .routing
        record.start = server.loop.now
    }

    /// Acts on the router's decision for the request: at once, or once its external check allows.
    func decide(_ decision: RouteDecision) {
        record.labels = decision.labels
        record.generation = server.routingGeneration  // the snapshot that just made the decision numbers its indices
        guard let check = decision.check else { return decide(decision.action) }
        checked = (check, decision.action)
        guard check.authorizer.bodyInCheck != nil else { return ask(check.request) }
        // The body has the authorizer's timeout to arrive (then 408, never a failed check: a slow body must not
        // get past a body-reading authorizer by `failOpen`).
        state = .collectingBody
        waitTimer.schedule(after: check.authorizer.timeout, creating: timer { $0.waitEnded() })
        bodyArrived()
    }

    /// More of the request body arrived (or it ended) while it is collected for the check; the transport calls it
    /// and carries on after it returns. Once the body ended or is longer than `maxRequestBytes`, the check goes
    /// out with it; a body too long for a whole-body check is refused with 413 (Envoy's buffer limit, whatever
    /// `failOpen` says).
    func bodyArrived() {
        guard case .collectingBody = state, let (check, _) = checked, let settings = check.authorizer.bodyInCheck,
            let transport
        else { return }
        let (body, extent) = transport.requestBody(upTo: settings.maxBytes)
        switch extent {
        case .more:
            return
        case .ended:
            ask(check.authorizer.addingBody(body, partial: false, to: check.request))
        case .exceeds where settings.allowPartial:
            ask(check.authorizer.addingBody(body, partial: true, to: check.request))
        case .exceeds:
            checked = nil
            answer(.respond(status: 413, body: Self.payloadTooLarge))
        }
    }

    static let payloadTooLarge = Array("Payload Too Large".utf8)
    static let bodyTimedOut = Array("request body timeout\n".utf8)

    /// Sends the check; the authorizer's timeout starts now, as Envoy's.
    private func ask(_ request: [UInt8]) {
        guard let (check, _) = checked else { return }
        state = .authorizing
        waitTimer?.cancel()
        guard let call = server.externalAuthorization.ask(check, request: request, for: self) else { return checkFinished(.failed) }
        checkCall = call
        waitTimer.schedule(after: check.authorizer.timeout, creating: timer { $0.waitEnded() })
    }

    /// The external authorizer answered (called by its call, never from inside `decide`).
    func checkAnswered(_ outcome: ExternalAuthorizer.Outcome) {
        guard case .authorizing = state else { return }
        checkCall = nil
        waitTimer?.cancel()
        checkFinished(outcome)
        transport?.exchangeProgressed()
    }

    /// Acts on a check's outcome as Envoy's ext_authz does: allowed, the action goes on with the authorizer's
    /// header changes; denied, the client gets the authorizer's answer (`UAEX`); failed, `failOpen` goes on and
    /// otherwise `statusOnError` answers.
    private func checkFinished(_ outcome: ExternalAuthorizer.Outcome) {
        guard let (check, action) = checked else { return }
        checked = nil
        let authorizer = check.authorizer
        func count(_ result: WorkerCounters.ExternalCheckResult) { server.counters.externalChecks.increment(result.rawValue) }
        switch outcome {
        case .allowed(let upstream, let downstream):
            count(.allowed)
            guard upstream != nil || downstream != nil, case .forward(let endpoint, let route, let cluster, let policy) = action else {
                return decide(action)
            }
            let changed = (upstream.map { policy.applying(first: $0) } ?? policy).addingHeaders(request: nil, response: downstream)
            decide(.forward(endpoint: endpoint, route: route, cluster: cluster, policy: changed))
        case .denied(let status, let headers, let body):
            count(.denied)
            record.flags = "UAEX"
            answer(.denied(status: status, headers: headers, body: body))
        case .failed where authorizer.failOpen:
            count(.failedAllowed)
            decide(action)
        case .failed:
            count(.failedDenied)
            record.flags = "UAEX"
            answer(.respond(status: authorizer.statusOnError, body: []))
        }
    }

    private func decide(_ action: RouteDecision.Action) {
        switch action {
        case .reply(let reply):
            answer(.reply(reply))
        case .redirect(let status, let location):
            answer(.redirect(status: status, location: location))
        case .respond(let status, let body, let delay):
            record.flags = "DR"
            guard let delay else { return answer(.respond(status: status, body: body)) }
            heldAnswer = .respond(status: status, body: body)
            wait(.delayed(then: .answer), for: delay)
        case .forward(let endpoint, let route, let cluster, let policy):
            record.route = route
            record.cluster = cluster
            record.endpoint = endpoint
            self.policy = policy
            renumber()  // an external check may have waited across a reload
            requestTimeout = policy.requestTimeout
            limits = server.router.limits(cluster: record.cluster)
            retryPolicy = policy.retry ?? server.settings.defaultRetries
            history.start(remoteLocalities: retryPolicy?.retryRemoteLocalities == true)
            transport?.prepareForwarding()
            if let delay = policy.delay, server.roll(delay.percent) {
                // VirtualService fault.delay: the request waits (the route's timeout starts after it, as in Envoy).
                server.counters.faultDelays.increment()
                return wait(.delayed(then: .forward), for: delay.duration)
            }
            forwardWhenConnected()
        }
    }

    /// Brings the indices the exchange holds (its record's endpoint and cluster, its mirrors' clusters) into the
    /// numbering of the snapshot routing now: a reload may have come while the exchange waited.
    @inline(__always) func renumber() {
        if record.generation != server.routingGeneration { renumberIndices() }
    }

    private func renumberIndices() {
        let since = record.generation
        record.renumber(in: server.router)
        guard !policy.mirrors.isEmpty else { return }
        policy = policy.renumberingMirrors { [router = server.router] cluster in
            var (cluster, endpoint, generation) = (cluster, Int32(-1), since)
            router.renumber(cluster: &cluster, endpoint: &endpoint, since: &generation)
            return cluster
        }
    }

    /// Under circuit breaking, an HTTP/1.1 request waits for a connection (or is answered 503 at once when
    /// `maxPendingRequests` already wait); otherwise the first try goes out.
    private func forwardWhenConnected() {
        renumber()
        if let limits, transport?.needsConnectionPerTry == true,
            !server.upstreams.hasConnectionCapacity(endpoint: record.endpoint, limits: limits)
        {
            guard server.upstreams.enqueue(self, limits: limits) else { return overflow() }
            return wait(.waitingForConnection, for: limits.settings.connectTimeout ?? server.settings.connectTimeout)
        }
        begin()
    }

    /// Called by `UpstreamClusters` when this waiting request's backend may have a connection: goes on if so. False
    /// while it must wait on.
    func resumeIfCapacity() -> Bool {
        guard case .waitingForConnection = state else { return true }  // gone: off the queue
        renumber()
        guard let limits, server.upstreams.hasConnectionCapacity(endpoint: record.endpoint, limits: limits) else { return false }
        waitTimer?.cancel()
        begin()
        transport?.exchangeProgressed()
        return true
    }

    /// The first try: the request joins the backend's requests in flight and the retry budget's base, and the
    /// route's timeout starts.
    private func begin() {
        if let limits, !limits.enterRequest() { return overflow() }
        record.inFlight = true
        if retryPolicy != nil { server.retryBudget.earn(record.cluster) }
        if let timeout = requestTimeout {
            requestTimer.schedule(after: timeout, creating: timer { $0.requestTimedOut() })
        }
        sendTry()
    }

    private func sendTry() {
        state = .trying
        renumber()
        guard record.endpoint >= 0 else { return answer(.reply(.noHealthyUpstream)) }  // a reload took it away
        guard let pool = server.upstreams.pool(record.endpoint) else { return tryFailed(.connectFailed) }
        record.upstreamAddress = pool.addressText
        let attempt = record.attempt
        switch transport?.sendTry(to: pool) ?? .connectFailed {
        case .sent:
            // A try refused at once was handled already (retried or answered).
            guard case .trying = state, record.attempt == attempt else { return }
            if let timeout = policy.perTryTimeout {
                tryTimer.schedule(after: timeout, creating: timer { $0.tryTimedOut() })
            }
        case .connectFailed:
            tryFailed(.connectFailed)
        case .overflow:
            overflow()
        }
    }

    /// 503 overflow: the backend's pending queue, requests in flight (`http2MaxRequests`) or streams are full.
    private func overflow() {
        server.counters.upstreamOverflow.increment()
        answer(.reply(.upstreamOverflow))
    }

    private func wait(_ state: State, for duration: Duration) {
        self.state = state
        waitTimer.schedule(after: duration, creating: timer { $0.waitEnded() })
    }

    private func waitEnded() {
        switch state {
        case .collectingBody:
            checked = nil
            answer(.respond(status: 408, body: Self.bodyTimedOut))
        case .authorizing:
            // The authorizer's timeout: no decision, so the check failed.
            checkCall?.cancel()
            checkCall = nil
            checkFinished(.failed)
        case .delayed(then: .answer):
            answer(heldAnswer ?? .reply(.invalidBackend))
            heldAnswer = nil
        case .delayed(then: .forward):
            forwardWhenConnected()
        case .waitingForConnection:
            // A connect timeout without a connection: 503 overflow, as a full queue would have answered.
            server.upstreams.dequeue(self, limits: limits)
            overflow()
        case .backoff:
            // The retry: the whole request again, to another endpoint when one is ready.
            renumber()
            record.endpoint = server.router.alternateEndpoint(cluster: record.cluster, failed: record.endpoint, history: &history)
            sendTry()
        default:
            return
        }
        transport?.exchangeProgressed()
    }

    /// A timer that acts on this exchange (which owns it, so it never fires on a freed one).
    private func timer(_ action: @escaping (Exchange) -> Void) -> Timer {
        Timer(loop: server.loop) { [unowned(unsafe) self] in action(self) }
    }

    // MARK: - Tries

    /// The try's response head arrived with `status` (and, when it ended the stream, the gRPC status it carried).
    /// True when the head is dropped because a retry is under way; else it goes downstream now.
    func responseHead(status: Int, grpcStatus: Int? = nil) -> Bool {
        if retry(.status(status)) { return true }
        if let grpcStatus, retry(.grpcStatus(grpcStatus)) { return true }
        tryTimer?.cancel()
        state = .responding
        record.status = status
        return false
    }

    /// The response is complete (the route's timeout no longer applies).
    func responseCompleted() {
        state = .complete
        requestTimer?.cancel()
        tryTimer?.cancel()
    }

    /// The upstream failed the exchange: before the response head, the try is retried or answered here; after
    /// it, the response is cut off (`UC`).
    func upstreamFailed(_ outcome: RetryPolicy.Outcome) {
        switch state {
        case .trying:
            tryFailed(outcome)
        case .responding:
            record.flags = "UC"
            server.counters.upstreamResetsMidResponse.increment()
            state = .complete
            transport?.breakResponse(timedOut: false)
        default:
            break
        }
    }

    /// The upstream's answer cannot be read (malformed head or framing): 502, never retried.
    func upstreamMisbehaved() {
        transport?.dropTry()
        answer(.reply(.badUpstreamResponse))
    }

    /// Answers `reply` now, whatever was under way short of a response (a malformed request body).
    func refuse(_ reply: LocalReply) {
        if case .waitingForConnection = state { server.upstreams.dequeue(self, limits: limits) }
        transport?.dropTry()
        answer(.reply(reply))
    }

    /// The request can no longer be replayed (its body outgrew the bound): a retry waiting for its backoff is
    /// given up, and the failure it retried is answered.
    func replayLost() {
        guard case .backoff(let outcome) = state else { return }
        record.retryNote = "not retried: request body beyond the replay bound"
        answerFailure(outcome)
    }

    private func tryFailed(_ outcome: RetryPolicy.Outcome) {
        if retry(outcome) { return }
        transport?.dropTry()
        answerFailure(outcome)
    }

    private func answerFailure(_ outcome: RetryPolicy.Outcome) {
        switch outcome {
        case .connectFailed:
            server.counters.upstreamConnectFailures.increment()
            answer(.reply(.upstreamConnectError))
        case .perTryTimeout:
            answer(.reply(.upstreamTimeout))
        default:
            answer(.reply(.upstreamReset))
        }
    }

    /// Starts another try when the policy's conditions and attempts, the replay and the budget allow it and
    /// nothing of the response went downstream. True when a retry is under way (the failed try is dropped).
    private func retry(_ outcome: RetryPolicy.Outcome) -> Bool {
        guard case .trying = state, let backoff = retryBackoff(after: outcome) else { return false }
        transport?.dropTry()
        tryTimer?.cancel()
        server.logger.debug("retrying: \(outcome)", metadata: ["attempt": "\(record.attempt)"])
        wait(.backoff(outcome), for: backoff)
        return true
    }

    /// Whether the try that ended with `outcome` is tried again, and after what backoff: when the policy's
    /// conditions and attempts allow it, the request can be replayed, and the retry budget and the backend's
    /// `maxRetries` admit it. An admitted retry is counted (and the try reported to outlier detection); a refused
    /// one is counted too, and the record keeps why.
    private func retryBackoff(after outcome: RetryPolicy.Outcome) -> Duration? {
        guard let retryPolicy, record.attempt <= retryPolicy.maxRetries, retryPolicy.wouldRetry(outcome) else { return nil }
        switch transport?.replay ?? .impossible {
        case .kept: break
        case .beyondBound: record.retryNote = "not retried: request body beyond the replay bound"; return nil
        case .impossible: return nil
        }
        let counters = server.counters
        renumber()
        guard server.retryBudget.spend(record.cluster) else {
            counters.retryBudgetExhausted.increment()
            counters.istio.recordRetry(service: record.labels.service, .budgetExhausted)
            record.retryNote = "not retried: retry budget exhausted"
            return nil
        }
        if record.attempt == 1 {
            guard limits?.enterRetry() ?? true else {
                counters.retryOverflow.increment()
                record.retryNote = "not retried: maxRetries in flight"
                return nil
            }
            server.retryBudget.retryStarted()
        }
        server.router.reportAttempt(endpoint: record.endpoint, cluster: record.cluster, result: OutlierDetection.Result(outcome))
        counters.countRetry(outcome)
        counters.istio.recordRetry(service: record.labels.service, .started)
        record.attempt += 1
        return retryPolicy.backoff(retry: record.attempt - 1, random: server.random.next())
    }

    /// A try got no response head within `perTryTimeout`: retried when the policy says so, else 504.
    private func tryTimedOut() {
        guard case .trying = state else { return }
        tryFailed(.perTryTimeout)
        transport?.exchangeProgressed()
    }

    /// The route's timeout (all tries together) expired: 504 when nothing was answered yet, else the response is
    /// cut off.
    private func requestTimedOut() {
        switch state {
        case .trying, .backoff:
            server.logger.debug("upstream request timeout", metadata: ["attempt": "\(record.attempt)"])
            waitTimer?.cancel()
            transport?.dropTry()
            answer(.reply(.upstreamTimeout))
        case .responding:
            record.flags = "UT"
            state = .complete
            transport?.breakResponse(timedOut: true)
        default:
            return
        }
        transport?.exchangeProgressed()
    }

    private func answer(_ local: LocalAnswer) {
        switch local {
        case .reply(let reply):
            record.status = reply.status
            record.flags = reply.responseFlags
        case .redirect(let status, _), .respond(let status, _), .denied(let status, _, _):
            record.status = status
        }
        responseCompleted()
        waitTimer?.cancel()
        transport?.answer(local)
    }

    // MARK: - The end

    /// The exchange is over: it is reported (counters, outlier detection, Istio's metrics, span, access log),
    /// leaves the counts it joined, and is ready for the next request. `grpc`: the call's status, when the answer
    /// carried one.
    func finish(grpc: GRPCStatus? = nil) {
        server.report(record, grpc: grpc, protocol: protocolName, peer: peer, principal: principal, log: log)
        end()
    }

    /// Ends the exchange without a report (its connection is gone): timers stop, the counts it joined are left.
    func end() {
        if checked != nil {  // asked, not answered: the answer is no longer wanted
            checkCall?.cancel()
            checkCall = nil
            checked = nil
        }
        waitTimer?.cancel()
        tryTimer?.cancel()
        requestTimer?.cancel()
        if case .waitingForConnection = state { server.upstreams.dequeue(self, limits: limits) }
        server.retryBudget.leave(&record, limits: limits)
        state = .idle
        record = ExchangeRecord()
        policy = .standard
        limits = nil
        retryPolicy = nil
        heldAnswer = nil
        requestTimeout = nil
        log?.clear()
    }

    /// The connection switched protocols (HTTP/1.1 `101`): the exchange goes on as a byte relay, which reports it
    /// when it ends (with the bytes it moved) through the returned closure.
    func handOff() -> (_ received: Int, _ sent: Int) -> Void {
        waitTimer?.cancel()
        tryTimer?.cancel()
        requestTimer?.cancel()
        record.status = 101
        var record = self.record
        let (limits, server, peer, principal, protocolName, log) = (limits, server, peer, principal, protocolName, log)
        self.record = ExchangeRecord()  // the relay has the counts to leave, and the log fields
        state = .idle
        return { received, sent in
            record.bytesReceived += received
            record.bytesSent += sent
            server.report(record, grpc: nil, protocol: protocolName, peer: peer, principal: principal, log: log)
            server.retryBudget.leave(&record, limits: limits)
        }
    }
}
