import EventLoop
import WaypointCore

/// The byte stream a downstream session runs over: a plaintext socket, a PROXY-protocol socket or an HBONE
/// tunnel. It behaves like a non-blocking socket (STYLE 1b), so the HTTP/1.1 session and the TCP relay never
/// know which transport carries them.
///
/// Thread: its worker's loop thread only. Ownership: the session using it holds it strongly; the stream holds
/// its `handler` unowned and stops calling it once closed.
public protocol ByteStream: AnyObject {
    /// Who is told about readiness. Set once by the session.
    var handler: (any ByteStreamHandler)? { get set }
    func read(into buffer: UnsafeMutableRawBufferPointer) -> IOResult
    /// Takes what it can now; `.wouldBlock` when full (the handler then hears `streamWritable` later).
    func write(from buffer: UnsafeRawBufferPointer) -> IOResult
    /// Whether `streamReadable` should be called when bytes (or the end) arrive.
    func setReading(_ on: Bool)
    /// Whether `streamWritable` should be called when there is room to write.
    func setWriteInterest(_ on: Bool)
    /// Ends the stream. `graceful`: what was written is delivered, then end of stream; otherwise the peer
    /// sees an abort (a reset tunnel; for a socket, the close).
    func close(graceful: Bool)
    /// Half-close: what was written is delivered, then end of stream, while reading goes on (a socket's
    /// `shutdown(SHUT_WR)`, a tunnel's END_STREAM).
    func shutdownWrite()
    /// For an outbound stream: it never got established (connect refused or timed out, CONNECT not answered 200).
    var connectFailed: Bool { get }
}

extension ByteStream {
    /// Writes `buffer` out until it is empty or the stream takes no more; then write interest is on, so the
    /// handler hears when there is room, or off once it is empty (when `disarmWhenEmpty`). The bytes written,
    /// or nil when the stream failed (the buffer is left as it is).
    @inline(__always)
    func writeOut(_ buffer: ByteBuffer, disarmWhenEmpty: Bool = true) -> Int? {
        var written = 0
        while !buffer.isEmpty {
            switch write(from: buffer.readable) {
            case .bytes(let n):
                buffer.consume(n)
                written += n
            case .wouldBlock:
                setWriteInterest(true)
                return written
            case .eof, .failed:
                return nil
            }
        }
        if disarmWhenEmpty { setWriteInterest(false) }
        return written
    }
}

/// The session side of a `ByteStream`.
public protocol ByteStreamHandler: AnyObject {
    func streamReadable()
    func streamWritable()
}

/// A `ByteStream` over a non-blocking socket, with one libev watcher per direction.
///
/// Thread: its worker's loop thread only. Ownership: the session using it; it owns and closes the fd.
final class SocketStream: ByteStream {
    private let fd: Int32
    private var readWatcher: IOWatcher!
    private var writeWatcher: IOWatcher!
    private var closed = false
    /// An outbound socket whose connect has not completed yet.
    private var connecting: Bool
    private(set) var connectFailed = false
    unowned(unsafe) var handler: (any ByteStreamHandler)?

    /// `connecting`: the fd comes from `Socket.connect`; its first writability tells the connect's outcome.
    init(fd: Int32, loop: EventLoop, connecting: Bool = false) {
        self.fd = fd
        self.connecting = connecting
        readWatcher = IOWatcher(loop: loop, fd: fd, direction: .read) { [unowned(unsafe) self] in self.handler?.streamReadable() }
        writeWatcher = IOWatcher(loop: loop, fd: fd, direction: .write) { [unowned(unsafe) self] in
            if self.connecting {
                self.connecting = false
                self.connectFailed = Socket.connectResult(self.fd) != 0
            }
            self.handler?.streamWritable()
        }
    }

    deinit { close(graceful: false) }

    @inline(__always) func read(into buffer: UnsafeMutableRawBufferPointer) -> IOResult { Socket.read(fd, into: buffer) }
    @inline(__always) func write(from buffer: UnsafeRawBufferPointer) -> IOResult { Socket.write(fd, from: buffer) }
    func setReading(_ on: Bool) { if on && !closed { readWatcher.start() } else { readWatcher.stop() } }
    func setWriteInterest(_ on: Bool) { if on && !closed { writeWatcher.start() } else { writeWatcher.stop() } }

    func shutdownWrite() { if !closed { Socket.shutdownWrite(fd) } }

    func close(graceful: Bool) {
        guard !closed else { return }
        closed = true
        readWatcher.stop()
        writeWatcher.stop()
        Socket.close(fd)
    }
}
