import EventLoop
import WaypointCore

/// WebSocket over HTTP/2 (RFC 8441): an extended CONNECT (`:protocol websocket`) on an h2c connection, bridged
/// to an HTTP/1.1 session as the handshake it stands for (RFC 6455: `GET` with `Upgrade: websocket` and a key of
/// our own), so that routing, authorization, header changes, the upgrade to the upstream and the byte relay
/// after it are the HTTP/1.1 pipeline's. The session's `101 Switching Protocols` becomes the stream's `200`;
/// any other answer becomes the stream's response (status, content type and a content-length body). After a
/// `200` the stream's DATA carries the WebSocket frames both ways.
///
/// Thread: its worker's loop thread only. Ownership: its `H2CProxySession` while the stream is open, and the
/// HTTP/1.1 session reading it (as its `ByteStream`); the links back are unowned and cleared when either ends.
final class WebSocketBridge: ByteStream {
    let streamID: Int32
    unowned(unsafe) var owner: H2CProxySession?
    unowned(unsafe) var handler: (any ByteStreamHandler)?
    /// The handshake as HTTP/1.1, then the client's DATA, until the session reads them.
    private let received = ByteBuffer(capacity: 1024)
    /// Bytes of `received` that are the handshake we wrote, not the client's (no flow-control credit for them).
    private var handshakeLeft: Int
    /// What the session wrote: its response head until parsed, then the bytes for DATA frames.
    private let pending = ByteBuffer(lazyCapacity: 16 * 1024)
    private static let sendBound = 256 * 1024

    private enum Phase: Equatable {
        /// Waiting for the session's response head.
        case handshake
        /// Upgraded: everything is relayed.
        case relaying
        /// Refused with a response: this much of its body is still to come, then the stream ends.
        case answered(bodyLeft: Int)
    }
    private var phase = Phase.handshake
    private var remoteEnded = false
    private var streamClosed = false
    private var localEnded = false
    private var wantsRead = false
    private var wantsWrite = false
    /// The session is gone: the client's DATA is dropped (and its window returned) as it arrives.
    private var discarding = false
    private var notification: Timer?

    private unowned(unsafe) let loop: EventLoop

    init(streamID: Int32, owner: H2CProxySession, loop: EventLoop, handshake: [UInt8]) {
        self.streamID = streamID
        self.owner = owner
        self.loop = loop
        received.append(handshake)
        handshakeLeft = handshake.count
    }

    var connectFailed: Bool { false }

    // MARK: ByteStream (the HTTP/1.1 session's side)

    func read(into buffer: UnsafeMutableRawBufferPointer) -> IOResult {
        if !received.isEmpty {
            let n = received.move(into: buffer)
            let credit = n - min(n, handshakeLeft)
            handshakeLeft -= n - credit
            if credit > 0 { owner?.consumed(self, credit) }
            return .bytes(n)
        }
        return remoteEnded || streamClosed ? .eof : .wouldBlock
    }

    func write(from buffer: UnsafeRawBufferPointer) -> IOResult {
        guard !streamClosed && !localEnded, owner != nil else { return .failed(32) }  // EPIPE
        switch phase {
        case .handshake:
            pending.append(buffer)
            answerIfHeadComplete()
            return .bytes(buffer.count)
        case .answered(let left):
            let room = Self.sendBound - pending.readableBytes
            guard room > 0 else { return .wouldBlock }
            let n = min(left, buffer.count, room)
            pending.append(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
            phase = .answered(bodyLeft: left - n)
            if left == n { localEnded = true }
            owner?.dataReady(self)
            return .bytes(left == n ? buffer.count : n)  // anything past the body is not sent
        case .relaying:
            let room = Self.sendBound - pending.readableBytes
            guard room > 0 else { return .wouldBlock }
            let n = min(room, buffer.count)
            pending.append(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
            owner?.dataReady(self)
            return .bytes(n)
        }
    }

    /// The session's response head, once whole: `101` upgrades the stream (200), anything else answers it.
    private func answerIfHeadComplete() {
        var scanned = 0
        let bytes = pending.readable
        guard let length = HTTP1Parser.findHeadEnd(bytes, scanned: &scanned) else { return }
        var head = ResponseHead()
        let headBytes = UnsafeRawBufferPointer(rebasing: bytes[0..<length])
        guard case .complete = HTTP1Parser.parseResponse(headBytes, requestWasHead: false, into: &head) else {
            close(graceful: false)
            return
        }
        var fields: [(String, String)] = []
        for field in head.headers {
            let name = String(decoding: field.name.bytes(in: headBytes), as: UTF8.self).lowercased()
            let value = String(decoding: field.value.bytes(in: headBytes), as: UTF8.self)
            // A 101 keeps the subprotocol and extensions agreed on; another answer its content type and length.
            // The rest is hop-by-hop or the handshake's own (upgrade, connection, sec-websocket-accept).
            let kept =
                head.status == 101
                ? name == "sec-websocket-protocol" || name == "sec-websocket-extensions"
                : name == "content-type" || name == "content-length"
            if kept { fields.append((name, value)) }
        }
        pending.consume(length)
        if head.status == 101 {
            phase = .relaying
            owner?.respond(self, status: 200, fields: fields, body: true)
        } else {
            let body = if case .contentLength(let n) = head.framing { n } else { 0 }  // chunked: the status only
            let extra = pending.readableBytes
            if extra > body { pending.truncate(to: body) }
            phase = .answered(bodyLeft: body - min(extra, body))
            localEnded = extra >= body
            owner?.respond(self, status: head.status, fields: fields, body: body > 0)
        }
    }

    func setReading(_ on: Bool) {
        wantsRead = on
        if on && readable { notifySoon() }
    }

    func setWriteInterest(_ on: Bool) {
        wantsWrite = on
        if on && writable { notifySoon() }
    }

    func shutdownWrite() {
        guard !streamClosed, !localEnded, phase == .relaying else { return }
        localEnded = true
        owner?.dataReady(self)
    }

    func close(graceful: Bool) {
        handler = nil
        wantsRead = false
        wantsWrite = false
        discarding = true
        notification?.cancel()
        if !received.isEmpty {
            let credit = received.readableBytes - handshakeLeft
            if credit > 0 { owner?.consumed(self, credit) }
            received.clear()
        }
        guard !streamClosed, let owner else { return }
        if graceful && phase != .handshake {
            localEnded = true
            owner.dataReady(self)
        } else {
            owner.reset(self)
        }
    }

    // MARK: The h2c session's side

    private var readable: Bool { !received.isEmpty || remoteEnded || streamClosed }
    private var writable: Bool { streamClosed || pending.readableBytes < Self.sendBound }

    /// Readiness is told on the next loop turn, never from inside the HTTP/2 session's callbacks.
    private func notifySoon() {
        let timer = notification ?? Timer(loop: loop) { [unowned(unsafe) self] in self.notify() }
        notification = timer
        if !timer.isActive { timer.schedule(after: .zero) }
    }

    private func notify() {
        if wantsRead && readable { handler?.streamReadable() }
        if wantsWrite && writable { handler?.streamWritable() }
    }

    func receivedData(_ bytes: UnsafeRawBufferPointer) {
        guard !discarding else { return owner?.consumed(self, bytes.count) ?? () }
        received.append(bytes)
        if wantsRead { notifySoon() }
    }

    func receivedEnd() {
        remoteEnded = true
        if wantsRead { notifySoon() }
    }

    /// The stream is gone: a session waiting to read or write hears it (reads see the end, writes fail).
    func closed() {
        streamClosed = true
        owner = nil
        if wantsRead || wantsWrite { notifySoon() }
    }

    /// Fills a DATA frame from `pending`; ends the stream once it is drained after the session ended its side.
    func readData(into buffer: UnsafeMutableRawBufferPointer) -> (count: Int, end: Bool)? {
        let wasFull = pending.readableBytes >= Self.sendBound
        let n = pending.move(into: buffer)
        if wasFull && wantsWrite { notifySoon() }
        if pending.isEmpty && localEnded { return (n, true) }
        return n > 0 ? (n, false) : nil
    }
}
