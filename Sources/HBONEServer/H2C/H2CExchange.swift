import EventLoop
import Filters
import HTTP2
import WaypointCore

/// One inner HTTP/2 request and its response, between a downstream h2c stream and an upstream h2c stream.
/// Each direction's body waits in a buffer until the other side's DATA source takes it, and only then is the
/// sender's window reopened (`consume`), so the stream windows bound what is buffered.
///
/// Thread: its worker's loop thread only. Ownership: its `H2CProxySession` and, while it has an upstream
/// stream, its `H2CUpstream`.
final class H2CExchange {
    let downstreamID: Int32
    var upstreamID: Int32 = 0
    unowned(unsafe) var upstream: H2CUpstream?
    /// Request fields as received (pseudo-headers included), lower-case names.
    var requestFields: [(String, String)] = []
    var responseFields: [(String, String)] = []
    var trailers: [(String, String)] = []
    let requestBody = ByteBuffer(lazyCapacity: 16 * 1024)
    let responseBody = ByteBuffer(lazyCapacity: 16 * 1024)
    var requestEnded = false
    var responseStarted = false
    var responseEnded = false
    /// What the request and its tries come to, for telemetry (one `ProxyServer.report` when it ends).
    var record = ExchangeRecord()
    /// The route's ResponseHeaderModifier.
    var responseModifier: HeaderModifier?
    /// The copies of this request on their way to the route's mirrors, while the request body still flows.
    var mirrors: [H2CExchange] = []
    /// What the access log says about the request, kept when it is routed (only while the log is on).
    var logFields: RequestLogFields?

    // Forwarding, once routed to an upstream.
    var forwardPolicy = ForwardPolicy.standard
    /// All tries together: the route's timeout, or for gRPC the call's own deadline within it.
    var requestTimeout: Duration?
    /// The backend's connection-pool limits (`http2MaxRequests`, `maxRetries`), counted into while in flight.
    var limits: ClusterLimits?
    /// The request fields sent upstream, but for `x-envoy-attempt-count` (added per attempt, as Istio has Envoy do).
    var upstreamFields: [(String, String)] = []
    /// The upstream stream waits to start (fault delay or retry backoff); the request body meanwhile waits in
    /// `requestBody`, bounded by the client's stream window.
    var held = false
    /// Ends a fault delay or a retry's backoff.
    var startTimer: Timer?
    /// A fault abort answered when the fault delay ends (Envoy delays first).
    var delayedResponse: (status: Int, body: [UInt8])?
    var tryTimer: Timer?
    var requestTimer: Timer?

    // Retries.
    var retryPolicy: RetryPolicy?
    /// Where the tries went (retries avoid them).
    var retryHistory = RetryHistory()
    /// The request body received so far, kept while it is within the retry policy's replay bound; nil: no
    /// retry is possible (no policy, or the body outgrew the bound).
    var replay: ByteBuffer?
    /// What the failed attempt ended with, while its retry waits (answered if the retry cannot happen after all).
    var retriedOutcome: RetryPolicy.Outcome?
    /// Request body bytes this attempt has sent, and bytes the client was credited for in all (a replayed byte
    /// is credited once).
    var sentInAttempt = 0
    var credited = 0

    init(downstreamID: Int32) { self.downstreamID = downstreamID }
}

/// Who hears about an h2c exchange's upstream stream: the downstream session, or the sink that drops the
/// answers of mirrored requests.
protocol H2CExchangeOwner: AnyObject {
    func requestConsumed(_ exchange: H2CExchange, _ count: Int)
    func responseHeaders(_ exchange: H2CExchange)
    func responseDataReady(_ exchange: H2CExchange)
    /// The upstream stream failed before the exchange was complete: `.connectFailed`, `.reset` or `.refusedStream`.
    func upstreamFailed(_ exchange: H2CExchange, _ outcome: RetryPolicy.Outcome)
}

/// The owner of mirrored HTTP/2 requests: their answers are read and dropped (windows reopened at once).
///
/// Thread: its worker's loop thread only. Ownership: the `ProxyServer`.
final class H2CMirrorSink: H2CExchangeOwner {
    func requestConsumed(_ exchange: H2CExchange, _ count: Int) {}
    func responseHeaders(_ exchange: H2CExchange) { exchange.responseStarted = true }
    func responseDataReady(_ exchange: H2CExchange) {
        let n = exchange.responseBody.readableBytes
        exchange.responseBody.clear()
        if n > 0 { exchange.upstream?.responseConsumed(exchange, n) }
    }
    func upstreamFailed(_ exchange: H2CExchange, _ outcome: RetryPolicy.Outcome) {}
}
