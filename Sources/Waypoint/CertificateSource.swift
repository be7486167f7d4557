import HBONEServer
import TLS

/// The waypoint's certificate, key and trust bundle files: loaded into TLS contexts, and re-read when they
/// change (rotation by cert-manager or SPIRE writes new files, often by a symlink swap).
///
/// Thread: main thread only. Ownership: the `Runtime`.
struct CertificateSource {
    let certificate: String
    let key: String
    let trustBundle: String
    private var fingerprint: [String] = []

    init(certificate: String, key: String, trustBundle: String) {
        self.certificate = certificate
        self.key = key
        self.trustBundle = trustBundle
    }

    /// The contexts for HBONE connections, both ways; throws naming the file that failed. Nothing changes on failure.
    mutating func load() throws(TLSError) -> TLSContexts {
        // Remember the files even if they fail, so a bad rotation is reported once, not every poll.
        fingerprint = ConfigSource.fingerprint([certificate, key, trustBundle])
        return TLSContexts(
            server: try TLSContext(role: .server, certificateFile: certificate, keyFile: key, trustBundleFile: trustBundle),
            client: try TLSContext(role: .client, certificateFile: certificate, keyFile: key, trustBundleFile: trustBundle))
    }

    func changed() -> Bool { ConfigSource.fingerprint([certificate, key, trustBundle]) != fingerprint }
}

/// The waypoint's certificate as a TLS server (HBONE from ztunnels) and as a client (HBONE to mesh endpoints;
/// waypoints present their own identity upstream, they do not impersonate the caller).
struct TLSContexts: Sendable {
    let server: TLSContext
    let client: TLSContext
}
