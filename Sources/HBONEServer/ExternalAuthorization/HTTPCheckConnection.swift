import Filters
import WaypointCore

/// A kept-alive HTTP/1.1 connection to an HTTP external authorizer (`envoyExtAuthzHttp`), carrying one check
/// at a time: the check request goes out, the answer's head and body (at most `maxAnswer` bytes) come back
/// and become the check's outcome. Anything unexpected (connect refused, a reset, a malformed or oversized
/// answer) fails the check and closes the connection.
///
/// Thread: its worker's loop thread only. Ownership: its `ExternalAuthorization` (busy or idle), until closed.
final class HTTPCheckConnection: ByteStreamHandler {
    /// An answer larger than this fails the check (a denial page is a few KiB).
    static let maxAnswer = 64 * 1024

    let endpoint: SocketAddress
    private let stream: any ByteStream
    private unowned(unsafe) let owner: ExternalAuthorization
    private let output = ByteBuffer(lazyCapacity: 1024)
    private let input = ByteBuffer(lazyCapacity: 4096)
    private var call: ExternalCheckCall?
    private var settings = ExternalAuthorizer.HTTPSettings()
    private var requestWasHead = false
    private var head = ResponseHead()
    private var scanned = 0
    /// The answer's body as it arrives, once its head is read.
    private var body: BodyTracker?
    private(set) var isOpen = true

    init(stream: any ByteStream, endpoint: SocketAddress, owner: ExternalAuthorization) {
        self.stream = stream
        self.endpoint = endpoint
        self.owner = owner
        stream.handler = self
        stream.setReading(true)
    }

    deinit { stream.close(graceful: false) }

    /// Sends a check request; the outcome goes to `call`.
    func send(_ request: [UInt8], settings: ExternalAuthorizer.HTTPSettings, call: ExternalCheckCall) {
        self.call = call
        self.settings = settings
        requestWasHead = request.starts(with: "HEAD ".utf8)
        input.clear()
        scanned = 0
        body = nil
        call.onCancel = { [unowned(unsafe) self] in self.abandon() }
        output.append(request)
        stream.setWriteInterest(true)  // a new socket's first writability also tells that it connected
    }

    func streamWritable() {
        guard isOpen else { return }
        if stream.connectFailed || stream.writeOut(output) == nil { fail() }
    }

    func streamReadable() {
        guard isOpen else { return }
        while isOpen {
            let space = input.writableSpace()
            switch stream.read(into: space) {
            case .bytes(let n):
                guard call != nil else { return closeIdle() }  // idle: the authorizer has nothing to say
                input.commitWrite(n)
                answerProgressed(ended: false)
            case .wouldBlock:
                return
            case .eof:
                guard call != nil else { return closeIdle() }
                answerProgressed(ended: true)
                if isOpen { fail() }
            case .failed:
                guard call != nil else { return closeIdle() }
                fail()
            }
        }
    }

    /// Reads what arrived of the answer; finishes the check once it is complete.
    private func answerProgressed(ended: Bool) {
        guard input.readableBytes <= Self.maxAnswer + 16 * 1024 else { return fail() }
        if body == nil {
            guard let length = HTTP1Parser.findHeadEnd(input.readable, scanned: &scanned) else { return }
            let headBytes = UnsafeRawBufferPointer(rebasing: input.readable[0..<length])
            guard case .complete = HTTP1Parser.parseResponse(headBytes, requestWasHead: requestWasHead, into: &head), head.status >= 200
            else { return fail() }
            body = BodyTracker(head.framing)
            scanned = length  // where the body starts
        }
        let start = scanned
        let available = UnsafeRawBufferPointer(rebasing: input.readable[start...])
        var tracker = body!
        guard let taken = tracker.consume(available), taken == available.count || tracker.isComplete else { return fail() }
        if ended { tracker.connectionClosed() }
        body = tracker
        scanned += taken
        guard tracker.bodyBytes <= Self.maxAnswer else { return fail() }
        guard tracker.isComplete else { return }
        let bodyBytes = UnsafeRawBufferPointer(rebasing: input.readable[start..<scanned])
        let outcome = ExternalAuthorizer.outcome(
            settings, status: head.status, headers: headers(),
            body: head.framing == .chunked ? ChunkedScanner.decode(bodyBytes) : Array(bodyBytes))
        let reusable = !ended && head.keepAlive && head.framing != .untilClose && scanned == input.readableBytes
        finish(outcome, reusable: reusable)
    }

    private func headers() -> [(name: String, value: String)] {
        let bytes = input.readable
        return head.headers.map { ($0.name.string(in: bytes), $0.value.string(in: bytes)) }
    }

    private func finish(_ outcome: ExternalAuthorizer.Outcome, reusable: Bool) {
        guard let call else { return }
        self.call = nil
        owner.checkEnded(self, reusable: reusable)
        call.finish(outcome)
    }

    private func fail() {
        guard isOpen else { return }
        finish(.failed, reusable: false)
    }

    /// The exchange gave up on the check: its answer can no longer be told from the next one's.
    private func abandon() {
        call = nil
        owner.checkEnded(self, reusable: false)
    }

    func close() {
        guard isOpen else { return }
        isOpen = false
        stream.close(graceful: false)
    }

    private func closeIdle() {
        close()
        owner.idleClosed(self)
    }
}
