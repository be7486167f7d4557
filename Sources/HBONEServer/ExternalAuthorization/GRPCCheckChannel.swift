import Filters
import HTTP2
import WaypointCore

/// An HTTP/2 connection (prior knowledge) to a gRPC external authorizer (`envoyExtAuthzGrpc`): each check is
/// one `envoy.service.auth.v3.Authorization/Check` call on its own stream. The call's answer is read whole (at
/// most `maxAnswer` bytes); a call that does not end with grpc-status 0 and one readable `CheckResponse`
/// failed, as Envoy counts it.
///
/// Thread: its worker's loop thread only. Ownership: its `ExternalAuthorization`, until the connection closes.
final class GRPCCheckChannel: HTTP2SessionDelegate {
    static let maxAnswer = 64 * 1024
    static let path = "/envoy.service.auth.v3.Authorization/Check"

    /// One call on its stream.
    private struct Pending {
        let call: ExternalCheckCall
        /// The framed request message and how much of it went out.
        var request: [UInt8]
        var sent = 0
        var status = ""
        var grpcStatus: Int?
        var answer: [UInt8] = []
        var oversized = false
    }

    private var channel: HTTP2Channel!
    private let headers: [(String, String)]
    private var calls: [Int32: Pending] = [:]
    var onClosed: (() -> Void)?

    init(stream: any ByteStream, authority: String, timeout: Duration) {
        let millis = max(1, min(99_999_999, timeout.components.seconds * 1000 + timeout.components.attoseconds / 1_000_000_000_000_000))
        headers = [
            (":method", "POST"), (":scheme", "http"), (":path", Self.path), (":authority", authority),
            ("content-type", "application/grpc"), ("te", "trailers"), ("grpc-timeout", "\(millis)m"),
        ]
        channel = HTTP2Channel(stream: stream, role: .client, delegate: self)
        channel.onClosed = { [unowned(unsafe) self] in self.channelClosed() }
    }

    /// Whether another call may start here (open, no GOAWAY, under the peer's stream limit).
    var takesCalls: Bool {
        !channel.closed && channel.session.acceptsNewRequests && calls.count < min(100, channel.session.peerMaxConcurrentStreams)
    }

    /// Starts a call with the `CheckRequest` message; false when no stream could be opened. The bytes go out
    /// from the loop's next writability, never from inside this call (whose caller is still deciding).
    func send(_ message: [UInt8], call: ExternalCheckCall) -> Bool {
        var framed: [UInt8] = [0]
        withUnsafeBytes(of: UInt32(message.count).bigEndian) { framed += $0 }
        framed += message
        guard let id = channel.session.request(headers: headers, body: true) else { return false }
        calls[id] = Pending(call: call, request: framed)
        call.onCancel = { [unowned(unsafe) self] in self.cancel(id) }
        channel.stream.setWriteInterest(true)
        return true
    }

    private func cancel(_ id: Int32) {
        guard calls.removeValue(forKey: id) != nil else { return }
        channel.session.reset(stream: id, code: .cancel)
        channel.stream.setWriteInterest(true)
    }

    private func channelClosed() {
        let pending = calls
        calls.removeAll()
        for (_, call) in pending { call.call.finish(.failed) }
        onClosed?()
    }

    // MARK: HTTP2SessionDelegate

    func http2BeginHeaders(stream: Int32) {}

    func http2Header(stream: Int32, name: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer) {
        guard calls[stream] != nil else { return }
        if HTTP1Parser.equalsLowercase(name, ":status") {
            calls[stream]!.status = String(decoding: value, as: UTF8.self)
        } else if HTTP1Parser.equalsLowercase(name, "grpc-status") {
            calls[stream]!.grpcStatus = Int(String(decoding: value, as: UTF8.self))
        }
    }

    func http2HeadersComplete(stream: Int32, endStream: Bool) {}

    func http2Data(stream: Int32, _ bytes: UnsafeRawBufferPointer) {
        channel.session.consume(stream: stream, bytes.count)
        guard calls[stream] != nil else { return }
        if calls[stream]!.answer.count + bytes.count <= Self.maxAnswer {
            calls[stream]!.answer += bytes
        } else {
            calls[stream]!.oversized = true
        }
    }

    func http2RemoteEnded(stream: Int32) {}

    func http2StreamClosed(stream: Int32, errorCode: UInt32) {
        guard let pending = calls.removeValue(forKey: stream) else { return }
        pending.call.finish(Self.outcome(pending))
    }

    /// The call's outcome: the `CheckResponse`'s when the call succeeded with exactly one uncompressed message.
    private static func outcome(_ pending: Pending) -> ExternalAuthorizer.Outcome {
        let answer = pending.answer
        guard pending.status == "200", pending.grpcStatus == 0, !pending.oversized, answer.count >= 5, answer[0] == 0 else {
            return .failed
        }
        let length = answer[1..<5].reduce(0) { $0 << 8 | Int($1) }
        guard answer.count == 5 + length, let outcome = try? ExternalAuthorizer.outcome(checkResponse: answer[5...]) else {
            return .failed
        }
        return outcome
    }

    func http2ReadData(stream: Int32, into buffer: UnsafeMutableRawBufferPointer) -> HTTP2DataChunk {
        guard let pending = calls[stream] else { return .bytes(0, end: true) }
        let n = min(buffer.count, pending.request.count - pending.sent)
        pending.request[pending.sent..<(pending.sent + n)].withUnsafeBytes { buffer.copyMemory(from: $0) }
        calls[stream]!.sent += n
        return .bytes(n, end: pending.sent + n == pending.request.count)
    }

    func http2PingAcknowledged() {}
}
