import EventLoop
import Filters
import WaypointCore

/// The admin listener: `/healthz/ready`, `/stats/prometheus`, `/config_dump`. One request per connection,
/// answered from the main thread; never on the data path.
///
/// Thread: main thread only. Ownership: the `Runtime`.
final class AdminServer {
    /// Produces (status, content type, body) for a path.
    typealias Handler = (String) -> (Int, String, String)

    private let loop: EventLoop
    private let fd: Int32
    private var watcher: IOWatcher!
    private let handler: Handler
    private var connections: [Int32: AdminConnection] = [:]

    init(loop: EventLoop, fd: Int32, handler: @escaping Handler) {
        self.loop = loop
        self.fd = fd
        self.handler = handler
        watcher = IOWatcher(loop: loop, fd: fd, direction: .read) { [unowned(unsafe) self] in self.acceptPending() }
        watcher.start()
    }

    private func acceptPending() {
        while let (client, _) = Socket.accept(fd) {
            connections[client] = AdminConnection(loop: loop, fd: client, handler: handler) { [unowned(unsafe) self] in
                self.connections[client] = nil
            }
        }
    }
}

/// One admin request: read the head, answer, close.
private final class AdminConnection {
    private let fd: Int32
    private let input = ByteBuffer(capacity: 8 * 1024)
    private let output = ByteBuffer(capacity: 4 * 1024)
    private var readWatcher: IOWatcher!
    private var writeWatcher: IOWatcher!
    private let handler: AdminServer.Handler
    private let onClose: () -> Void
    private var scanned = 0
    private var head = RequestHead()

    init(loop: EventLoop, fd: Int32, handler: @escaping AdminServer.Handler, onClose: @escaping () -> Void) {
        self.fd = fd
        self.handler = handler
        self.onClose = onClose
        readWatcher = IOWatcher(loop: loop, fd: fd, direction: .read) { [unowned(unsafe) self] in self.readable() }
        writeWatcher = IOWatcher(loop: loop, fd: fd, direction: .write) { [unowned(unsafe) self] in self.flush() }
        readWatcher.start()
    }

    private func readable() {
        let space = input.writableSpace()
        guard space.count > 0, case .bytes(let n) = Socket.read(fd, into: space) else { close(); return }
        input.commitWrite(n)
        guard let length = HTTP1Parser.findHeadEnd(input.readable, scanned: &scanned) else { return }
        readWatcher.stop()
        let bytes = UnsafeRawBufferPointer(rebasing: input.readable[0..<length])
        let (status, type, body): (Int, String, String)
        if case .failed(let error) = HTTP1Parser.parseRequest(bytes, into: &head) {
            (status, type, body) = (error.status, "text/plain", "bad request\n")
        } else if head.method.string(in: bytes) != "GET" && head.method.string(in: bytes) != "HEAD" {
            (status, type, body) = (405, "text/plain", "method not allowed\n")
        } else {
            (status, type, body) = handler(head.path.string(in: bytes))
        }
        output.append("HTTP/1.1 ")
        output.appendDecimal(status)
        output.append(" ")
        output.append(LocalReply.reasonPhrase(status))
        output.append(string: "\r\ncontent-type: \(type)\r\ncontent-length: \(body.utf8.count)\r\nconnection: close\r\n\r\n")
        output.append(string: body)
        flush()
    }

    private func flush() {
        while !output.isEmpty {
            switch Socket.write(fd, from: output.readable) {
            case .bytes(let n): output.consume(n)
            case .wouldBlock: writeWatcher.start(); return
            case .eof, .failed: close(); return
            }
        }
        close()
    }

    private func close() {
        readWatcher.stop()
        writeWatcher.stop()
        Socket.close(fd)
        onClose()
    }
}
