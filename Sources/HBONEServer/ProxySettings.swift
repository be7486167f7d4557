import Filters
import HTTP2

/// Limits and timeouts of the data plane, fixed at start-up.
public struct ProxySettings: Sendable {
    /// Request line plus headers beyond this answer 431 (upstream response heads beyond it answer 502).
    public var maxHeadBytes = 60 * 1024
    /// Pending output per direction above which the other side stops being read.
    public var pendingOutputBound = 64 * 1024
    public var connectTimeout: Duration = .seconds(5)
    /// A downstream connection with no request in flight is closed after this long.
    public var downstreamIdleTimeout: Duration = .seconds(60)
    /// A request head must arrive completely within this long of its first byte, else 408 and close
    /// (a client trickling a head byte by byte would otherwise hold the connection forever).
    public var headerTimeout: Duration = .seconds(30)
    /// A byte relay (a TCP tunnel, a connection that switched protocols after `101`) that moved no byte either way
    /// for this long is closed (Envoy's tcp_proxy `idle_timeout`, 1 hour); nil: never.
    public var relayIdleTimeout: Duration? = .seconds(3600)
    /// A pooled upstream connection unused this long is closed (kept below common origin keep-alive timeouts).
    public var upstreamIdleTimeout: Duration = .seconds(30)
    /// How long a draining worker leaves idle keep-alive connections open for a last request (`--drain-idle-grace`).
    public var drainIdleGrace: Duration = .seconds(2)
    /// Traces sampled requests and exports their spans (OTLP/HTTP); nil: no tracing (`--otlp-endpoint`).
    public var tracer: SpanExporter?
    /// Istio metric series per worker before new label sets go to the overflow series (`--istio-metrics-max-series`).
    public var istioMetricsMaxSeries = 2000
    /// Workers in the process: they share the backends' connection limits, each keeping at most its fair share
    /// of a limit's connections while other workers' requests wait for one.
    public var workers = 1
    /// Retries for exchanges without a route-level policy (Istio's default; nil: `--default-retries off`).
    public var defaultRetries: RetryPolicy? = .istioDefault
    /// How request paths are normalized before routing and authorization (Istio's default: BASE).
    public var pathNormalization = PathNormalization.base
    /// HTTP/1.1 `Upgrade` (WebSocket) passes through and a `101` turns the connection into a byte relay, as
    /// Istio's waypoints allow by default; off: the offer is dropped (hop-by-hop) and the request is plain HTTP.
    public var upgrades = true
    /// `x-forwarded-proto` set on requests from this listener.
    public var forwardedProto: StaticString = "http"

    // MARK: HBONE
    /// A TLS handshake must complete within this long of the accept.
    public var handshakeTimeout: Duration = .seconds(10)
    /// Trust domains whose SPIFFE IDs are accepted from peers (lower-case).
    public var trustDomains: [String] = ["cluster.local"]
    public var http2 = HTTP2Settings()
    /// Bytes waiting to go to the client per tunnel before its feeder (the upstream) is paused.
    public var tunnelSendBound = 256 * 1024
    /// PING every this long; close when one is unanswered for `keepaliveTimeout` (ztunnel: 10 s and 20 s).
    public var keepaliveInterval: Duration = .seconds(10)
    public var keepaliveTimeout: Duration = .seconds(20)
    /// How long a tunnel of undeclared protocol waits for its first bytes before it is treated as TCP
    /// (server-first protocols such as MySQL or SMTP never speak first).
    public var detectionTimeout: Duration = .seconds(1)
    /// The port of the HBONE listener on mesh endpoints' nodes (ztunnel's 15008).
    public var upstreamHBONEPort: UInt16 = 15008

    public init() {}
}
