#if canImport(Glibc)
    import Glibc
#endif
import EventLoop
import Filters
import HBONEServer
import Logging
import TLS
import WaypointCore

/// The client side of one HBONE tunnel for `waypoint hbone-client`: stdin goes into the tunnel, the tunnel's
/// bytes go to stdout; the process exits when the tunnel ends (status 0 only after a 200), or with `--get` as
/// soon as the response is complete (its framing says when; no server has to close anything; status 1 if the
/// tunnel ends first).
///
/// Thread: the main thread's loop. Ownership: the command, for the life of the process.
final class TunnelPipe: ByteStreamHandler {
    private let tunnel: Tunnel
    private var stdinWatcher: IOWatcher?
    private let pending = ByteBuffer(capacity: 16 * 1024)
    private var stdinEnded = false
    private let chunk = ByteBuffer(capacity: 64 * 1024)
    /// `--get`: the response as it arrives, to know where it ends.
    private var response: ResponseEnd?

    init(tunnel: Tunnel, loop: EventLoop, request: [UInt8]?) {
        self.tunnel = tunnel
        if let request {
            pending.append(request)
            stdinEnded = true
            response = ResponseEnd()
        } else {
            stdinWatcher = IOWatcher(loop: loop, fd: 0, direction: .read) { [unowned(unsafe) self] in self.stdinReadable() }
            stdinWatcher?.start()
        }
        tunnel.handler = self
        tunnel.setReading(true)
        tunnel.setWriteInterest(true)
    }

    private func stdinReadable() {
        let space = pending.writableSpace()
        guard space.count > 0 else { stdinWatcher?.stop(); return }
        let n = Glibc.read(0, space.baseAddress, space.count)
        if n <= 0 { stdinEnded = true; stdinWatcher?.stop(); return }
        pending.commitWrite(n)
        streamWritable()
    }

    func streamWritable() {
        while !pending.isEmpty {
            switch tunnel.write(from: pending.readable) {
            case .bytes(let n): pending.consume(n)
            case .wouldBlock:
                tunnel.setWriteInterest(true)
                return
            case .eof, .failed:
                finish()
            }
        }
        tunnel.setWriteInterest(false)
        if !stdinEnded { stdinWatcher?.start() }
    }

    func streamReadable() {
        while true {
            switch tunnel.read(into: chunk.writableSpace()) {
            case .bytes(let n):
                chunk.commitWrite(n)
                let bytes = chunk.readable
                var off = 0
                while off < n {
                    let w = write(1, bytes.baseAddress! + off, n - off)
                    if w <= 0 { break }
                    off += w
                }
                let complete = response?.see(bytes) ?? false
                chunk.clear()
                if complete { finish(complete: true) }
            case .wouldBlock:
                return
            case .eof:
                finish(complete: response?.connectionClosed() ?? false)
            case .failed:
                finish()
            }
        }
    }

    /// Exits: 0 after a 200 to the CONNECT and, with `--get`, a complete response.
    private func finish(complete: Bool = false) -> Never {
        if tunnel.status != 200 {
            writeStderr("hbone-client: CONNECT answered \(tunnel.status)\n")
            exit(1)
        }
        if response != nil && !complete {
            writeStderr("hbone-client: the tunnel ended before the response was complete\n")
            exit(1)
        }
        exit(0)
    }
}

/// Where one HTTP/1.1 response ends in the bytes that pass by: its head (kept until complete), then its body's
/// framing. A response that cannot be parsed, or ends only when the connection closes, never completes here.
struct ResponseEnd {
    private var head = [UInt8]()
    private var scanned = 0
    private var body: BodyTracker?

    /// Sees the next bytes; true once the response is complete.
    mutating func see(_ bytes: UnsafeRawBufferPointer) -> Bool {
        if body == nil {
            head.append(contentsOf: bytes)
            let all = head
            let rest: [UInt8]? = all.withUnsafeBytes { all in
                guard let length = HTTP1Parser.findHeadEnd(all, scanned: &scanned) else { return nil }
                var parsed = ResponseHead()
                guard
                    case .complete = HTTP1Parser.parseResponse(
                        UnsafeRawBufferPointer(rebasing: all[0..<length]),
                        requestWasHead: false, into: &parsed)
                else { return nil }
                body = BodyTracker(parsed.framing)
                return Array(all[length...])
            }
            guard let rest else { return false }
            head = []
            return rest.withUnsafeBytes { see($0) }
        }
        _ = body!.consume(bytes)
        return body!.isComplete
    }

    /// The tunnel ended: true if that completes the response (one whose body runs until the close).
    mutating func connectionClosed() -> Bool {
        body?.connectionClosed()
        return body?.isComplete ?? false
    }
}

func writeStderr(_ text: String) { writeAll(2, text) }

func writeStdout(_ text: String) { writeAll(1, text) }

private func writeAll(_ fd: Int32, _ text: String) {
    var bytes = Array(text.utf8)
    var offset = 0
    while offset < bytes.count {
        let n = bytes.withUnsafeMutableBytes { write(fd, $0.baseAddress! + offset, $0.count - offset) }
        if n < 0 && errno == EINTR { continue }
        guard n > 0 else { return }
        offset += n
    }
}

// MARK: - Load generator

/// One tunnel of `waypoint hbone-load`: one HTTP/1.1 GET at a time (keep-alive, no pipelining); the next goes
/// out when the previous response's body is complete. Latencies are recorded in microseconds.
///
/// Thread: its load thread's loop. Ownership: its `LoadThread`.
final class LoadTunnel: ByteStreamHandler {
    private let tunnel: Tunnel
    private unowned(unsafe) let owner: LoadThread
    /// Churn mode: closed after one response, which makes the owner open the next connection.
    unowned(unsafe) var churnConnection: HBONEConnection?
    private let input = ByteBuffer(capacity: 16 * 1024)
    private var sentAt = 0.0
    private var scanned = 0
    private var head = ResponseHead()
    private var bodyLeft = -1
    private var opened = false
    /// Churn mode: the one response arrived; the close that follows is no error.
    private var finished = false

    init(tunnel: Tunnel, owner: LoadThread) {
        self.tunnel = tunnel
        self.owner = owner
        tunnel.handler = self
        tunnel.setReading(true)
        tunnel.setWriteInterest(true)
    }

    func streamWritable() {
        tunnel.setWriteInterest(false)
        guard !opened else { return }
        opened = true
        owner.tunnelOpened()
        send()
    }

    private func send() {
        sentAt = owner.clock()
        switch owner.request.withUnsafeBytes({ tunnel.write(from: $0) }) {
        case .bytes: break
        default: owner.failed("tunnel write")
        }
    }

    func streamReadable() {
        while churnConnection == nil || !finished {
            let space = input.writableSpace()
            switch tunnel.read(into: space) {
            case .bytes(let n):
                input.commitWrite(n)
                parse()
            case .wouldBlock:
                return
            case .eof, .failed:
                if tunnel.status != 200 { owner.failed("connect status \(tunnel.status)") } else { owner.failed("tunnel closed") }
                tunnel.setReading(false)
                return
            }
        }
    }

    private func parse() {
        while true {
            if bodyLeft < 0 {
                guard let length = HTTP1Parser.findHeadEnd(input.readable, scanned: &scanned) else { return }
                scanned = 0
                guard
                    case .complete = HTTP1Parser.parseResponse(
                        UnsafeRawBufferPointer(rebasing: input.readable[0..<length]),
                        requestWasHead: false, into: &head),
                    case .contentLength(let n) = head.framing
                else {
                    owner.failed("bad response")
                    tunnel.close(graceful: false)
                    return
                }
                if head.status != 200 { owner.failed("status \(head.status)") }
                input.consume(length)
                bodyLeft = n
            }
            let take = min(bodyLeft, input.readableBytes)
            input.consume(take)
            bodyLeft -= take
            guard bodyLeft == 0 else { return }
            bodyLeft = -1
            owner.completed(latency: owner.clock() - sentAt)
            if let churnConnection {
                finished = true
                tunnel.close(graceful: true)  // detaches this handler
                churnConnection.close()
                return
            }
            send()
        }
    }
}

/// One thread of `waypoint hbone-load`: its own libev loop with `connections` HBONE connections of `tunnels`
/// tunnels each, or in churn mode one request per new connection.
///
/// Thread: its own after `run()`. Ownership: the command; results are read after the thread finished.
final class LoadThread: @unchecked Sendable {
    // SAFETY: the main thread touches the results only after joining this thread.
    struct Options {
        var target: SocketAddress
        var authority: String
        var connections: Int
        var tunnels: Int
        var duration: Duration
        var churn: Bool
        var context: TLSContext
    }

    let options: Options
    let request: [UInt8]
    private var loop: EventLoop!
    /// What the connections share (no server: this process only opens connections).
    private var worker: WorkerContext!
    private var clients: [HBONEConnection] = []
    private var loadTunnels: [LoadTunnel] = []
    private(set) var latencies: [Double] = []
    private(set) var errors: [String: Int] = [:]
    private(set) var openedTunnels = 0
    private var measuring = false
    private var stopped = false
    private var timers: [Timer] = []

    init(options: Options, request: [UInt8]) {
        self.options = options
        self.request = request
    }

    func clock() -> Double { loop.now }

    func run() {
        loop = EventLoop()
        var settings = ProxySettings()
        settings.trustDomains = ["cluster.local"]
        worker = WorkerContext(loop: loop, settings: settings, logger: Logger(label: "hbone-load"))
        if options.churn {
            for _ in 0..<options.connections { churnOne() }
            startMeasuring()
        } else {
            for _ in 0..<options.connections { openConnection() }
            // Measure from when every tunnel is open (or after 3 s of setup, as the reference generator does).
            let setup = Timer(loop: loop) { [unowned(unsafe) self] in self.startMeasuring() }
            setup.schedule(after: .seconds(3))
            timers.append(setup)
        }
        loop.run()
        // Watchers hold the loop unowned: free everything that owns one before the loop itself.
        loadTunnels.removeAll()
        clients.removeAll()
        timers.removeAll()
        worker = nil
        loop = nil
    }

    private func openConnection() {
        guard let connection = HBONEConnection.connect(to: options.target, context: options.context, worker: worker) else {
            return failed("tcp connect")
        }
        clients.append(connection)
        connection.onClosed = { [unowned(unsafe) self] _ in if !self.stopped && !self.options.churn { self.failed("connection closed") } }
        for _ in 0..<options.tunnels {
            guard let tunnel = connection.openTunnel(authority: options.authority) else { return failed("stream refused") }
            loadTunnels.append(LoadTunnel(tunnel: tunnel, owner: self))
        }
    }

    /// Churn: a new mTLS connection, one tunnel, one request, close, repeat.
    private func churnOne() {
        guard !stopped else { return }
        guard let connection = HBONEConnection.connect(to: options.target, context: options.context, worker: worker),
            let tunnel = connection.openTunnel(authority: options.authority)
        else { return failed("tcp connect") }
        let load = LoadTunnel(tunnel: tunnel, owner: self)
        load.churnConnection = connection
        connection.onClosed = { [unowned(unsafe) self] closed in
            self.worker.releaseLater(load)  // it may still be on the call stack that closed the connection
            self.clients.removeAll { $0 === closed }
            self.churnOne()
        }
        clients.append(connection)
    }

    func tunnelOpened() {
        openedTunnels += 1
        if openedTunnels == options.connections * options.tunnels && !options.churn { startMeasuring() }
    }

    private func startMeasuring() {
        guard !measuring else { return }
        measuring = true
        latencies.removeAll(keepingCapacity: true)
        errors.removeAll()
        latencies.reserveCapacity(1 << 20)
        let end = Timer(loop: loop) { [unowned(unsafe) self] in self.stop() }
        end.schedule(after: options.duration)
        timers.append(end)
    }

    func completed(latency: Double) {
        if measuring { latencies.append(latency) }
    }

    func failed(_ kind: String) {
        if !stopped { errors[kind, default: 0] += 1 }
    }

    private func stop() {
        stopped = true
        for client in clients { client.close() }
        loop.breakLoop()
    }
}
