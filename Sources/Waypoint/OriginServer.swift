#if canImport(Glibc)
    import Glibc
#endif
import EventLoop
import Synchronization
import WaypointCore

/// `waypoint origin`: a fast HTTP/1.1 test origin. It answers JSON describing the request it saw and obeys
/// query knobs: `status=N`, `delay=DURATION`, `size=BYTES` (a body of that many `x` bytes instead of JSON),
/// `fail=N&key=K` (the first N requests carrying key K get 503). Keep-alive and pipelining are supported;
/// request bodies are read to the end and counted, never stored.
///
/// Thread: one loop per thread, each with its own SO_REUSEPORT socket. Ownership: `run` keeps it forever.
final class OriginServer: @unchecked Sendable {
    // SAFETY: each OriginLoop is confined to the thread that runs it; only `failures` is shared, under a Mutex.
    let name: String
    let failures = Mutex<[String: Int]>([:])
    /// Every request fails with 503 with this probability (percent): a flaky endpoint for retry benchmarks.
    let failPercent: Int
    /// Requests answered (`GET /__requests` reads it without counting itself): load amplification.
    let requests = Atomic<Int>(0)
    private var loops: [OriginLoop] = []

    /// Binds `threads` sockets to `address` (port 0 resolved by the first) and returns the bound address.
    init(address: SocketAddress, threads: Int, name: String, failPercent: Int = 0) throws(SocketError) {
        self.name = name
        self.failPercent = failPercent
        var bound = address
        var fds: [Int32] = []
        for _ in 0..<max(threads, 1) {
            // SO_REUSEPORT only when needed: it would also let a stray process share the port unnoticed.
            let fd = try Socket.listen(bound, reusePort: threads > 1)
            if bound.port == 0, let actual = Socket.localAddress(fd) { bound = actual }
            fds.append(fd)
        }
        self.address = bound
        loops = fds.map { OriginLoop(fd: $0, origin: self) }
    }

    let address: SocketAddress

    /// Starts every loop on its own thread.
    func start() {
        for loop in loops {
            var thread = pthread_t()
            let rc = pthread_create(&thread, nil, runOriginThread, Unmanaged.passRetained(loop).toOpaque())
            precondition(rc == 0, "pthread_create failed: \(rc)")
            pthread_detach(thread)
        }
    }

    /// True when this request should fail (`fail=N&key=K` and K has failed fewer than N times).
    func shouldFail(key: String, times: Int) -> Bool {
        failures.withLock { counts in
            let seen = counts[key, default: 0]
            guard seen < times else { return false }
            counts[key] = seen + 1
            return true
        }
    }
}

private func runOriginThread(_ context: UnsafeMutableRawPointer?) -> UnsafeMutableRawPointer? {
    let loop = Unmanaged<OriginLoop>.fromOpaque(context!).takeRetainedValue()
    loop.run()
    return nil
}

/// One origin thread's loop and its connections.
final class OriginLoop {
    let loop = EventLoop()
    let origin: OriginServer  // strong: the threads keep their server alive
    /// For `--fail-percent`.
    var random = FastRandom(seed: UInt64.random(in: 1...UInt64.max))
    private var acceptor: IOWatcher!
    private var connections: [Int32: OriginConnection] = [:]
    private let listenFD: Int32

    init(fd: Int32, origin: OriginServer) {
        self.origin = origin
        listenFD = fd
        acceptor = IOWatcher(loop: loop, fd: fd, direction: .read) { [unowned(unsafe) self] in
            while let (client, _) = Socket.accept(self.listenFD) {
                self.connections[client] = OriginConnection(fd: client, owner: self)
            }
        }
        acceptor.start()
    }

    func run() { loop.run() }

    func closed(_ fd: Int32) { connections[fd] = nil }
}

/// One client of the origin.
final class OriginConnection {
    private let fd: Int32
    private unowned(unsafe) let owner: OriginLoop
    private let input = ByteBuffer(capacity: 64 * 1024)
    private let output = ByteBuffer(capacity: 16 * 1024)
    private let json = ByteBuffer(capacity: 2 * 1024)
    private var readWatcher: IOWatcher!
    private var writeWatcher: IOWatcher!
    private lazy var delayTimer = Timer(loop: owner.loop) { [unowned(unsafe) self] in
        self.waiting = false
        self.respond()
        self.process()
    }
    private var head = RequestHead()
    private var scanned = 0
    private var inRequest = false
    private var body = BodyTracker(.none)
    private var knobs = Knobs()
    private var keepAlive = true
    private var waiting = false
    /// Bytes of a `size=` body still to generate.
    private var fillRemaining = 0
    private var closing = false
    private var closed = false

    struct Knobs {
        var status = 200
        var delay: Duration = .zero
        var size: Int? = nil
        var fail = 0
        var key = ""
        /// `GET /__requests`: answer the origin's request count (not counted itself).
        var countQuery = false
    }

    init(fd: Int32, owner: OriginLoop) {
        self.fd = fd
        self.owner = owner
        readWatcher = IOWatcher(loop: owner.loop, fd: fd, direction: .read) { [unowned(unsafe) self] in self.readable() }
        writeWatcher = IOWatcher(loop: owner.loop, fd: fd, direction: .write) { [unowned(unsafe) self] in
            self.flush()
            if self.output.isEmpty && self.fillRemaining == 0 { self.process() }  // pipelined requests waited for this
        }
        readWatcher.start()
    }

    private func readable() {
        let space = input.writableSpace()
        guard space.count > 0 else { readWatcher.stop(); return }
        switch Socket.read(fd, into: space) {
        case .bytes(let n):
            input.commitWrite(n)
            process()
        case .wouldBlock: return
        case .eof, .failed: close()
        }
    }

    private func process() {
        while !waiting && fillRemaining == 0 && !closing && !closed {
            if !inRequest {
                while let b = input.readable.first, b == 0x0D || b == 0x0A { input.consume(1) }
                guard let length = HTTP1Parser.findHeadEnd(input.readable, scanned: &scanned) else { break }
                scanned = 0
                let bytes = UnsafeRawBufferPointer(rebasing: input.readable[0..<length])
                if case .failed(let error) = HTTP1Parser.parseRequest(bytes, into: &head) {
                    output.append(
                        string:
                            "HTTP/1.1 \(error.status) \(LocalReply.reasonPhrase(error.status))\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    )
                    closing = true
                    break
                }
                describe(bytes)
                keepAlive = head.keepAlive
                body = BodyTracker(head.framing)
                input.consume(length)
                inRequest = true
                if head.expectsContinue && head.framing != .none { output.append("HTTP/1.1 100 Continue\r\n\r\n") }
            }
            guard consumeBody() else { break }
            inRequest = false
            if knobs.delay > .zero {
                waiting = true
                delayTimer.schedule(after: knobs.delay)
                break
            }
            respond()
        }
        flush()
    }

    /// Counts body bytes; true when the body is complete.
    private func consumeBody() -> Bool {
        guard let n = body.consume(input.readable) else {
            output.append("HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            closing = true
            return false
        }
        input.consume(n)
        return body.isComplete
    }

    /// Records the request as JSON (minus the body length) and reads the query knobs.
    private func describe(_ bytes: UnsafeRawBufferPointer) {
        json.clear()
        json.append("{\"server\":\"")
        json.append(string: owner.origin.name)
        json.append("\",\"method\":\"")
        appendEscaped(head.method.bytes(in: bytes))
        json.append("\",\"path\":\"")
        appendEscaped(head.target.bytes(in: bytes))
        json.append("\",\"headers\":{")
        for (i, field) in head.headers.enumerated() {
            if i > 0 { json.append(",") }
            json.append("\"")
            for b in field.name.bytes(in: bytes) { json.append(HTTP1Parser.lowercased(b)) }
            json.append("\":\"")
            appendEscaped(field.value.bytes(in: bytes))
            json.append("\"")
        }
        json.append("},\"body_length\":")
        knobs = Knobs()
        let target = head.target.bytes(in: bytes)
        knobs.countQuery = head.path.bytes(in: bytes).elementsEqual("/__requests".utf8)
        if let q = target.firstIndex(of: 0x3F) {
            let query = String(decoding: target[(q + 1)...], as: UTF8.self)
            for pair in query.split(separator: "&") {
                let parts = pair.split(separator: "=", maxSplits: 1)
                guard parts.count == 2 else { continue }
                let value = String(parts[1])
                switch parts[0] {
                case "status": if let n = Int(value), (100...999).contains(n) { knobs.status = n }
                case "delay": if let d = GoDuration.parse(value) { knobs.delay = d }
                case "size": if let n = Int(value), n >= 0 { knobs.size = n }
                case "fail": knobs.fail = Int(value) ?? 0
                case "key": knobs.key = value
                default: break
                }
            }
        }
    }

    private func appendEscaped(_ bytes: some Sequence<UInt8>) {
        for b in bytes {
            if b == 0x22 || b == 0x5C { json.append(0x5C) }
            json.append(b < 0x20 ? 0x3F : b)
        }
    }

    private func respond() {
        var status = knobs.status
        if knobs.fail > 0 && owner.origin.shouldFail(key: knobs.key, times: knobs.fail) { status = 503 }
        if knobs.countQuery {
            knobs.size = nil
            status = 200
        } else {
            owner.origin.requests.add(1, ordering: .relaxed)
            if owner.origin.failPercent > 0 && Int(owner.random.next() % 100) < owner.origin.failPercent { status = 503 }
        }
        output.append("HTTP/1.1 ")
        output.appendDecimal(status)
        output.append(" ")
        output.append(LocalReply.reasonPhrase(status))
        output.append("\r\nx-origin: ")
        output.append(string: owner.origin.name)
        if !keepAlive { output.append("\r\nconnection: close") }
        if let size = knobs.size {
            output.append("\r\ncontent-type: application/octet-stream\r\ncontent-length: ")
            output.appendDecimal(size)
            output.append("\r\n\r\n")
            fillRemaining = size
            fill()
        } else {
            if knobs.countQuery {
                json.clear()
                json.appendDecimal(owner.origin.requests.load(ordering: .relaxed))
                json.append("\n")
            } else {
                json.appendDecimal(body.bodyBytes)
                json.append("}\n")
            }
            output.append("\r\ncontent-type: application/json\r\ncontent-length: ")
            output.appendDecimal(json.readableBytes)
            output.append("\r\n\r\n")
            output.append(json.readable)
        }
        if !keepAlive { closing = true }
    }

    /// Generates up to 256 KiB of a `size=` body into the output.
    private func fill() {
        let chunk = min(fillRemaining, 256 * 1024 - output.readableBytes)
        guard chunk > 0 else { return }
        output.reserve(chunk)
        let space = output.writableSpace()
        memset(space.baseAddress!, 0x78, chunk)
        output.commitWrite(chunk)
        fillRemaining -= chunk
    }

    private func flush() {
        while true {
            while !output.isEmpty {
                switch Socket.write(fd, from: output.readable) {
                case .bytes(let n): output.consume(n)
                case .wouldBlock: writeWatcher.start(); return
                case .eof, .failed: close(); return
                }
            }
            guard fillRemaining > 0 else { break }
            fill()
        }
        writeWatcher.stop()
        if closing && !closed { close() }
    }

    private func close() {
        guard !closed else { return }
        closed = true
        readWatcher.stop()
        writeWatcher.stop()
        delayTimer.cancel()
        Socket.close(fd)
        owner.closed(fd)
    }
}
