#if canImport(Glibc)
    import Glibc
#endif
import TLS
import WaypointCore

/// Keeps the waypoint's certificate from the mesh's CA, as ztunnel keeps its own: a new key and CSR for the
/// identity the CA token names (`spiffe://<trust domain>/ns/<ns>/sa/<sa>`), renewed at half the certificate's
/// life (±1% jitter), failures retried with backoff capped at 150 s. What it gets is handed to `deliver`; the
/// current certificate stays in use until a new one arrives (the receiver decides what an expired one means).
///
/// Thread: its own (blocking calls to the CA). Ownership: keeps itself alive for the life of the process.
public final class CertificateAgent: Sendable {
    /// A certificate the CA issued, checked: it is for this key and this identity.
    public struct Issued: Sendable {
        public let key: PrivateKey
        /// The leaf and any intermediates (PEM), as presented to peers.
        public let chain: String
        /// The root(s) peers must chain to (the answer's last entry).
        public let roots: String
        public let info: CertificateInfo
        public let identity: String
    }

    /// What one attempt came to.
    public enum Event: Sendable {
        case issued(Issued)
        /// The attempt failed (why), and when the next one is.
        case failed(String, retryIn: Duration)
    }

    private let ca: IstioCA
    private let trustDomain: String
    private let deliver: @Sendable (Event) -> Void

    public init(ca: IstioCA, trustDomain: String, deliver: @escaping @Sendable (Event) -> Void) {
        (self.ca, self.trustDomain, self.deliver) = (ca, trustDomain, deliver)
    }

    public func start() {
        ControlThread.start(name: "mesh-ca") { self.run() }
    }

    private func run() {
        var backoff = Backoff(floor: .milliseconds(500), ceiling: .seconds(150))
        while true {
            do throws(CAError) {
                let issued = try issue()
                backoff.reset()
                deliver(.issued(issued))
                let now = Double(time(nil))
                ControlThread.sleep(.seconds(max(1, Self.renewal(of: issued.info, jitter: Double.random(in: -0.01...0.01)) - now)))
            } catch {
                let wait = backoff.next()
                deliver(.failed(error.description, retryIn: wait))
                ControlThread.sleep(wait)
            }
        }
    }

    /// One request to the CA with a fresh key; the answer is checked before it is used.
    public func issue() throws(CAError) -> Issued {
        let token = try ca.token()
        let account = try serviceAccount(ofToken: token)
        let identity = "spiffe://\(trustDomain)/ns/\(account.namespace)/sa/\(account.name)"
        let key: PrivateKey
        let csr: String
        do {
            key = try PrivateKey()
            csr = try key.certificateRequest(uri: identity)
        } catch {
            throw CAError("\(error)")
        }
        let chain = try ca.createCertificate(csr: csr, token: token)
        let info: CertificateInfo
        do {
            info = try CertificateInfo(pem: chain[0])
        } catch {
            throw CAError("the issued leaf: \(error)")
        }
        guard info.uris == [identity] else {
            throw CAError("the CA issued a certificate for \(info.uris), not \(identity)")
        }
        return Issued(
            key: key, chain: chain.dropLast().map(Self.withNewline).joined(), roots: Self.withNewline(chain[chain.count - 1]),
            info: info, identity: identity)
    }

    /// When to ask again: at half the certificate's life, shifted by `jitter` (a fraction of the life, ±0.01),
    /// so that waypoints started together do not all renew at once (istio-agent's 0.5 ± 0.01).
    public static func renewal(of info: CertificateInfo, jitter: Double) -> Double {
        info.notBefore + (info.notAfter - info.notBefore) * (0.5 + jitter)
    }

    private static func withNewline(_ pem: String) -> String { pem.hasSuffix("\n") ? pem : pem + "\n" }
}
