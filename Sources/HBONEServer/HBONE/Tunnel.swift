import EventLoop
import HTTP2
import WaypointCore

/// One HBONE tunnel: an accepted HTTP/2 CONNECT stream, offered to the inner session as a `ByteStream`.
///
/// Bytes from the client wait in `received` until the session reads them; only then is the stream's window
/// reopened (`consume`), so the client can have at most one stream window in flight and a stalled session
/// slows only its own tunnel. Bytes to the client wait in `pending`, at most `sendBound`; a full `pending`
/// makes `write` answer `.wouldBlock`, which pauses whoever feeds it (the upstream).
///
/// Thread: its worker's loop thread only. Ownership: its `HBONEConnection` (while the stream is open) and the
/// session reading it; the links back (`connection`, `handler`) are unowned and cleared when either side ends.
public final class Tunnel: ByteStream {
    let streamID: Int32
    /// The CONNECT was answered 200 (always true on the server side, where we answer before handing it on).
    private(set) var established: Bool
    /// The CONNECT's `:status` (client side), 0 while none arrived.
    public private(set) var status = 0
    unowned(unsafe) var connection: HBONEConnection?
    /// Delivers readiness once the stream has closed and `connection` is gone.
    private unowned(unsafe) var afterClose: ClosedTunnelNotifier?
    public unowned(unsafe) var handler: (any ByteStreamHandler)?
    private let received = ByteBuffer(lazyCapacity: 16 * 1024)
    private let pending = ByteBuffer(lazyCapacity: 16 * 1024)
    private let sendBound: Int
    /// The client sent END_STREAM (half-close): after `received` drains, reads see the end.
    private(set) var remoteEnded = false
    /// The stream is gone; `failedCode` is set when it ended with an error (not NO_ERROR or CANCEL).
    private(set) var streamClosed = false
    private var failedCode: UInt32?
    /// We asked for END_STREAM after `pending` drains.
    private(set) var localEnded = false
    /// The session is gone: received bytes are dropped (and their window returned) at once.
    private(set) var discarding = false
    private var wantsRead = false
    private var wantsWrite = false
    /// Already queued for a readiness notification by the connection.
    var queued = false

    init(streamID: Int32, connection: HBONEConnection, sendBound: Int, established: Bool = true) {
        self.streamID = streamID
        self.connection = connection
        self.sendBound = sendBound
        self.established = established
    }

    public var connectFailed: Bool { !established && (streamClosed || status != 0) }

    /// Client side: the server's answer to our CONNECT. Anything but 200 fails the tunnel.
    func responded(status: Int) {
        self.status = status
        if status == 200 {
            established = true
            connection?.dataReady(self, bytes: 0)
        } else {
            failedCode = HTTP2ErrorCode.refusedStream.rawValue
            streamClosed = true
        }
    }

    // MARK: ByteStream (the inner session's side)

    public func read(into buffer: UnsafeMutableRawBufferPointer) -> IOResult {
        if !received.isEmpty {
            let n = received.move(into: buffer)
            connection?.consumed(self, n)
            return .bytes(n)
        }
        if let failedCode { return .failed(Int32(bitPattern: failedCode)) }
        return remoteEnded || streamClosed ? .eof : .wouldBlock
    }

    public func write(from buffer: UnsafeRawBufferPointer) -> IOResult {
        guard !streamClosed && !localEnded, let connection else { return .failed(32) }  // EPIPE
        let room = sendBound - pending.readableBytes
        guard room > 0 else { return .wouldBlock }
        let n = min(room, buffer.count)
        pending.append(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
        connection.dataReady(self, bytes: n)
        return .bytes(n)
    }

    public func setReading(_ on: Bool) {
        wantsRead = on
        if on && readable { requestNotification() }
    }

    public func setWriteInterest(_ on: Bool) {
        wantsWrite = on
        if on && writable { requestNotification() }
    }

    public func shutdownWrite() {
        guard !discarding, !streamClosed, !localEnded, let connection else { return }
        localEnded = true
        connection.dataReady(self, bytes: 0)
    }

    public func close(graceful: Bool) {
        handler = nil
        wantsRead = false
        wantsWrite = false
        guard !discarding else { return }
        discarding = true
        if !received.isEmpty {
            connection?.consumed(self, received.readableBytes)
            received.clear()
        }
        guard !streamClosed, let connection else { return }
        if graceful {
            localEnded = true
            connection.dataReady(self, bytes: 0)
        } else {
            connection.reset(self)
        }
    }

    // MARK: Connection side

    private var readable: Bool { !received.isEmpty || remoteEnded || streamClosed }
    private var writable: Bool { streamClosed || (established && pending.readableBytes < sendBound) }

    /// Calls the handler for the readiness it asked for (from the connection's notification pass). Like a
    /// level-triggered socket watcher, a tunnel still readable afterwards (bytes left, or the end not yet seen)
    /// is notified again; handlers that cannot take more turn reading off.
    func notifyHandler() {
        if wantsRead && readable { handler?.streamReadable() }
        if wantsWrite && writable { handler?.streamWritable() }
        if wantsRead && readable && handler != nil { requestNotification() }
    }

    /// Asks for a `notifyHandler` call after the current step: from the connection while the stream is open,
    /// from the worker's `ClosedTunnelNotifier` after. A session that paused reading and resumes once the
    /// client is gone must still see the last bytes and the end, or it holds its upstream open for good.
    private func requestNotification() {
        if let connection { connection.queue(self) } else { afterClose?.queue(self) }
    }

    /// DATA from the client. Copied, because nghttp2's buffer is gone after the callback.
    func receivedData(_ bytes: UnsafeRawBufferPointer) {
        if discarding {
            connection?.consumed(self, bytes.count)
            return
        }
        received.append(bytes)
        if wantsRead { connection?.queue(self) }
    }

    func receivedEnd() {
        remoteEnded = true
        if wantsRead { connection?.queue(self) }
    }

    /// The stream closed; `code` is its RST_STREAM code (NO_ERROR when both sides ended). The connection then
    /// queues one last notification, so a waiting session sees the end.
    func closed(code: UInt32) {
        streamClosed = true
        if code != HTTP2ErrorCode.noError.rawValue && code != HTTP2ErrorCode.cancel.rawValue { failedCode = code }
        afterClose = connection?.closedTunnels
        connection = nil
    }

    /// Fills a DATA frame from `pending`; ends the stream once it is drained after `close(graceful: true)`.
    func readData(into buffer: UnsafeMutableRawBufferPointer) -> HTTP2DataChunk {
        guard established else { return .deferred }  // a client sends nothing before the 200
        let wasFull = pending.readableBytes >= sendBound
        let n = pending.move(into: buffer)
        if wasFull && wantsWrite { connection?.queue(self) }
        if pending.isEmpty && localEnded {
            // Our side is complete; a client still sending is asked to stop, without error (RFC 9113 §8.1:
            // RST_STREAM NO_ERROR after a complete response; ztunnel reads it as a clean end).
            if !remoteEnded { connection?.endAfterResponse(self) }
            return .bytes(n, end: true)
        }
        return n > 0 ? .bytes(n, end: false) : .deferred
    }
}

/// Readiness notifications for tunnels whose stream has closed (their connection no longer runs notification
/// passes, and may be gone): delivered on the next loop iteration, never inside the caller's stack, with the
/// same level-triggered rule as a connection's pass.
///
/// Thread: its worker's loop thread only. Ownership: the worker's `ProxyServer`; queued tunnels are held until
/// notified.
final class ClosedTunnelNotifier {
    private var waiting: [Tunnel] = []
    private var timer: Timer?
    private unowned(unsafe) let loop: EventLoop

    init(loop: EventLoop) { self.loop = loop }

    func queue(_ tunnel: Tunnel) {
        guard !tunnel.queued else { return }
        tunnel.queued = true
        waiting.append(tunnel)
        let timer = self.timer ?? Timer(loop: loop) { [unowned(unsafe) self] in self.deliver() }
        self.timer = timer
        if !timer.isActive { timer.schedule(after: .zero) }
    }

    private func deliver() {
        let batch = waiting
        waiting.removeAll(keepingCapacity: true)
        for tunnel in batch {
            tunnel.queued = false
            tunnel.notifyHandler()
        }
    }
}
