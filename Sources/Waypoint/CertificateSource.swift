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

    /// The server context for HBONE connections; throws naming the file that failed. Nothing changes on failure.
    mutating func load() throws(TLSError) -> TLSContext {
        // Remember the files even if they fail, so a bad rotation is reported once, not every poll.
        fingerprint = ConfigSource.fingerprint([certificate, key, trustBundle])
        return try TLSContext(role: .server, certificateFile: certificate, keyFile: key, trustBundleFile: trustBundle)
    }

    func changed() -> Bool { ConfigSource.fingerprint([certificate, key, trustBundle]) != fingerprint }
}
