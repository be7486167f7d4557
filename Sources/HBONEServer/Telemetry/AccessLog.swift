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

    /// Appends one finished request.
    func record(_ entry: borrowing Entry) {
        let out = buffer
        let request = entry.request
        out.append("{\"start_time\":\"")
        appendTimestamp(entry.startTime)
        out.append("\",\"start_time_ms\":")
        out.appendDecimal(Int(entry.startTime * 1000))
        out.append(",\"method\":\"")
        appendEscaped(request[.method])
        out.append("\",\"path\":\"")
        appendEscaped(request[.path])
        out.append("\",\"authority\":\"")
        appendEscaped(request[.authority])
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
        out.append(",\"user_agent\":")
        appendOptional(request[.userAgent])
        out.append(",\"x_forwarded_for\":")
        appendOptional(request[.forwardedFor])
        out.append(",\"request_id\":")
        appendOptional(request[.requestID])
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
        if let grpc = entry.grpc {
            out.append(",\"grpc_status\":")
            out.appendDecimal(grpc.code)
            out.append(",\"grpc_message\":")
            var message = grpc.message ?? ""
            message.withUTF8 { appendOptional(UnsafeRawBufferPointer($0)) }
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
        /// What the line says about the request itself, whatever carried it.
        var request: RequestLogFields
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
        /// A gRPC call's status and message, when its answer carried them.
        var grpc: GRPCStatus? = nil
    }

    /// A JSON string of the bytes, or `null` when there are none.
    private func appendOptional(_ bytes: UnsafeRawBufferPointer) {
        guard !bytes.isEmpty else { buffer.append("null"); return }
        buffer.append("\"")
        appendEscaped(bytes)
        buffer.append("\"")
    }

    /// `time` (Unix seconds) as RFC 3339 UTC with milliseconds, as Envoy's `%START_TIME%`.
    private func appendTimestamp(_ time: Double) {
        let millis = Int(time * 1000)
        let (days, dayMillis) = millis.quotientAndRemainder(dividingBy: 86_400_000)
        // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
        let z = days + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let doe = z - era * 146_097
        let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let day = doy - (153 * mp + 2) / 5 + 1
        let month = mp < 10 ? mp + 3 : mp - 9
        let year = yoe + era * 400 + (month <= 2 ? 1 : 0)
        func two(_ n: Int) { if n < 10 { buffer.append(0x30) }; buffer.appendDecimal(n) }
        buffer.appendDecimal(year)
        buffer.append(0x2D); two(month)
        buffer.append(0x2D); two(day)
        buffer.append(0x54); two(dayMillis / 3_600_000)
        buffer.append(0x3A); two(dayMillis / 60_000 % 60)
        buffer.append(0x3A); two(dayMillis / 1000 % 60)
        buffer.append(0x2E)
        let ms = dayMillis % 1000
        if ms < 100 { buffer.append(0x30) }
        if ms < 10 { buffer.append(0x30) }
        buffer.appendDecimal(ms)
        buffer.append(0x5A)
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

/// What an access-log line says about the request, copied when its head is parsed (those bytes do not live until
/// the exchange ends) into one buffer, in `Field` order: the same fields, kept the same way, whether the request
/// came as HTTP/1.1 or HTTP/2. A field never kept reads as empty (logged as `null`).
///
/// Thread: its worker's loop thread only. Ownership: one downstream connection (reused for each of its requests)
/// or one h2c exchange.
final class RequestLogFields {
    enum Field: Int {
        case method, path, authority
        /// Headers Istio's default log format carries: user-agent and x-forwarded-for as received, x-request-id
        /// as sent upstream.
        case userAgent, forwardedFor, requestID
    }

    private let buffer = ByteBuffer(lazyCapacity: 256)
    /// Where each field ends in `buffer`; fields after `kept` are empty. Raw memory: an array cost ~200
    /// instructions per logged request in copy-on-write and bounds checks (callgrind).
    private let ends = UnsafeMutablePointer<Int>.allocate(capacity: 6)
    private var kept = 0

    deinit { ends.deallocate() }

    /// Keeps `field`'s bytes: fields come in `Field` order, and the last one kept may be given again to replace it
    /// (the request id generated for the upstream is known only when the request is forwarded).
    func keep(_ field: Field, _ bytes: UnsafeRawBufferPointer) {
        precondition(field.rawValue + 1 >= kept, "log fields out of order")
        if field.rawValue + 1 == kept { kept -= 1 }
        let start = kept == 0 ? 0 : ends[kept - 1]
        buffer.truncate(to: start)
        for i in kept..<field.rawValue { ends[i] = start }
        buffer.append(bytes)
        ends[field.rawValue] = buffer.readableBytes
        kept = field.rawValue + 1
    }

    func keep(_ field: Field, _ text: String) {
        var text = text
        text.withUTF8 { keep(field, UnsafeRawBufferPointer($0)) }
    }

    subscript(field: Field) -> UnsafeRawBufferPointer {
        guard field.rawValue < kept else { return UnsafeRawBufferPointer(start: nil, count: 0) }
        let start = field.rawValue == 0 ? 0 : ends[field.rawValue - 1]
        return UnsafeRawBufferPointer(rebasing: buffer.readable[start..<ends[field.rawValue]])
    }

    /// For the next request.
    func clear() {
        buffer.clear()
        kept = 0
    }
}
