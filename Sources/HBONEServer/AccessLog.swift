#if canImport(Glibc)
import Glibc
#endif
import EventLoop
import WaypointCore

/// One JSON line per request, field names as in Envoy's/Istio's JSON access log. Lines are batched per loop
/// iteration and written with one `write(2)` just before the loop blocks, so logging costs no syscall per request.
///
/// Thread: its worker's loop thread only. Ownership: the worker's `ProxyServer`.
final class AccessLog {
    private let buffer = ByteBuffer(capacity: 16 * 1024)
    private let fd: Int32
    private var flusher: PrepareWatcher?

    init(loop: EventLoop, fd: Int32 = 1) {
        self.fd = fd
        flusher = PrepareWatcher(loop: loop) { [unowned(unsafe) self] in self.flush() }
    }

    /// Appends one finished request; its byte views are valid only during the call.
    func record(_ entry: borrowing Entry) {
        let out = buffer
        out.append("{\"start_time_ms\":")
        out.appendDecimal(Int(entry.startTime * 1000))
        out.append(",\"method\":\"")
        appendEscaped(entry.method)
        out.append("\",\"path\":\"")
        appendEscaped(entry.path)
        out.append("\",\"authority\":\"")
        appendEscaped(entry.authority)
        out.append("\",\"protocol\":\"")
        out.append(entry.protocol)
        out.append("\",\"response_code\":")
        out.appendDecimal(entry.status)
        out.append(",\"response_flags\":\"")
        out.append(entry.flags)
        out.append("\",\"bytes_received\":")
        out.appendDecimal(entry.bytesReceived)
        out.append(",\"bytes_sent\":")
        out.appendDecimal(entry.bytesSent)
        out.append(",\"duration\":")
        out.appendDecimal(Int((entry.duration * 1000).rounded()))
        out.append(",\"downstream_remote_address\":\"")
        out.append(string: entry.client)
        out.append("\",\"downstream_peer_principal\":")
        appendOptional(entry.principal)
        out.append(",\"upstream_host\":")
        appendOptional(entry.upstream)
        out.append(",\"route_name\":")
        appendOptional(entry.route)
        out.append(",\"authorization_policy\":")
        appendOptional(entry.policy)
        if entry.attempts > 0 {
            out.append(",\"upstream_request_attempt_count\":")
            out.appendDecimal(entry.attempts)
        }
        if let note = entry.retryNote {
            out.append(",\"retry\":\"")
            out.append(note)
            out.append("\"")
        }
        out.append("}\n")
        if out.readableBytes > 12 * 1024 { flush() }
    }

    struct Entry: ~Copyable {
        var startTime: Double
        var duration: Double
        var method: UnsafeRawBufferPointer
        var path: UnsafeRawBufferPointer
        var authority: UnsafeRawBufferPointer
        /// `HTTP/1.1` or `HTTP/2` (h2c inside a tunnel).
        var `protocol`: StaticString
        var client: String
        /// The caller's SPIFFE principal (HBONE and PROXY sandwich), nil on the plaintext listener.
        var principal: String?
        var status: Int
        /// Envoy response flags: `-`, `UF` (upstream connect failure), `UC` (upstream closed), `NR` (no route),
        /// `UH` (no healthy upstream), `DC` (downstream closed), `RBAC` (denied by authorization).
        var flags: StaticString
        var bytesReceived: Int
        var bytesSent: Int
        var upstream: String?
        var route: String?
        /// The AuthorizationPolicy that allowed or denied the request, if one decided.
        var policy: String? = nil
        /// Tries made upstream (0: none, answered locally).
        var attempts = 0
        /// Why a failure that called for a retry was returned as is.
        var retryNote: StaticString? = nil
    }

    /// A JSON string, or `null`.
    private func appendOptional(_ value: String?) {
        guard let value else { buffer.append("null"); return }
        buffer.append("\"")
        buffer.append(string: value)
        buffer.append("\"")
    }

    private func appendEscaped(_ bytes: UnsafeRawBufferPointer) {
        for b in bytes {
            if b == 0x22 || b == 0x5C { buffer.append(0x5C) }
            if b < 0x20 { buffer.append("?") } else { buffer.append(b) }
        }
    }

    func flush() {
        while !buffer.isEmpty {
            let n = write(fd, buffer.readable.baseAddress, buffer.readableBytes)
            if n <= 0 { if n < 0 && errno == EINTR { continue }; buffer.clear(); return }  // stdout gone: drop, never stall
            buffer.consume(n)
        }
    }
}
