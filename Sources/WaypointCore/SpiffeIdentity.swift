/// A workload identity in Istio's SPIFFE form, `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`.
///
/// AuthorizationPolicy names principals without the scheme (`cluster.local/ns/default/sa/frontend`): that is
/// `principal`. Thread: any (a value).
public struct SpiffeIdentity: Sendable, Equatable, CustomStringConvertible {
    public let trustDomain: String
    public let namespace: String
    public let serviceAccount: String

    /// `trustDomain/ns/namespace/sa/serviceAccount`, as AuthorizationPolicy `principals` match it (built once,
    /// since every request of the connection is authorized with it).
    public let principal: String
    public var description: String { "spiffe://" + principal }

    /// Parses `spiffe://td/ns/NS/sa/SA`; nil for anything else (other paths, empty parts, query or fragment).
    public init?(uri: String) {
        guard uri.hasPrefix("spiffe://") else { return nil }
        let parts = uri.dropFirst("spiffe://".count).split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 5, parts[1] == "ns", parts[3] == "sa",
            !parts[0].isEmpty, !parts[2].isEmpty, !parts[4].isEmpty,
            !uri.contains(where: { $0 == "?" || $0 == "#" || $0 == "%" || $0.isWhitespace })
        else { return nil }
        trustDomain = parts[0].lowercased()
        namespace = String(parts[2])
        serviceAccount = String(parts[4])
        principal = "\(trustDomain)/ns/\(namespace)/sa/\(serviceAccount)"
    }

    /// Why a peer certificate's identity was refused.
    public enum Rejection: Error, Equatable, Sendable, CustomStringConvertible {
        case noSpiffeID
        case severalSpiffeIDs
        case malformed(String)
        case untrustedDomain(String)

        public var description: String {
            switch self {
            case .noSpiffeID: return "certificate has no spiffe:// URI SAN"
            case .severalSpiffeIDs: return "certificate has more than one spiffe:// URI SAN"
            case .malformed(let uri): return "malformed SPIFFE ID \(uri)"
            case .untrustedDomain(let domain): return "trust domain \(domain) is not accepted"
            }
        }
    }

    /// The identity of a verified certificate from its URI SANs: exactly one `spiffe://` URI, in Istio's form,
    /// whose trust domain is one of `trustDomains` (lower-case).
    public static func fromCertificate(uris: [String], trustDomains: [String]) -> Result<SpiffeIdentity, Rejection> {
        let spiffe = uris.filter { $0.lowercased().hasPrefix("spiffe://") }
        guard let uri = spiffe.first else { return .failure(.noSpiffeID) }
        guard spiffe.count == 1 else { return .failure(.severalSpiffeIDs) }
        guard let identity = SpiffeIdentity(uri: uri) else { return .failure(.malformed(uri)) }
        guard trustDomains.contains(identity.trustDomain) else { return .failure(.untrustedDomain(identity.trustDomain)) }
        return .success(identity)
    }
}

/// What the waypoint knows about the caller of a request, fixed per connection or tunnel: the authenticated
/// identity (HBONE or PROXY sandwich; none on the plaintext listener) and the original client address.
///
/// Thread: any (a value). The HBONE connection builds it once at the handshake; each tunnel adds its address.
public struct PeerFacts: Sendable {
    public var identity: SpiffeIdentity?
    /// The original client's IP: the tunnel's `forwarded: for=` (HBONE) or the socket peer (plaintext).
    public var sourceIP: String
    /// `ip:port` of the same, for logs.
    public var sourceAddress: String
    /// `sourceIP` as 4 or 16 bytes (for CIDR matching), nil when unknown.
    public let sourceIPBytes: [UInt8]?
    /// The address the client dialed (the tunnel's `:authority`, the PROXY header's destination); nil on the
    /// plaintext listener.
    public var destinationIP: String?
    public let destinationIPBytes: [UInt8]?
    /// The tunnel's `baggage` (ztunnel: `k8s.cluster.name=…,k8s.namespace.name=…,k8s.deployment.name=…,
    /// service.name=…,service.version=…`): the source workload's metadata, kept for telemetry.
    public var baggage: String?

    public init(identity: SpiffeIdentity?, sourceIP: String, sourceAddress: String, destinationIP: String? = nil, baggage: String? = nil) {
        self.identity = identity
        self.sourceIP = sourceIP
        self.sourceAddress = sourceAddress
        sourceIPBytes = IPAddress.parse(sourceIP)
        self.destinationIP = destinationIP
        destinationIPBytes = destinationIP.flatMap(IPAddress.parse)
        self.baggage = baggage
    }
}
