/// What the protocol inside an HBONE tunnel is, from the Service port (`appProtocol`, else the port name's
/// prefix, as Istio reads them), or `.detect` to decide from the first bytes.
public enum InnerProtocol: Sendable, Equatable {
    case http1, http2, tcp, detect

    /// Istio's protocol selection: `appProtocol` first, then the port name up to the first `-`.
    public init(appProtocol: String?, portName: String) {
        let word = (appProtocol ?? String(portName.split(separator: "-", maxSplits: 1).first ?? "")).lowercased()
        switch word {
        case "http", "http1", "kubernetes.io/h1": self = .http1
        case "http2", "h2c", "grpc", "grpc-web", "kubernetes.io/h2c": self = .http2
        case "tcp", "tls", "https", "mongo", "mysql", "redis", "kubernetes.io/ws", "kubernetes.io/wss": self = .tcp
        default: self = appProtocol == nil ? .detect : .tcp
        }
    }
}

/// Where an HBONE tunnel goes, looked up from its `:authority` (`IP:port`): a Service's cluster IP or a
/// ServiceEntry address (its routes then apply), or a known endpoint (workload addressing).
///
/// Thread: any (a value in the immutable snapshot).
public struct Destination: Sendable {
    /// Index of the service's virtual host in the route table, or -1 for a workload address.
    public let virtualHost: Int32
    /// The service port, which selects the rule set.
    public let port: UInt16
    /// The service's own cluster (its ready endpoints), or -1 for a workload address.
    public let cluster: Int32
    /// The endpoint index for a workload address, else -1.
    public let endpoint: Int32
    public let innerProtocol: InnerProtocol
    /// `namespace/name` of the service, or the endpoint address, for logs.
    public let name: String
    /// The service's `name.namespace.svc.<domain>` (the Host of inner requests that carry none).
    public let host: String
    /// For an address of a passthrough ServiceEntry (`resolution: NONE`): the endpoint that is this address
    /// itself, where a request routed to that entry goes (Envoy's original destination); else -1.
    public let originalEndpoint: Int32
    /// The tunnel address this was looked up by, and the lineage of the snapshot it came from (set by the
    /// router; 0: not looked up for a tunnel): a tunnel outlives snapshots, and a full compile renumbers virtual
    /// hosts and clusters.
    public var address: SocketAddress? = nil
    public var lineage: UInt64 = 0

    public init(
        virtualHost: Int32, port: UInt16, cluster: Int32, endpoint: Int32, innerProtocol: InnerProtocol, name: String, host: String,
        originalEndpoint: Int32 = -1
    ) {
        self.virtualHost = virtualHost
        self.port = port
        self.cluster = cluster
        self.endpoint = endpoint
        self.innerProtocol = innerProtocol
        self.name = name
        self.host = host
        self.originalEndpoint = originalEndpoint
    }
}
