internal import COpenSSL

/// A certificate, key or trust bundle that could not be loaded, or an OpenSSL call that failed at set-up.
public struct TLSError: Error, CustomStringConvertible, Sendable {
    public let description: String
    init(_ description: String) { self.description = description + Self.drainErrors() }

    /// The OpenSSL error queue as text (and emptied, so the next call starts clean).
    static func drainErrors() -> String {
        var text = ""
        while case let code = ERR_get_error(), code != 0 {
            var buffer = [CChar](repeating: 0, count: 256)
            ERR_error_string_n(code, &buffer, buffer.count)
            text += ": " + String(decoding: buffer.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
        }
        return text
    }
}

/// An OpenSSL `SSL_CTX` set up for HBONE: TLS 1.3 only, ALPN `h2`, peer certificate required and verified
/// against the trust bundle, no session resumption (ztunnel never resumes), P-256/P-384/X25519 key exchange.
///
/// Why one context per role and certificate generation: creating the context parses the PEM files once;
/// every connection then costs only `SSL_new` (FACTS §4: handshakes are dominated by per-connection work).
/// A rotated certificate makes a new context; connections made with the old one keep it alive (refcounted).
///
/// Thread: any. It is configured in `init` and never changed after, and OpenSSL allows `SSL_new` on a shared
/// context from many threads. Ownership: shared; the last reference frees it.
public final class TLSContext: @unchecked Sendable {
    // SAFETY: the SSL_CTX is fully configured in init and only read (SSL_new) afterwards.
    public enum Role: Sendable { case server, client }

    let raw: OpaquePointer
    public let role: Role

    /// Loads `certificateFile` (PEM chain), `keyFile` and `trustBundleFile` (PEM CAs); throws naming the file.
    public init(role: Role, certificateFile: String, keyFile: String, trustBundleFile: String) throws(TLSError) {
        // Loading may leave recovered errors queued on this thread (one of its workers, on a rotation): none stay.
        defer { ERR_clear_error() }
        raw = try Self.hboneContext(role)
        self.role = role
        guard SSL_CTX_use_certificate_chain_file(raw, certificateFile) == 1 else {
            throw TLSError("\(certificateFile): cannot load the certificate chain")
        }
        guard SSL_CTX_use_PrivateKey_file(raw, keyFile, SSL_FILETYPE_PEM) == 1 else {
            throw TLSError("\(keyFile): cannot load the private key")
        }
        guard SSL_CTX_check_private_key(raw) == 1 else {
            throw TLSError("\(keyFile): the private key does not match the certificate in \(certificateFile)")
        }
        guard SSL_CTX_load_verify_locations(raw, trustBundleFile, nil) == 1 else {
            throw TLSError("\(trustBundleFile): cannot load the trust bundle")
        }
    }

    /// The same from memory: a certificate chain (PEM, leaf first) issued for `key`, and the trust bundle (PEM
    /// CAs), as the mesh's CA returned them. `source` names where they came from in errors.
    public init(role: Role, certificateChain: String, key: PrivateKey, trustBundle: String, source: String) throws(TLSError) {
        defer { ERR_clear_error() }
        raw = try Self.hboneContext(role)
        self.role = role
        try Self.useCertificateChain(raw, certificateChain, source: source)
        guard SSL_CTX_use_PrivateKey(raw, key.raw) == 1, SSL_CTX_check_private_key(raw) == 1 else {
            throw TLSError("\(source): the certificate was not issued for this key")
        }
        try Self.trust(raw, trustBundle, source: source)
    }

    /// A new context with HBONE's settings for `role` (freed here if a setting fails).
    private static func hboneContext(_ role: Role) throws(TLSError) -> OpaquePointer {
        guard let ctx = SSL_CTX_new(role == .server ? TLS_server_method() : TLS_client_method()) else {
            throw TLSError("SSL_CTX_new failed")
        }
        var ok = false
        defer { if !ok { SSL_CTX_free(ctx) } }
        guard wp_ssl_ctx_tls13_only(ctx) == 1 else { throw TLSError("cannot restrict to TLS 1.3") }
        _ = wp_ssl_ctx_set_mode(ctx, wp_ssl_mode_whole_writes())
        // Read ahead, up to 64 KiB per read(2): without it OpenSSL reads each record in at least two calls (its
        // 5-byte header, then its body): 62,000 reads for a 256 MiB upload, 8,000 with. Released while idle.
        wp_ssl_ctx_read_ahead(ctx)
        SSL_CTX_set_default_read_buffer_len(ctx, 64 * 1024)
        SSL_CTX_set_options(ctx, wp_ssl_op_no_ticket())
        _ = wp_ssl_ctx_session_cache_off(ctx)
        guard wp_ssl_ctx_set_groups(ctx, "P-256:P-384:X25519") == 1 else { throw TLSError("cannot set key exchange groups") }
        guard SSL_CTX_set_ciphersuites(ctx, "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256") == 1 else {
            throw TLSError("cannot set cipher suites")
        }
        switch role {
        case .server:
            // mTLS: no certificate, or one that does not chain to the bundle, fails the handshake with an alert.
            SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nil)
            wp_ssl_ctx_require_alpn_h2(ctx)
        case .client:
            SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nil)
            try offerH2(ctx)
        }
        ok = true
        return ctx
    }

    private static func offerH2(_ ctx: OpaquePointer) throws(TLSError) {
        let alpn: [UInt8] = [2, 0x68, 0x32]  // "h2"
        guard SSL_CTX_set_alpn_protos(ctx, alpn, UInt32(alpn.count)) == 0 else { throw TLSError("cannot set ALPN") }
    }

    /// The first certificate of `pem` as the context's own, the rest as the chain sent after it.
    private static func useCertificateChain(_ ctx: OpaquePointer, _ pem: String, source: String) throws(TLSError) {
        var count = 0
        try eachPEM(pem, source: source) { (bio) throws(TLSError) in
            while let x509 = PEM_read_bio_X509(bio, nil, nil, nil) {
                defer { X509_free(x509) }
                let used = count == 0 ? SSL_CTX_use_certificate(ctx, x509) : Int32(wp_ssl_ctx_add1_chain_cert(ctx, x509))
                guard used == 1 else { throw TLSError("\(source): cannot use certificate \(count + 1) of the chain") }
                count += 1
            }
        }
        guard count > 0 else { throw TLSError("\(source): no certificate in the chain") }
    }

    /// Every CA certificate of `pem` as trusted; throws when there is none.
    private static func trust(_ ctx: OpaquePointer, _ pem: String, source: String) throws(TLSError) {
        let store = SSL_CTX_get_cert_store(ctx)
        var added = 0
        try eachPEM(pem, source: source) { (bio) throws(TLSError) in
            while let certificate = PEM_read_bio_X509(bio, nil, nil, nil) {
                defer { X509_free(certificate) }
                guard X509_STORE_add_cert(store, certificate) == 1 else { throw TLSError("\(source): cannot add a CA certificate") }
                added += 1
            }
        }
        guard added > 0 else { throw TLSError("\(source): no CA certificate in the trust bundle") }
    }

    /// A client context for an HTTPS API (the Kubernetes API server; istiod's CA with `http2`): TLS 1.2 or
    /// later, ALPN `h2` when `http2` (else none: HTTP/1.1), the server's certificate verified against
    /// `trustBundle` (PEM text), and a client certificate when `certificate` and `key` (PEM text) are given.
    /// `source` names where the PEM came from in errors. `verifyPeer` false accepts any server certificate
    /// (DestinationRule `insecureSkipVerify`; the trust bundle may then be empty).
    public init(
        httpsClientTrusting trustBundle: String, certificate: String? = nil, key: String? = nil, http2: Bool = false,
        verifyPeer: Bool = true, source: String
    ) throws(TLSError) {
        defer { ERR_clear_error() }
        guard let ctx = SSL_CTX_new(TLS_client_method()) else { throw TLSError("SSL_CTX_new failed") }
        raw = ctx
        role = .client
        guard wp_ssl_ctx_tls12_or_later(ctx) == 1 else { throw TLSError("cannot require TLS 1.2") }
        SSL_CTX_set_verify(ctx, verifyPeer ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, nil)
        if http2 { try Self.offerH2(ctx) }
        if verifyPeer || !trustBundle.isEmpty { try Self.trust(ctx, trustBundle, source: source) }
        if let certificate, let key {
            try Self.eachPEM(certificate, source: source) { (bio) throws(TLSError) in
                guard let x509 = PEM_read_bio_X509(bio, nil, nil, nil) else {
                    throw TLSError("\(source): cannot read the client certificate")
                }
                defer { X509_free(x509) }
                guard SSL_CTX_use_certificate(ctx, x509) == 1 else { throw TLSError("\(source): cannot use the client certificate") }
            }
            try Self.eachPEM(key, source: source) { (bio) throws(TLSError) in
                guard let pkey = PEM_read_bio_PrivateKey(bio, nil, nil, nil) else {
                    throw TLSError("\(source): cannot read the client key")
                }
                defer { EVP_PKEY_free(pkey) }
                guard SSL_CTX_use_PrivateKey(ctx, pkey) == 1, SSL_CTX_check_private_key(ctx) == 1 else {
                    throw TLSError("\(source): the client key does not match the client certificate")
                }
            }
        }
    }

    /// Runs `body` with a memory BIO over `pem`.
    private static func eachPEM(_ pem: String, source: String, _ body: (OpaquePointer) throws(TLSError) -> Void) throws(TLSError) {
        let result: Result<Void, TLSError> = Array(pem.utf8).withUnsafeBytes { bytes in
            guard let bio = BIO_new_mem_buf(bytes.baseAddress, Int32(bytes.count)) else {
                return .failure(TLSError("\(source): cannot read PEM"))
            }
            defer { BIO_free(bio) }
            do throws(TLSError) { try body(bio) } catch { return .failure(error) }
            return .success(())
        }
        try result.get()
    }

    deinit { SSL_CTX_free(raw) }
}
