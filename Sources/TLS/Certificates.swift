#if canImport(Glibc)
    import Glibc
#endif
internal import COpenSSL

/// A private key made in memory for a certificate request (EC P-256, as ztunnel's): it is never written out,
/// only handed to the TLS contexts that present the certificate issued for it.
///
/// Thread: any (immutable after `init`). Ownership: shared; the last reference frees it.
public final class PrivateKey: @unchecked Sendable {
    // SAFETY: the EVP_PKEY is never changed after init; OpenSSL's key objects are safe to share for reading.
    let raw: OpaquePointer

    /// A new EC P-256 key.
    public init() throws(TLSError) {
        defer { ERR_clear_error() }
        guard let key = wp_ec_p256_key() else { throw TLSError("cannot generate an EC P-256 key") }
        raw = key
    }

    deinit { EVP_PKEY_free(raw) }

    /// A PEM certificate signing request for this key: an empty subject and `uri` as its only subject
    /// alternative name (istiod takes the identity from the caller's token and checks the CSR against it).
    public func certificateRequest(uri: String) throws(TLSError) -> String {
        defer { ERR_clear_error() }
        guard let bio = wp_csr_with_uri_san(raw, uri) else { throw TLSError("cannot make the certificate request") }
        defer { BIO_free(bio) }
        var data: UnsafeMutablePointer<CChar>? = nil
        let count = wp_bio_mem_data(bio, &data)
        guard let data, count > 0 else { throw TLSError("cannot make the certificate request") }
        return String(decoding: UnsafeRawBufferPointer(start: data, count: count), as: UTF8.self)
    }
}

/// What a certificate says about itself: validity, serial, URI SANs (for the config dump, the rotation
/// schedule and the checks on what a CA issued).
public struct CertificateInfo: Sendable, Equatable {
    /// Validity as Unix seconds.
    public let notBefore: Double
    public let notAfter: Double
    /// The serial number in hex.
    public let serial: String
    public let uris: [String]

    /// The first certificate of `pem` (a leaf-first chain); throws when there is none.
    public init(pem: String) throws(TLSError) {
        defer { ERR_clear_error() }
        let parsed: CertificateInfo? = Array(pem.utf8).withUnsafeBytes { bytes in
            guard let bio = BIO_new_mem_buf(bytes.baseAddress, Int32(bytes.count)) else { return nil }
            defer { BIO_free(bio) }
            guard let x509 = PEM_read_bio_X509(bio, nil, nil, nil) else { return nil }
            defer { X509_free(x509) }
            return CertificateInfo(x509)
        }
        guard let parsed else { throw TLSError("no readable certificate in the PEM") }
        self = parsed
    }

    private init?(_ x509: OpaquePointer) {
        guard let before = Self.unixTime(X509_get0_notBefore(x509)), let after = Self.unixTime(X509_get0_notAfter(x509)),
            let number = ASN1_INTEGER_to_BN(X509_get_serialNumber(x509), nil)
        else { return nil }
        defer { BN_free(number) }
        guard let hex = BN_bn2hex(number) else { return nil }
        defer { wp_openssl_free(hex) }
        notBefore = before
        notAfter = after
        serial = String(cString: hex)
        uris = Self.uris(of: x509)
    }

    private static func unixTime(_ time: UnsafePointer<ASN1_TIME>?) -> Double? {
        var parts = tm()
        guard let time, ASN1_TIME_to_tm(time, &parts) == 1 else { return nil }
        return Double(timegm(&parts))
    }

    /// The URI subject-alternative names of `x509`.
    static func uris(of x509: OpaquePointer) -> [String] { alternativeNames(of: x509, wp_general_name_uri) }

    /// The DNS subject-alternative names of `x509`.
    static func dnsNames(of x509: OpaquePointer) -> [String] { alternativeNames(of: x509, wp_general_name_dns) }

    /// The subject-alternative names of one type (`pick` gives a name's text when it is of that type).
    private static func alternativeNames(
        of x509: OpaquePointer, _ pick: (UnsafePointer<GENERAL_NAME>?) -> UnsafePointer<ASN1_IA5STRING>?
    ) -> [String] {
        guard let raw = X509_get_ext_d2i(x509, NID_subject_alt_name, nil, nil) else { return [] }
        let names = OpaquePointer(raw)
        defer { wp_general_names_free(names) }
        var found: [String] = []
        for i in 0..<wp_sk_general_name_num(names) {
            guard let name = wp_sk_general_name_value(names, i), let text = pick(name), let data = ASN1_STRING_get0_data(text)
            else { continue }
            found.append(String(decoding: UnsafeBufferPointer(start: data, count: Int(ASN1_STRING_length(text))), as: UTF8.self))
        }
        return found
    }
}
