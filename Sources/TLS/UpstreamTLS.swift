/// TLS originated to an upstream (DestinationRule `trafficPolicy.tls`, mode SIMPLE or MUTUAL): the client context
/// (trust, and the client certificate for MUTUAL) and what the server's certificate must name.
///
/// Thread: any (immutable). Ownership: the config snapshot; connections keep it while they use its context.
public final class UpstreamTLS: Sendable {
    public let context: TLSContext
    /// SNI (`sni`, else the rule's host; a Service's full name).
    public let serverName: String
    /// `subjectAltNames`: the certificate must carry one of them (a DNS or URI SAN); empty: it must be for
    /// `serverName`.
    public let subjectAltNames: [String]
    /// False with `insecureSkipVerify`: any certificate is accepted.
    public let verify: Bool

    public init(context: TLSContext, serverName: String, subjectAltNames: [String], verify: Bool) {
        self.context = context
        self.serverName = serverName
        self.subjectAltNames = subjectAltNames
        self.verify = verify
    }
}
