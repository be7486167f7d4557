import Filters
import HTTP2
import WaypointCore

/// A delegate that does what the HBONE connection and the h2c proxy do with a session: answers each complete
/// request with 200 and a body, consumes what arrives, resets on the third stream, and checks that every
/// callback is about a stream it was told about.
final class FuzzPeer: HTTP2SessionDelegate {
    var session: HTTP2Session!
    var open: Set<Int32> = []
    var headerBytes = 0
    var completed = 0
    var limit = 0
    var isServer = false

    func http2BeginHeaders(stream: Int32) { open.insert(stream); headerBytes = 0 }
    func http2Header(stream: Int32, name: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer) {
        headerBytes += name.count + value.count + 32
        precondition(headerBytes <= limit, "a header list past the limit reached the delegate")
    }
    func http2HeadersComplete(stream: Int32, endStream: Bool) {
        completed += 1
        guard isServer else { return }
        if completed % 3 == 0 {
            session.reset(stream: stream, code: .cancel)
        } else {
            session.respond(stream: stream, status: 200, body: true)
        }
    }
    func http2Data(stream: Int32, _ bytes: UnsafeRawBufferPointer) { session.consume(stream: stream, bytes.count) }
    func http2RemoteEnded(stream: Int32) {}
    func http2StreamClosed(stream: Int32, errorCode: UInt32) { open.remove(stream) }
    func http2ReadData(stream: Int32, into buffer: UnsafeMutableRawBufferPointer) -> HTTP2DataChunk {
        let n = min(buffer.count, 5)
        buffer.initializeMemory(as: UInt8.self, repeating: 0x61)
        return .bytes(n, end: true)
    }
    func http2PingAcknowledged() {}
}

extension Harness {
    /// Raw bytes from a peer into a server session (HBONE's and h2c's) and a client session (upstream h2),
    /// split into reads where the first byte says; after a failure the last frame out is a GOAWAY.
    static func http2(_ data: UnsafeRawBufferPointer) {
        let preface = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8)
        for role in [HTTP2Session.Role.server, .client] {
            var settings = HTTP2Settings()
            settings.maxConcurrentStreams = 4
            settings.maxHeaderListSize = 1024
            let peer = FuzzPeer()
            peer.limit = Int(settings.maxHeaderListSize)
            peer.isServer = role == .server
            let session = HTTP2Session(role: role, settings: settings, delegate: peer)
            peer.session = session
            let out = ByteBuffer(capacity: 1 << 16)
            _ = session.send(into: out, limit: 1 << 20)
            var input = role == .server ? preface : []
            input += data
            let cut = data.isEmpty ? 0 : Int(data[0]) % (input.count + 1)
            var ok = true
            input.withUnsafeBytes { bytes in
                for piece in [bytes[0..<cut], bytes[cut...]] where ok {
                    ok = session.receive(UnsafeRawBufferPointer(rebasing: piece))
                    out.clear()
                    if ok { _ = session.send(into: out, limit: 1 << 20) }
                }
            }
            if !ok {
                precondition(session.failure != nil, "receive failed without a reason")
                out.clear()
                session.appendFinalFrames(into: out, limit: 1 << 20)
                precondition(out.readableBytes >= 17, "no GOAWAY after a failure")
            }
        }
    }

    /// Hardened paths (what DENY rules also see): never longer, absolute, no `;`, `//` or dot segment left.
    static func hardening(_ data: UnsafeRawBufferPointer) {
        _ = PathNormalization.withHardened(data) { hardened -> Void in
            precondition(hardened.count <= data.count && hardened.first == 0x2F, "hardened path grew or is not absolute")
            precondition(!hardened.contains(0x3B), "a ';' parameter is left")
            for segment in hardened.split(separator: 0x2F, omittingEmptySubsequences: false).dropFirst().dropLast() {
                precondition(
                    !segment.isEmpty && !segment.elementsEqual([0x2E]) && !segment.elementsEqual([0x2E, 0x2E]), "empty or dot segment left")
            }
        }
    }
}
