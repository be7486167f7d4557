import HTTP2
import Testing
import WaypointCore

/// Records what a session decodes, and serves DATA from `outgoing`.
final class Recorder: HTTP2SessionDelegate {
    var headers: [Int32: [(String, String)]] = [:]
    var complete: [Int32] = []
    var data: [Int32: [UInt8]] = [:]
    var ended: Set<Int32> = []
    var closed: [Int32: UInt32] = [:]
    var outgoing: [Int32: [UInt8]] = [:]
    var endAfterOutgoing: Set<Int32> = []
    var pings = 0

    func http2BeginHeaders(stream: Int32) { headers[stream] = [] }
    func http2Header(stream: Int32, name: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer) {
        headers[stream, default: []].append((String(decoding: name, as: UTF8.self), String(decoding: value, as: UTF8.self)))
    }
    func http2HeadersComplete(stream: Int32, endStream: Bool) { complete.append(stream) }
    func http2Data(stream: Int32, _ bytes: UnsafeRawBufferPointer) { data[stream, default: []] += bytes }
    func http2RemoteEnded(stream: Int32) { ended.insert(stream) }
    func http2StreamClosed(stream: Int32, errorCode: UInt32) { closed[stream] = errorCode }
    func http2ReadData(stream: Int32, into buffer: UnsafeMutableRawBufferPointer) -> HTTP2DataChunk {
        let bytes = outgoing[stream] ?? []
        let n = min(bytes.count, buffer.count)
        buffer.copyBytes(from: bytes[0..<n])
        outgoing[stream] = Array(bytes[n...])
        let end = outgoing[stream]!.isEmpty && endAfterOutgoing.contains(stream)
        return n == 0 && !end ? .deferred : .bytes(n, end: end)
    }
    func http2PingAcknowledged() { pings += 1 }
}

/// A client and a server session wired through memory, as HBONE uses them (CONNECT streams carrying bytes).
@Suite struct HTTP2SessionTests {
    let client = Recorder(), server = Recorder()
    let clientSession: HTTP2Session, serverSession: HTTP2Session

    init() {
        clientSession = HTTP2Session(role: .client, settings: HTTP2Settings(), delegate: client)
        serverSession = HTTP2Session(role: .server, settings: HTTP2Settings(), delegate: server)
    }

    /// Moves bytes both ways until neither side has anything to send.
    func exchange() {
        let buffer = ByteBuffer(capacity: 1 << 16)
        for _ in 0..<20 {
            buffer.clear()
            _ = clientSession.send(into: buffer, limit: 1 << 20)
            let a = buffer.readableBytes
            if a > 0 { #expect(serverSession.receive(buffer.readable)) }
            buffer.clear()
            _ = serverSession.send(into: buffer, limit: 1 << 20)
            let b = buffer.readableBytes
            if b > 0 { #expect(clientSession.receive(buffer.readable)) }
            if a == 0 && b == 0 { return }
        }
    }

    @Test func connectTunnelCarriesBytesBothWays() throws {
        let stream = try #require(
            clientSession.request(
                headers: [
                    (":method", "CONNECT"), (":authority", "10.96.0.10:80"),
                    ("forwarded", "for=\"10.1.2.3:5\""),
                ], body: true))
        exchange()
        #expect(server.complete == [stream])
        let fields = Dictionary(server.headers[stream]!, uniquingKeysWith: { a, _ in a })
        #expect(fields[":method"] == "CONNECT" && fields[":authority"] == "10.96.0.10:80" && fields["forwarded"] == "for=\"10.1.2.3:5\"")
        server.outgoing[stream] = Array("pong".utf8)
        serverSession.respond(stream: stream, status: 200, body: true)
        client.outgoing[stream] = Array("ping".utf8)
        clientSession.resume(stream: stream)
        exchange()
        #expect(client.headers[stream]!.contains { $0 == (":status", "200") })
        #expect(server.data[stream] == Array("ping".utf8))
        #expect(client.data[stream] == Array("pong".utf8))
        // Half-close from the client (END_STREAM on DATA), then the server ends too: a clean close.
        client.endAfterOutgoing.insert(stream)
        clientSession.resume(stream: stream)
        exchange()
        #expect(server.ended.contains(stream))
        server.endAfterOutgoing.insert(stream)
        serverSession.resume(stream: stream)
        exchange()
        #expect(server.closed[stream] == 0 && client.closed[stream] == 0)
    }

    @Test func windowReopensOnlyWhenConsumed() throws {
        let stream = try #require(clientSession.request(headers: [(":method", "CONNECT"), (":authority", "10.0.0.1:80")], body: true))
        exchange()
        serverSession.respond(stream: stream, status: 200, body: true)
        exchange()
        // 6 MiB offered against a 4 MiB stream window: only the window arrives until the server consumes.
        client.outgoing[stream] = [UInt8](repeating: 7, count: 6 << 20)
        clientSession.resume(stream: stream)
        exchange()
        #expect(server.data[stream]?.count == 4 << 20)
        serverSession.consume(stream: stream, 4 << 20)
        exchange()
        clientSession.resume(stream: stream)
        exchange()
        #expect(server.data[stream]?.count == 6 << 20)
    }

    @Test func resetIsSeenWithItsCode() throws {
        let stream = try #require(clientSession.request(headers: [(":method", "CONNECT"), (":authority", "10.0.0.1:80")], body: true))
        exchange()
        clientSession.reset(stream: stream, code: .cancel)
        exchange()
        #expect(server.closed[stream] == HTTP2ErrorCode.cancel.rawValue)
    }

    @Test func pingIsAcknowledged() {
        clientSession.ping()
        exchange()
        #expect(client.pings == 1)
    }
}
