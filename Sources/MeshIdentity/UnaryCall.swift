import EventLoop
import HTTP2
import TLS
import WaypointCore

/// One unary gRPC call over TLS + HTTP/2, blocking on the calling thread (a control-plane thread, never a
/// worker): the request message framed as gRPC (RFC-less but fixed: a zero flag byte and a 4-byte length),
/// the answer's one message and the call's status from its trailers, or from the head of a trailers-only
/// answer. Each read and write waits at most `timeout`; the answer is bounded at `maxResponse` bytes.
///
/// Thread: the caller's. Ownership: `perform` makes and drops it.
final class UnaryCall: HTTP2SessionDelegate {
    /// An answer larger than this is refused (a certificate chain is a few KiB).
    static let maxResponse = 1 << 20

    private var request: [UInt8]
    private var sent = 0
    private var stream: Int32 = -1
    private var fields: [String: String] = [:]
    private var response: [UInt8] = []
    private var closed: UInt32?
    private var oversized = false
    private var session: HTTP2Session!

    private init(message: [UInt8]) {
        var framed: [UInt8] = [0]
        withUnsafeBytes(of: UInt32(message.count).bigEndian) { framed += $0 }
        request = framed + message
        session = HTTP2Session(role: .client, settings: HTTP2Settings(), delegate: self)
    }

    /// Calls `path` on `host:port` (verified as `serverName`) with `metadata`; returns the answer's message or
    /// throws saying what went wrong (connect, TLS, HTTP, or the gRPC status and message).
    static func perform(
        host: String, port: UInt16, serverName: String, context: TLSContext, path: String, metadata: [(String, String)],
        message: [UInt8], timeout: Duration
    ) throws(CAError) -> [UInt8] {
        guard let address = Socket.resolve(host, port) else { throw CAError("cannot resolve \(host)") }
        let fd: Int32
        switch Socket.connectBlocking(to: address, timeout: timeout) {
        case .success(let socket): fd = socket
        case .failure(let error): throw CAError("\(error)")
        }
        defer { Socket.close(fd) }
        guard let tls = TLSConnection(context: context, fd: fd) else { throw CAError("TLS set-up failed") }
        defer { tls.shutdown() }
        tls.expectServer(serverName)
        switch tls.handshake() {
        case .done: break
        case .failed(let failure): throw CAError("TLS handshake with \(host):\(port) (as \(serverName)) failed: \(failure.label)")
        default: throw CAError("TLS handshake with \(host):\(port) timed out")
        }
        guard tls.negotiatedProtocol == "h2" else { throw CAError("\(host):\(port) does not speak HTTP/2 (ALPN h2)") }
        let call = UnaryCall(message: message)
        return try call.run(tls: tls, authority: "\(host):\(port)", path: path, metadata: metadata)
    }

    private func run(tls: TLSConnection, authority: String, path: String, metadata: [(String, String)]) throws(CAError) -> [UInt8] {
        let headers =
            [
                (":method", "POST"), (":scheme", "https"), (":path", path), (":authority", authority),
                ("content-type", "application/grpc"), ("te", "trailers"), ("user-agent", "waypoint"),
            ] + metadata
        guard let id = session.request(headers: headers, body: true) else { throw CAError("cannot open the HTTP/2 stream") }
        stream = id
        let out = ByteBuffer(capacity: 16 * 1024)
        var chunk = [UInt8](repeating: 0, count: 16 * 1024)
        while true {
            guard session.send(into: out, limit: 64 * 1024) else { throw CAError("HTTP/2 session failed") }
            while !out.isEmpty {
                guard case .bytes(let n) = tls.write(from: out.readable) else { throw CAError("the connection failed while sending") }
                out.consume(n)
            }
            if closed != nil { break }
            let result = chunk.withUnsafeMutableBytes { tls.read(into: $0) }
            switch result {
            case .bytes(let n):
                guard chunk.withUnsafeBytes({ session.receive(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }) else {
                    throw CAError("the server broke the HTTP/2 protocol")
                }
            case .eof: throw CAError("the server closed the connection before answering")
            case .wouldBlock: throw CAError("no answer in time")
            case .failed: throw CAError("the connection failed")
            }
        }
        return try answer()
    }

    /// The message, or the error the head, the status or the framing says.
    private func answer() throws(CAError) -> [UInt8] {
        guard !oversized else { throw CAError("the answer is over \(Self.maxResponse) bytes") }
        guard let status = fields[":status"] else { throw CAError("the stream ended without an answer (reset code \(closed ?? 0))") }
        guard status == "200" else { throw CAError("HTTP status \(status)") }
        guard let grpcStatus = fields["grpc-status"].flatMap({ Int($0) }) else {
            throw CAError("the answer has no grpc-status (stream reset code \(closed ?? 0))")
        }
        guard grpcStatus == 0 else {
            let message = fields["grpc-message"].map { percentDecoded($0[...]) } ?? ""
            throw CAError("grpc-status \(grpcStatus) (\(Self.statusName(grpcStatus))): \(message)")
        }
        guard response.count >= 5, response[0] == 0 else { throw CAError("the answer is not one uncompressed gRPC message") }
        let length = response[1..<5].reduce(0) { $0 << 8 | Int($1) }
        guard response.count == 5 + length else { throw CAError("the answer's gRPC framing is wrong") }
        return Array(response[5...])
    }

    /// gRPC's status names, for error messages.
    static func statusName(_ code: Int) -> String {
        let names = [
            "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
            "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED",
            "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
        ]
        return code >= 0 && code < names.count ? names[code] : "status \(code)"
    }

    // MARK: HTTP2SessionDelegate

    func http2BeginHeaders(stream: Int32) {}

    func http2Header(stream: Int32, name: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer) {
        guard stream == self.stream else { return }
        fields[String(decoding: name, as: UTF8.self)] = String(decoding: value, as: UTF8.self)
    }

    func http2HeadersComplete(stream: Int32, endStream: Bool) {}

    func http2Data(stream: Int32, _ bytes: UnsafeRawBufferPointer) {
        guard stream == self.stream else { return }
        session.consume(stream: stream, bytes.count)
        if response.count + bytes.count <= Self.maxResponse {
            response += bytes
        } else {
            oversized = true
            session.reset(stream: stream, code: .cancel)
        }
    }

    func http2RemoteEnded(stream: Int32) {}

    func http2StreamClosed(stream: Int32, errorCode: UInt32) {
        if stream == self.stream { closed = errorCode }
    }

    func http2ReadData(stream: Int32, into buffer: UnsafeMutableRawBufferPointer) -> HTTP2DataChunk {
        let n = min(buffer.count, request.count - sent)
        request[sent..<(sent + n)].withUnsafeBytes { buffer.copyMemory(from: $0) }
        sent += n
        return .bytes(n, end: sent == request.count)
    }

    func http2PingAcknowledged() {}
}
