import Filters
import WaypointCore

/// What a transport (HTTP/1.1 or h2c downstream, with its upstream) does for its `Exchange`: it moves heads,
/// bodies and trailers in its own wire form and reports what the upstream did; the exchange decides what happens.
///
/// Thread: its worker's loop thread only.
protocol ExchangeTransport: AnyObject {
    /// Whether each try needs a connection of its own (HTTP/1.1): the backend's `tcp.maxConnections` then makes a
    /// request wait for one (HTTP/2 multiplexes, and overflows at the stream limit instead).
    var needsConnectionPerTry: Bool { get }
    /// Whether the request can be sent again now.
    var replay: Replay { get }
    /// The request is routed upstream: what the first try needs is made ready (upstream headers, span, mirrors).
    func prepareForwarding()
    /// Sends the request to `pool`'s endpoint: the first try, or (`record.attempt > 1`) a retry replaying the
    /// request with its `x-envoy-attempt-count`. A failure may be reported before this returns.
    func sendTry(to pool: UpstreamPool) -> TryStart
    /// Lets go of the current try's upstream (its connection closed, its stream reset): its answer is not wanted.
    func dropTry()
    /// Answers the request here; the exchange has set the record's status and flags.
    func answer(_ answer: LocalAnswer)
    /// Cuts off a response already under way, so that the client cannot take it for a complete one.
    func breakResponse(timedOut: Bool)
    /// The request body for an external check, once it ended or outgrew `limit`: its first `limit` bytes at most
    /// (decoded), and which of the two; empty with `.more` while more may come. Called while the exchange collects
    /// the body; the transport says when more came (`bodyArrived`).
    func requestBody(upTo limit: Int) -> ([UInt8], BodyExtent)
    /// The exchange moved on by itself (a delay or backoff ended, a timeout fired, a connection freed up): the
    /// transport carries on from there.
    func exchangeProgressed()
}

/// Whether a request can be sent again for a retry.
enum Replay {
    /// The whole request is kept.
    case kept
    /// Its body outgrew the retry policy's replay bound (the access log says so when a retry was called for).
    case beyondBound
    /// It cannot be sent again for another reason (a `100-continue` request).
    case impossible
}

/// How much request body there is beyond what the transport has.
enum BodyExtent {
    /// The body ended within what it has.
    case ended
    /// More arrived than was asked for, or no more can be held: the body is longer.
    case exceeds
    /// More may come.
    case more
}

/// How sending a try went, as far as it is known at once.
enum TryStart {
    case sent
    /// No connection could be had (the try failed: retried or answered 503).
    case connectFailed
    /// The backend is at its connection-pool limit (503 overflow).
    case overflow
}

/// An answer the proxy makes itself.
enum LocalAnswer {
    /// A refusal or failure (no route, denied, upstream failures), with its flags.
    case reply(LocalReply)
    /// A RequestRedirect.
    case redirect(status: Int, location: [UInt8])
    /// The route's own response (VirtualService `directResponse`, fault abort).
    case respond(status: Int, body: [UInt8])
    /// An external authorizer's denial: its status, the headers it passes on and its body.
    case denied(status: Int, headers: [ExternalAuthorizer.HeaderLine], body: [UInt8])
}
