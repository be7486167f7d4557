/// How the waypoint reaches one endpoint.
public enum EndpointTransport: Sendable, Equatable {
    /// A plain TCP connection: the endpoint is outside the ambient mesh.
    case plaintext
    /// An HBONE tunnel through the endpoint's node (port 15008, `CONNECT ip:port`, the waypoint's own certificate).
    /// `peer`: whom the node's certificate must name, the destination Pod's service account (its ztunnel answers
    /// as that Pod), as an index into the snapshot's `peerAccounts`; -1 when the Pod is not known (then any
    /// identity of an accepted trust domain, as Envoy). An index keeps a table of 10,000 transports plain data,
    /// copied with a memcpy.
    case hbone(peer: Int32)
    /// TLS originated by the waypoint (DestinationRule `tls` SIMPLE or MUTUAL): the settings are the snapshot's
    /// `upstreamTLS` entry with this index.
    case tls(Int32)

    public var isHBONE: Bool { if case .hbone = self { return true } else { return false } }
}

/// A Kubernetes service account, the part of a SPIFFE ID (`…/ns/<namespace>/sa/<name>`) a workload is known by.
public struct ServiceAccountName: Sendable, Hashable, CustomStringConvertible {
    public var namespace: String
    public var name: String

    public init(namespace: String, name: String) {
        self.namespace = namespace
        self.name = name
    }

    public var description: String { "ns/\(namespace)/sa/\(name)" }

    /// Whether `identity` is this service account (in whichever accepted trust domain).
    public func matches(_ identity: SpiffeIdentity) -> Bool { identity.namespace == namespace && identity.serviceAccount == name }
}
