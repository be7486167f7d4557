#if canImport(Glibc)
    import Glibc
#endif
import EventLoop
import Logging
import MeshIdentity
import Synchronization
import TLS
import WaypointConfig

/// The HBONE certificate from the mesh's CA (istiod), installed on the main loop: the agent's thread asks the
/// CA and rotates; each certificate it gets becomes new TLS contexts for the workers (new handshakes use it,
/// open connections keep theirs). Until the first one arrives, and once the current one expired, the waypoint
/// is not ready.
///
/// Thread: main thread only (the agent's events arrive through a mailbox). Ownership: the `Runtime`.
final class MeshCertificates {
    /// Called with the contexts of each new certificate.
    var onInstalled: ((TLSContexts) -> Void)?
    private(set) var current: CertificateAgent.Issued?
    private var renewals = (succeeded: 0, failed: 0)
    private var lastError: String?
    private let agent: CertificateAgent
    private let mailbox: Mailbox
    private let logger: Logger
    private let source: String

    init(ca: IstioCA, trustDomain: String, loop: EventLoop, logger: Logger) {
        let mailbox = Mailbox()
        self.mailbox = mailbox
        self.logger = logger
        source = "istiod at \(ca.host):\(ca.port)"
        agent = CertificateAgent(ca: ca, trustDomain: trustDomain) { mailbox.post($0) }
        mailbox.doorbell = AsyncWatcher(loop: loop) { [unowned(unsafe) self] in
            for event in self.mailbox.take() { self.handle(event) }
        }
    }

    func start() { agent.start() }

    /// Whether a certificate is in use and not expired.
    var isServing: Bool { current.map { $0.info.notAfter > Double(time(nil)) } ?? false }

    /// Why the waypoint is not ready, for `/healthz/ready`.
    var notReadyReason: String {
        guard current != nil else { return "no certificate from \(source) yet" + (lastError.map { ": \($0)" } ?? "") }
        return "the certificate from \(source) expired; renewal failing" + (lastError.map { ": \($0)" } ?? "")
    }

    private func handle(_ event: CertificateAgent.Event) {
        switch event {
        case .issued(let issued):
            let contexts: TLSContexts
            do {
                contexts = TLSContexts(
                    server: try TLSContext(
                        role: .server, certificateChain: issued.chain, key: issued.key, trustBundle: issued.roots, source: source),
                    client: try TLSContext(
                        role: .client, certificateChain: issued.chain, key: issued.key, trustBundle: issued.roots, source: source))
            } catch {
                renewals.failed += 1
                lastError = "\(error)"
                logger.error("HBONE certificate from \(source) unusable, keeping the current one: \(error)")
                return
            }
            current = issued
            renewals.succeeded += 1
            lastError = nil
            onInstalled?(contexts)
            logger.info(
                "HBONE certificate issued",
                metadata: [
                    "identity": "\(issued.identity)", "serial": "\(issued.info.serial)",
                    "expires": "\(Int(issued.info.notAfter))", "ca": "\(source)",
                ])
        case .failed(let reason, let retryIn):
            renewals.failed += 1
            lastError = reason
            logger.error(
                "HBONE certificate from \(source) failed: \(reason); retrying in \(retryIn) (--cert, or --ca-address none, to do without)")
        }
    }

    /// `waypoint_certificate_expiry_timestamp_seconds` and `waypoint_certificate_renewals_total{result}`.
    var metricsText: String {
        var text = "# HELP waypoint_certificate_expiry_timestamp_seconds When the HBONE certificate in use expires (Unix seconds).\n"
        text += "# TYPE waypoint_certificate_expiry_timestamp_seconds gauge\n"
        text += "waypoint_certificate_expiry_timestamp_seconds \(Int(current?.info.notAfter ?? 0))\n"
        text += "# HELP waypoint_certificate_renewals_total Certificate requests to the mesh CA, by result.\n"
        text += "# TYPE waypoint_certificate_renewals_total counter\n"
        text += "waypoint_certificate_renewals_total{result=\"success\"} \(renewals.succeeded)\n"
        text += "waypoint_certificate_renewals_total{result=\"failure\"} \(renewals.failed)\n"
        return text
    }

    /// The certificate as the config dump shows it (never the key).
    var dumpValue: JSONValue {
        guard let current else { return .object([("source", .string(source)), ("state", .string("waiting"))]) }
        return .object([
            ("source", .string(source)), ("identity", .string(current.identity)), ("serial", .string(current.info.serial)),
            ("notBefore", .int(Int(current.info.notBefore))), ("notAfter", .int(Int(current.info.notAfter))),
        ])
    }
}

/// Events from the agent's thread to the main loop.
private final class Mailbox: @unchecked Sendable {
    // SAFETY: `doorbell` is set on the main thread before the agent starts, then only read; `send` is thread-safe.
    var doorbell: AsyncWatcher?
    private let events = Mutex<[CertificateAgent.Event]>([])

    func post(_ event: CertificateAgent.Event) {
        events.withLock { $0.append(event) }
        doorbell?.send()
    }

    func take() -> [CertificateAgent.Event] {
        events.withLock { events in
            defer { events.removeAll() }; return events
        }
    }
}
