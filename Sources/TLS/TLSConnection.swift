internal import COpenSSL
public import EventLoop
internal import WaypointCore

/// Why a handshake did not complete; `label` is the metrics label.
public enum HandshakeFailure: Error, Equatable, Sendable {
    /// The client sent no certificate.
    case noCertificate
    /// The peer's certificate did not verify (untrusted, expired, not yet valid...): OpenSSL's verify error.
    case certificateRejected(String)
    /// Not TLS 1.3, no common cipher or group, no `h2` in ALPN, or malformed records.
    case protocolError(String)
    /// The peer closed the connection during the handshake.
    case closed

    public var label: String {
        switch self {
        case .noCertificate: return "no_certificate"
        case .certificateRejected: return "certificate_rejected"
        case .protocolError: return "protocol"
        case .closed: return "closed"
        }
    }
}

/// Progress of a non-blocking handshake.
public enum HandshakeProgress: Equatable {
    case done
    /// Call again when the socket is readable (or writable).
    case wantRead, wantWrite
    case failed(HandshakeFailure)
}

/// One TLS connection over a non-blocking socket. OpenSSL reads the fd itself; what it writes (records sealed
/// for the peer) goes to `sealed` and reaches the socket in one `write` per call: a 64 KiB `write(from:)` is
/// four records and one system call instead of four, and one TCP segment on the way (measured on a 256 MiB
/// HBONE download: the kernel's share per byte was what set us behind Envoy).
///
/// OpenSSL's error queue is per thread, shared by every connection of a worker, and `SSL_get_error` reports
/// `SSL_ERROR_SSL` whenever that queue is not empty: an error one connection left behind would make another
/// connection's harmless would-block look fatal. So every call here empties the queue before it calls OpenSSL
/// (as `SSL_get_error`'s manual requires, and as nghttpx does) and leaves it empty when it returns.
///
/// Thread: its connection's loop thread only. Ownership: one HBONE connection; frees the `SSL` in `deinit`
/// (the fd belongs to the caller).
public final class TLSConnection {
    private let ssl: OpaquePointer
    private let fd: Int32
    /// Records OpenSSL sealed that the socket has not taken yet: room for one record while idle, grown to fit
    /// each larger write and given back once the socket took it.
    fileprivate let sealed = ByteBuffer(lazyCapacity: TLSConnection.recordSpace)
    private static let recordSpace = 16 * 1024 + recordOverhead
    /// A TLS 1.3 record's header, content type and AEAD tag.
    private static let recordOverhead = 22
    /// The socket failed while taking sealed records; the next write reports it.
    private var sendError: Int32?

    public init?(context: TLSContext, fd: Int32) {
        guard let ssl = SSL_new(context.raw), let output = BIO_new(sealedRecordsMethod) else { return nil }
        self.ssl = ssl
        self.fd = fd
        SSL_set_rfd(ssl, fd)
        BIO_set_data(output, Unmanaged.passUnretained(self).toOpaque())
        BIO_set_init(output, 1)
        SSL_set0_wbio(ssl, output)
        if context.role == .server { SSL_set_accept_state(ssl) } else { SSL_set_connect_state(ssl) }
    }

    /// Whether decrypted or read-ahead input waits inside OpenSSL: the socket will not announce it, so a reader
    /// that stops before `read` answers `.wouldBlock` must come back by itself.
    public var hasBufferedInput: Bool { SSL_has_pending(ssl) == 1 }

    /// Whether decrypted application data waits inside OpenSSL (a record larger than the last read): the next
    /// `read` returns it without the socket.
    public var hasDecryptedInput: Bool { SSL_pending(ssl) > 0 }

    /// Whether sealed records still wait for the socket (call `flush` when it is writable).
    public var hasPendingOutput: Bool { !sealed.isEmpty }

    /// Writes sealed records to the socket; `.wouldBlock` while some remain (wait for writability).
    @discardableResult
    public func flush() -> IOResult {
        if let sendError { return .failed(sendError) }
        while !sealed.isEmpty {
            switch Socket.write(fd, from: sealed.readable) {
            case .bytes(let n):
                sealed.consume(n)
            case .wouldBlock:
                return .wouldBlock
            case .failed(let code):
                sendError = code
                return .failed(code)
            case .eof:
                sendError = 32  // EPIPE
                return .failed(32)
            }
        }
        sealed.shrink(above: Self.recordSpace)
        return .bytes(0)
    }

    deinit { SSL_free(ssl) }

    /// Client side: sends `name` as SNI and requires the server's certificate to be for it (a DNS name, or an IP
    /// address in its IP SANs). Call before the handshake.
    public func expectServer(_ name: String) {
        let param = SSL_get0_param(ssl)
        if name.contains(":") || name.utf8.allSatisfy({ $0 == 0x2E || ($0 >= 0x30 && $0 <= 0x39) }) {
            _ = X509_VERIFY_PARAM_set1_ip_asc(param, name)
        } else {
            _ = wp_ssl_set_server_name(ssl, name)
            _ = X509_VERIFY_PARAM_set1_host(param, name, 0)
        }
    }

    public func handshake() -> HandshakeProgress {
        if case .wouldBlock = flush() { return .wantWrite }
        ERR_clear_error()
        let rc = SSL_do_handshake(ssl)
        if case .wouldBlock = flush() { return .wantWrite }
        if rc == 1 { return .done }
        let error = SSL_get_error(ssl, rc)
        switch error {
        case SSL_ERROR_WANT_READ: return .wantRead
        case SSL_ERROR_WANT_WRITE: return .wantWrite
        case SSL_ERROR_ZERO_RETURN: return .failed(.closed)
        case SSL_ERROR_SYSCALL where ERR_peek_error() == 0: return .failed(.closed)
        default: return .failed(classifyFailure())
        }
    }

    private func classifyFailure() -> HandshakeFailure {
        let code = ERR_peek_error()
        let reason = ERR_GET_REASON(code)
        defer { ERR_clear_error() }
        if reason == SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE { return .noCertificate }
        let verify = SSL_get_verify_result(ssl)
        if reason == SSL_R_CERTIFICATE_VERIFY_FAILED || verify != X509_V_OK {
            return .certificateRejected(String(cString: X509_verify_cert_error_string(verify)))
        }
        guard let text = ERR_reason_error_string(code) else { return .protocolError("error \(reason)") }
        return .protocolError(String(cString: text))
    }

    @inline(__always)
    public func read(into buffer: UnsafeMutableRawBufferPointer) -> IOResult {
        clearErrorQueue()
        let rc = SSL_read(ssl, buffer.baseAddress, Int32(min(buffer.count, Int(Int32.max))))
        if !sealed.isEmpty { flush() }  // a key update or an alert the read answered
        if rc > 0 { return .bytes(Int(rc)) }
        return outcome(rc)
    }

    /// Seals `buffer` and sends it, after any records still waiting: `.wouldBlock` (nothing taken) while those
    /// cannot all go. Taken bytes the socket cannot take at once wait in `sealed`: see `hasPendingOutput`.
    @inline(__always)
    public func write(from buffer: UnsafeRawBufferPointer) -> IOResult {
        guard case .bytes = flush() else { return sendError.map { .failed($0) } ?? .wouldBlock }
        clearErrorQueue()
        sealed.reserve(buffer.count + (buffer.count / (16 * 1024) + 1) * Self.recordOverhead)
        let rc = SSL_write(ssl, buffer.baseAddress, Int32(min(buffer.count, Int(Int32.max))))
        if rc > 0 {
            flush()
            return .bytes(Int(rc))
        }
        return outcome(rc)
    }

    /// Empties the thread's error queue. Peeking first: clearing an empty queue costs ~10 times a peek, and on
    /// the hot path the queue is always empty (measured: +1,900 instructions per HBONE request otherwise).
    @inline(__always)
    private func clearErrorQueue() {
        if ERR_peek_error() != 0 { ERR_clear_error() }
    }

    private func outcome(_ rc: Int32) -> IOResult {
        switch SSL_get_error(ssl, rc) {
        case SSL_ERROR_WANT_READ, SSL_ERROR_WANT_WRITE:
            return .wouldBlock
        case SSL_ERROR_ZERO_RETURN:
            return .eof
        case SSL_ERROR_SYSCALL where ERR_peek_error() == 0:
            return .eof
        default:
            ERR_clear_error()
            return .failed(0)
        }
    }

    /// Sends close_notify (best effort; the socket is closed right after). A connection that failed or never
    /// finished its handshake gets none: OpenSSL would only queue an error ("shutdown while in init").
    public func shutdown() {
        ERR_clear_error()
        if SSL_is_init_finished(ssl) == 1 { _ = SSL_shutdown(ssl) }
        ERR_clear_error()
        flush()
    }

    /// The ALPN protocol agreed on, if any.
    public var negotiatedProtocol: String? {
        var data: UnsafePointer<UInt8>? = nil
        var length: UInt32 = 0
        SSL_get0_alpn_selected(ssl, &data, &length)
        guard let data, length > 0 else { return nil }
        return String(decoding: UnsafeBufferPointer(start: data, count: Int(length)), as: UTF8.self)
    }

    /// The URI subject-alternative names of the verified peer certificate (empty without one).
    public var peerURIs: [String] {
        defer { ERR_clear_error() }
        guard let cert = SSL_get0_peer_certificate(ssl) else { return [] }
        return CertificateInfo.uris(of: cert)
    }

    /// The DNS subject-alternative names of the peer certificate (empty without one).
    public var peerDNSNames: [String] {
        defer { ERR_clear_error() }
        guard let cert = SSL_get0_peer_certificate(ssl) else { return [] }
        return CertificateInfo.dnsNames(of: cert)
    }

    /// Client side: sends `name` as SNI only (the certificate is checked by the caller, against other names).
    public func sendServerName(_ name: String) {
        _ = wp_ssl_set_server_name(ssl, name)
    }

    /// Offers ALPN `h2` alone (a client about to speak HTTP/2, as Envoy offers it for an HTTP/2 cluster).
    public func offerH2() {
        let alpn: [UInt8] = [2, 0x68, 0x32]  // "h2"
        _ = SSL_set_alpn_protos(ssl, alpn, UInt32(alpn.count))
    }
}

/// The BIO that OpenSSL writes sealed records to: they are appended to the connection's `sealed` buffer (the
/// BIO's data), never refused.
/// SAFETY: made once (a lazy global), only read after; OpenSSL allows one BIO_METHOD across threads.
nonisolated(unsafe) private let sealedRecordsMethod: OpaquePointer = {
    guard let method = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "waypoint sealed records") else {
        fatalError("OpenSSL: cannot create a BIO method")
    }
    _ = BIO_meth_set_write(method) { bio, data, length in
        let connection = Unmanaged<TLSConnection>.fromOpaque(BIO_get_data(bio)).takeUnretainedValue()
        connection.sealed.append(UnsafeRawBufferPointer(start: data, count: Int(length)))
        return length
    }
    // OpenSSL flushes when its handshake turns from writing to reading (and a blocking socket must have sent
    // its flight by then); application data is flushed by the connection, after each whole write.
    _ = BIO_meth_set_ctrl(method) { bio, command, _, _ in
        guard command == BIO_CTRL_FLUSH else { return 0 }
        BIO_clear_flags(bio, BIO_FLAGS_READ | BIO_FLAGS_WRITE | BIO_FLAGS_IO_SPECIAL | BIO_FLAGS_SHOULD_RETRY)
        switch Unmanaged<TLSConnection>.fromOpaque(BIO_get_data(bio)).takeUnretainedValue().flush() {
        case .bytes: return 1
        case .wouldBlock:
            BIO_set_flags(bio, BIO_FLAGS_WRITE | BIO_FLAGS_SHOULD_RETRY)
            return -1
        case .eof, .failed: return -1
        }
    }
    return method
}()
