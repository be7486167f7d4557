import EventLoop
import Filters
import HTTP2
import WaypointCore

/// One inner HTTP/2 request and its response, between a downstream h2c stream and an upstream h2c stream: the
/// h2c transport of an `Exchange` (which decides routing, tries, retries and timeouts), or a mirrored copy.
/// Each direction's body waits in a buffer until the other side's DATA source takes it, and only then is the
/// sender's window reopened (`consume`), so the stream windows bound what is buffered.
///
/// Thread: its worker's loop thread only. Ownership: its `H2CProxySession` and, while it has an upstream
/// stream, its `H2CUpstream`.
final class H2CExchange: ExchangeTransport {
    let downstreamID: Int32
    var upstreamID: Int32 = 0
    unowned(unsafe) var upstream: H2CUpstream?
    private unowned(unsafe) let session: H2CProxySession
    /// What happens to the request (unused for a mirrored copy).
    let control: Exchange
    /// Request fields as received (pseudo-headers included), lower-case names.
    var requestFields: [(String, String)] = []
    /// The request's method, authority and path (normalized), once it is routed.
    var method = "", authority = "", path = ""
    var responseFields: [(String, String)] = []
    var trailers: [(String, String)] = []
    let requestBody = ByteBuffer(lazyCapacity: 16 * 1024)
    let responseBody = ByteBuffer(lazyCapacity: 16 * 1024)
    var requestEnded = false
    var responseStarted = false
    var responseEnded = false
    /// The copies of this request on their way to the route's mirrors, while the request body still flows.
    var mirrors: [H2CExchange] = []
    /// The request fields sent upstream, but for `x-envoy-attempt-count` (added per try, as Istio has Envoy do).
    var upstreamFields: [(String, String)] = []
    /// The request body received so far, kept while it is within the retry policy's replay bound; nil: no
    /// retry is possible (no policy, or the body outgrew the bound).
    var replayBody: ByteBuffer?
    /// Request body bytes this try has sent, and bytes the client was credited for in all (a replayed byte
    /// is credited once).
    var sentInAttempt = 0
    var credited = 0

    init(downstreamID: Int32, session: H2CProxySession) {
        self.downstreamID = downstreamID
        self.session = session
        control = session.makeExchange()
        control.transport = self
    }

    // MARK: ExchangeTransport (the session does the work)

    var needsConnectionPerTry: Bool { false }
    var replay: Replay { replayBody != nil ? .kept : .beyondBound }
    func prepareForwarding() { session.prepareForwarding(self) }
    func sendTry(to pool: UpstreamPool) -> TryStart { session.sendTry(self, to: pool) }
    func dropTry() { session.dropTry(self) }
    func answer(_ answer: LocalAnswer) { session.answer(self, answer) }
    func requestBody(upTo limit: Int) -> ([UInt8], BodyExtent) {
        let held = requestBody.readable
        if held.count > limit { return (Array(held[0..<limit]), .exceeds) }
        return requestEnded ? (Array(held), .ended) : ([], .more)
    }
    func breakResponse(timedOut: Bool) { session.breakResponse(self, timedOut: timedOut) }
    func exchangeProgressed() { session.flush() }
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
