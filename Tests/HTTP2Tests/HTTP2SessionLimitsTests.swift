import HTTP2
import Testing
import WaypointCore

/// A server session fed hand-made frames, as a hostile client would send them: the limits it advertises and
/// what it does past them.
@Suite struct HTTP2SessionLimitsTests {
    let peer = Recorder()
    let session: HTTP2Session

    init() {
        var settings = HTTP2Settings()
        settings.maxConcurrentStreams = 3
        settings.maxHeaderListSize = 200
        session = HTTP2Session(role: .server, settings: settings, delegate: peer)
        let preface = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8) + Self.frame(type: 4, stream: 0, [])
        #expect(preface.withUnsafeBytes { session.receive($0) })
    }

    static func frame(type: UInt8, flags: UInt8 = 0, stream: UInt32, _ payload: [UInt8]) -> [UInt8] {
        let n = payload.count
        return [
            UInt8(n >> 16), UInt8(n >> 8 & 0xff), UInt8(n & 0xff), type, flags,
            UInt8(stream >> 24), UInt8(stream >> 16 & 0xff), UInt8(stream >> 8 & 0xff), UInt8(stream & 0xff),
        ] + payload
    }

    /// HEADERS with END_HEADERS: `:method CONNECT`, `:authority`, then `extra` (HPACK literals without
    /// indexing, so no dynamic table state; names and values shorter than 255 bytes).
    static func connect(stream: UInt32, extra: [(String, String)] = []) -> [UInt8] {
        func literal(_ text: String) -> [UInt8] {
            let n = text.utf8.count
            return (n < 127 ? [UInt8(n)] : [0x7f, UInt8(n - 127)]) + Array(text.utf8)
        }
        var block: [UInt8] = [0x02] + literal("CONNECT") + [0x01] + literal("10.0.0.1:80")  // static names 2, 1
        for (name, value) in extra { block += [0x00] + literal(name) + literal(value) }
        return frame(type: 1, flags: 0x4, stream: stream, block)
    }

    func receive(_ wire: [UInt8]) -> Bool { wire.withUnsafeBytes { session.receive($0) } }

    /// What the session sends now, as (type, stream, payload) frames.
    func sent() -> [(type: UInt8, stream: UInt32, payload: [UInt8])] {
        let out = ByteBuffer(capacity: 1 << 16)
        _ = session.send(into: out, limit: 1 << 20)
        return Self.parse(Array(out.readable))
    }

    static func parse(_ wire: [UInt8]) -> [(type: UInt8, stream: UInt32, payload: [UInt8])] {
        var frames: [(UInt8, UInt32, [UInt8])] = []
        var rest = wire[...]
        while rest.count >= 9 {
            let header = Array(rest.prefix(9))
            let n = Int(header[0]) << 16 | Int(header[1]) << 8 | Int(header[2])
            let stream = header[5...8].reduce(UInt32(0)) { $0 << 8 | UInt32($1) } & 0x7fff_ffff
            frames.append((header[3], stream, Array(rest.dropFirst(9).prefix(n))))
            rest = rest.dropFirst(9 + n)
        }
        return frames
    }

    static func code(_ payload: [UInt8]) -> UInt32 { payload.prefix(4).reduce(0) { $0 << 8 | UInt32($1) } }

    @Test func advertisesItsLimitAndRefusesOnlyTheStreamsPastIt() {
        let settings = sent().first { $0.type == 4 }!.payload
        #expect(Array(settings.prefix(6)) == [0, 3, 0, 0, 0, 3])  // MAX_CONCURRENT_STREAMS 3 on the wire
        #expect(receive([1, 3, 5, 7, 9].flatMap { Self.connect(stream: $0) }))
        #expect(peer.complete == [1, 3, 5])
        let resets = sent().filter { $0.type == 3 }
        #expect(resets.map(\.stream) == [7, 9] && resets.allSatisfy { Self.code($0.payload) == 7 })  // REFUSED_STREAM
        #expect(peer.closed == [7: 7, 9: 7])
        // One stream ends: room for one more, and the connection never ended.
        #expect(receive(Self.frame(type: 3, stream: 3, [0, 0, 0, 8])))
        #expect(receive(Self.connect(stream: 11)))
        #expect(peer.complete == [1, 3, 5, 11])
        #expect(!sent().contains { $0.type == 7 })
    }

    @Test func headerListPastTheLimitResetsOnlyItsStream() {
        _ = sent()
        let big = String(repeating: "a", count: 150)
        #expect(receive(Self.connect(stream: 1, extra: [("x-big", big)]) + Self.connect(stream: 3)))
        #expect(peer.complete == [3])
        let resets = sent().filter { $0.type == 3 }
        #expect(resets.map(\.stream) == [1] && Self.code(resets[0].payload) == 2)  // INTERNAL_ERROR, as Envoy
        #expect(session.failure == nil)
    }

    @Test func floodEndsWithGoAwayEnhanceYourCalm() {
        _ = sent()
        let ping = Self.frame(type: 6, stream: 0, Array("pingping".utf8))
        #expect(!receive(Array([[UInt8]](repeating: ping, count: 2000).joined())))
        #expect(session.failure == .flood)
        let out = ByteBuffer(capacity: 1 << 16)
        session.appendFinalFrames(into: out, limit: 1 << 20)
        let last = Self.parse(Array(out.readable)).last!
        #expect(last.type == 7 && Self.code(Array(last.payload.dropFirst(4))) == 11)
        #expect(Array(last.payload.dropFirst(8)) == Array("flood".utf8))
    }
}
