internal import CNghttp2
public import WaypointCore

/// HTTP/2 settings we send, plus the limits that protect us from hostile peers.
public struct HTTP2Settings: Sendable {
    /// SETTINGS_MAX_CONCURRENT_STREAMS (ztunnel's server: 200). A server session refuses a stream past it
    /// with REFUSED_STREAM and keeps the others (RFC 9113 5.1.2: a stream error, not a connection error).
    public var maxConcurrentStreams: UInt32 = 200
    /// SETTINGS_INITIAL_WINDOW_SIZE (ztunnel: 4 MiB).
    public var streamWindow: Int32 = 4 << 20
    /// The connection window (ztunnel: 16 MiB; equal stream and connection windows can deadlock, says ztunnel).
    public var connectionWindow: Int32 = 16 << 20
    /// SETTINGS_MAX_FRAME_SIZE (ztunnel: 1 MiB).
    public var maxFrameSize: UInt32 = 1 << 20
    /// SETTINGS_MAX_HEADER_LIST_SIZE; ztunnel's header lists stay below 16 KiB. A header block that decodes
    /// to more (name + value + 32 per field, RFC 9113 6.5.2) has its stream reset as soon as it crosses the
    /// limit, and the rest of the block is not decoded into fields (an HPACK bomb costs no more than this).
    public var maxHeaderListSize: UInt32 = 64 << 10
    /// Advertise SETTINGS_ENABLE_CONNECT_PROTOCOL so that an extended CONNECT reaches us and gets a 400,
    /// instead of a bare stream reset from the library.
    public var enableConnectProtocol = true
    /// Rapid reset (CVE-2023-44487): streams the peer may reset, refilled at `resetRefillPerSecond`.
    public var resetBurst: UInt64 = 1000
    public var resetRefillPerSecond: UInt64 = 100
    /// CONTINUATION flood (CVE-2024-28182): frames allowed in one header block.
    public var maxContinuations = 8

    public init() {}
}

/// What `HTTP2SessionDelegate.http2ReadData` produced for a stream's DATA.
public enum HTTP2DataChunk {
    /// `count` bytes were written; `end` sets END_STREAM on this frame.
    case bytes(Int, end: Bool)
    /// `count` bytes were written and the body ends here, followed by trailers that the delegate submitted
    /// with `submitTrailers` during this call (which carry END_STREAM).
    case bytesThenTrailers(Int)
    /// Nothing now; call `resume(stream:)` when there is.
    case deferred
}

/// Why a session ended the connection on its own; the GOAWAY it sends says the same.
public enum HTTP2Failure: Equatable, Sendable {
    /// The peer broke the protocol (bad preface, malformed frames, compression errors).
    case protocolError
    /// The peer sent more than it may: CONTINUATION, SETTINGS, PING or reset floods.
    case flood

    var code: HTTP2ErrorCode { self == .flood ? .enhanceYourCalm : .protocolError }
    var debugText: String { self == .flood ? "flood" : "protocol error" }
}

/// Receives what an `HTTP2Session` decodes. Every call happens inside `receive` or `send` on the session's
/// thread; the delegate must not call `receive` or `send` from inside one (it may submit, reset and resume).
public protocol HTTP2SessionDelegate: AnyObject {
    /// A header block starts a stream (a request on a server, a response on a client).
    func http2BeginHeaders(stream: Int32)
    /// One header field; the bytes are valid only during the call.
    func http2Header(stream: Int32, name: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer)
    /// The header block is complete; `endStream` when it also ends the peer's side.
    func http2HeadersComplete(stream: Int32, endStream: Bool)
    /// DATA payload; valid only during the call. The delegate calls `consume` once the bytes moved on.
    func http2Data(stream: Int32, _ bytes: UnsafeRawBufferPointer)
    /// The peer ended its side of the stream (END_STREAM on DATA).
    func http2RemoteEnded(stream: Int32)
    /// The stream is gone (both sides ended, or reset by either side with `errorCode`).
    func http2StreamClosed(stream: Int32, errorCode: UInt32)
    /// Fills `buffer` with the stream's next DATA bytes.
    func http2ReadData(stream: Int32, into buffer: UnsafeMutableRawBufferPointer) -> HTTP2DataChunk
    /// The peer acknowledged our PING.
    func http2PingAcknowledged()
    /// The peer's connection preface is complete (its first SETTINGS arrived); by default ignored.
    func http2PrefaceReceived()
    /// The session reset a stream of the peer's on its own (`http2StreamClosed` follows); by default ignored.
    func http2StreamRefused(stream: Int32, reason: HTTP2Refusal)
}

extension HTTP2SessionDelegate {
    public func http2PrefaceReceived() {}
    public func http2StreamRefused(stream: Int32, reason: HTTP2Refusal) {}
}

/// Why a session reset a peer's stream without asking its delegate.
public enum HTTP2Refusal: Sendable {
    /// Opened past our SETTINGS_MAX_CONCURRENT_STREAMS: REFUSED_STREAM, the peer may retry it.
    case tooManyStreams
    /// Its header list crossed our SETTINGS_MAX_HEADER_LIST_SIZE.
    case headerListTooLarge

    public var label: StaticString { self == .tooManyStreams ? "too_many_streams" : "header_list_too_large" }
}

/// One nghttp2 session (server or client side) driven through memory: `receive` feeds it bytes from the
/// peer and `send` collects the bytes to write, so the caller owns the socket and the TLS.
///
/// Window updates are manual (`nghttp2_option_set_no_auto_window_update`): the delegate calls `consume`
/// only when received bytes have left for the next hop, so a slow next hop slows that stream alone.
///
/// DATA is copied once: the delegate writes a frame's payload straight into the caller's output buffer, behind
/// room left for the frame header (`NGHTTP2_DATA_FLAG_NO_COPY`), and frames are sized so that a frame with its
/// header fills whole 16 KiB TLS records (a 16,393-byte frame cost a second, 9-byte record and write).
///
/// Thread: its connection's loop thread only. Ownership: one HBONE connection; frees the session in `deinit`.
public final class HTTP2Session {
    public enum Role { case server, client }

    private var session: OpaquePointer!
    unowned(unsafe) let delegate: any HTTP2SessionDelegate
    private let settings: HTTP2Settings
    /// Decoded bytes of the header block being received (name + value + 32 per field).
    private var headerListBytes = 0
    /// Streams the peer opened that are not closed yet (server role).
    private var peerStreams = 0
    private let isServer: Bool
    /// Our first SETTINGS frame still has to go out (server role): see `send`.
    private var initialSettingsPending: Bool
    /// Why `receive` failed, once it has; nil while the session is healthy.
    public private(set) var failure: HTTP2Failure?
    /// PINGs we sent and the acks that came back (acks come in order: the n-th answers the n-th PING).
    public private(set) var pingsSent = 0
    public fileprivate(set) var pingsAcked = 0
    /// A shutdown notice was submitted; its PING goes out once the notice has.
    private var pingAfterNotice = false
    /// Whether the peer's first SETTINGS (the end of its connection preface) has arrived.
    fileprivate var prefaceReceived = false
    /// The error code of a GOAWAY the session sent on its own (nghttp2 ends a session this way for protocol
    /// errors and for floods such as rapid reset), nil while none was sent.
    public fileprivate(set) var goAwayErrorSent: UInt32?
    /// The buffer `send` is filling, where DATA payloads are written directly.
    fileprivate unowned(unsafe) var output: ByteBuffer?

    public init(role: Role, settings: HTTP2Settings, delegate: any HTTP2SessionDelegate) {
        self.delegate = delegate
        self.settings = settings
        isServer = role == .server
        initialSettingsPending = isServer
        var callbacks: OpaquePointer?
        nghttp2_session_callbacks_new(&callbacks)
        defer { nghttp2_session_callbacks_del(callbacks) }
        nghttp2_session_callbacks_set_on_begin_headers_callback(callbacks, onBeginHeaders)
        nghttp2_session_callbacks_set_on_header_callback(callbacks, onHeader)
        nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks, onFrameReceived)
        nghttp2_session_callbacks_set_on_data_chunk_recv_callback(callbacks, onDataChunk)
        nghttp2_session_callbacks_set_on_stream_close_callback(callbacks, onStreamClose)
        nghttp2_session_callbacks_set_on_frame_send_callback(callbacks, onFrameSent)
        nghttp2_session_callbacks_set_send_data_callback(callbacks, sendData)
        nghttp2_session_callbacks_set_data_source_read_length_callback(callbacks, dataLength)

        var option: OpaquePointer?
        nghttp2_option_new(&option)
        defer { nghttp2_option_del(option) }
        nghttp2_option_set_no_auto_window_update(option, 1)
        nghttp2_option_set_stream_reset_rate_limit(option, settings.resetBurst, settings.resetRefillPerSecond)
        nghttp2_option_set_max_continuations(option, settings.maxContinuations)
        nghttp2_option_set_max_outbound_ack(option, 1000)
        nghttp2_option_set_max_settings(option, 32)

        let me = Unmanaged.passUnretained(self).toOpaque()
        var raw: OpaquePointer?
        let rc =
            role == .server
            ? nghttp2_session_server_new2(&raw, callbacks, me, option)
            : nghttp2_session_client_new2(&raw, callbacks, me, option)
        precondition(rc == 0 && raw != nil, "nghttp2 session: out of memory")
        session = raw

        // nghttp2 ends the whole connection (GOAWAY) when a peer opens one stream past the limit it was given,
        // where RFC 9113 5.1.2 asks for a stream error. So a server's nghttp2 is given twice the limit, `send`
        // writes the real limit into the SETTINGS frame on the wire, and `beganHeaders` refuses the excess.
        let concurrentStreams =
            role == .server
            ? settings.maxConcurrentStreams.multipliedReportingOverflow(by: 2).partialValue
            : settings.maxConcurrentStreams
        var entries = [
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS.rawValue), value: concurrentStreams),
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE.rawValue), value: UInt32(settings.streamWindow)),
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_MAX_FRAME_SIZE.rawValue), value: settings.maxFrameSize),
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE.rawValue), value: settings.maxHeaderListSize),
        ]
        if role == .server && settings.enableConnectProtocol {
            entries.append(nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_ENABLE_CONNECT_PROTOCOL.rawValue), value: 1))
        }
        nghttp2_submit_settings(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), entries, entries.count)
        nghttp2_session_set_local_window_size(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), 0, settings.connectionWindow)
    }

    deinit { nghttp2_session_del(session) }

    /// Feeds bytes from the peer. False when the session failed (protocol error or flood): close the connection
    /// after one last `send` (which carries our GOAWAY).
    public func receive(_ bytes: UnsafeRawBufferPointer) -> Bool {
        guard failure == nil else { return false }
        let rc = nghttp2_session_mem_recv(session, bytes.baseAddress?.assumingMemoryBound(to: UInt8.self), bytes.count)
        if rc < 0 {
            switch Int32(rc) {
            case NGHTTP2_ERR_FLOODED.rawValue, NGHTTP2_ERR_TOO_MANY_CONTINUATIONS.rawValue, NGHTTP2_ERR_TOO_MANY_SETTINGS.rawValue:
                failure = .flood
            default:
                failure = .protocolError
            }
        }
        return failure == nil
    }

    /// Appends frames to send to `out` until it holds `limit` bytes or nothing is pending. False on failure.
    public func send(into out: ByteBuffer, limit: Int) -> Bool {
        output = out
        defer { output = nil }
        while out.readableBytes < limit {
            var data: UnsafePointer<UInt8>?
            let n = nghttp2_session_mem_send(session, &data)
            if n < 0 { return false }
            if n == 0 { break }
            out.append(UnsafeRawBufferPointer(start: data, count: n))
            if initialSettingsPending { advertiseConcurrentStreams(inLast: n, of: out) }
        }
        return true
    }

    /// Writes `maxConcurrentStreams` over the doubled value nghttp2 put in our first SETTINGS frame, found among
    /// the frames in the last `count` bytes of `out` (its first entry, as submitted in `init`).
    private func advertiseConcurrentStreams(inLast count: Int, of out: ByteBuffer) {
        var frame = out.base + out.writerIndex - count
        let end = out.base + out.writerIndex
        while end - frame >= 9 {
            let length =
                Int(frame.load(as: UInt8.self)) << 16 | Int(frame.load(fromByteOffset: 1, as: UInt8.self)) << 8
                | Int(frame.load(fromByteOffset: 2, as: UInt8.self))
            let isSettings =
                frame.load(fromByteOffset: 3, as: UInt8.self) == UInt8(NGHTTP2_SETTINGS.rawValue)
                && frame.load(fromByteOffset: 4, as: UInt8.self) & UInt8(NGHTTP2_FLAG_ACK.rawValue) == 0
            if isSettings && length >= 6 && end - frame >= 15 && frame.load(fromByteOffset: 9, as: UInt8.self) == 0
                && frame.load(fromByteOffset: 10, as: UInt8.self) == UInt8(NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS.rawValue)
            {
                frame.storeBytes(of: settings.maxConcurrentStreams.bigEndian, toByteOffset: 11, as: UInt32.self)
                initialSettingsPending = false
                return
            }
            frame += 9 + length
        }
    }

    /// After `receive` failed: the frames nghttp2 still has (up to `limit` bytes), then a GOAWAY saying why
    /// when nghttp2 sent none itself (it sends none when it stops on a flood or a callback's error).
    public func appendFinalFrames(into out: ByteBuffer, limit: Int) {
        _ = send(into: out, limit: limit)
        guard goAwayErrorSent == nil, let failure else { return }
        let debug = Array(failure.debugText.utf8)
        let last = UInt32(bitPattern: nghttp2_session_get_last_proc_stream_id(session))
        var frame: [UInt8] = [0, 0, UInt8(8 + debug.count), UInt8(NGHTTP2_GOAWAY.rawValue), 0, 0, 0, 0, 0]
        for value in [last, failure.code.rawValue] { frame += withUnsafeBytes(of: value.bigEndian, Array.init) }
        frame += debug
        frame.withUnsafeBytes { out.append($0) }
        goAwayErrorSent = failure.code.rawValue
    }

    /// The session still has something to read or write; when neither, the connection can close.
    public var isAlive: Bool { nghttp2_session_want_read(session) != 0 || nghttp2_session_want_write(session) != 0 }

    /// The peer's SETTINGS_MAX_CONCURRENT_STREAMS (unlimited until its SETTINGS arrive).
    public var peerMaxConcurrentStreams: Int {
        Int(nghttp2_session_get_remote_settings(session, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS))
    }

    /// Whether a new request stream may be opened (client role): false once a GOAWAY was sent or received or
    /// the stream IDs are spent.
    public var acceptsNewRequests: Bool { nghttp2_session_check_request_allowed(session) != 0 }

    /// Answers a stream with `:status` and extra headers; `body` attaches the delegate's DATA source.
    public func respond(stream: Int32, status: Int, headers: [(String, String)] = [], body: Bool) {
        respond(stream: stream, fields: [(":status", String(status))] + headers, body: body)
    }

    /// Sends a header block without a body: trailers after DATA (from `http2ReadData`, returning
    /// `.bytesThenTrailers`), or a response that is headers only (`endStream`), as gRPC's trailers-only errors.
    public func submitTrailers(stream: Int32, headers: [(String, String)]) {
        withHeaderFields(headers) { nva in _ = nghttp2_submit_trailer(session, stream, nva.baseAddress, nva.count) }
    }

    /// Answers a stream with `fields` as given (`:status` first), with a body from the delegate or none.
    public func respond(stream: Int32, fields: [(String, String)], body: Bool) {
        withHeaderFields(fields) { nva in
            if body {
                var provider = nghttp2_data_provider(source: nghttp2_data_source(ptr: nil), read_callback: readData)
                _ = nghttp2_submit_response(session, stream, nva.baseAddress, nva.count, &provider)
            } else {
                _ = nghttp2_submit_response(session, stream, nva.baseAddress, nva.count, nil)
            }
        }
    }

    /// Opens a stream with a request (client role); its DATA comes from the delegate. Nil when refused.
    public func request(headers: [(String, String)], body: Bool) -> Int32? {
        let id = withHeaderFields(headers) { nva -> Int32 in
            if body {
                var provider = nghttp2_data_provider(source: nghttp2_data_source(ptr: nil), read_callback: readData)
                return nghttp2_submit_request(session, nil, nva.baseAddress, nva.count, &provider, nil)
            }
            return nghttp2_submit_request(session, nil, nva.baseAddress, nva.count, nil, nil)
        }
        return id > 0 ? id : nil
    }

    /// The delegate has DATA again for a stream whose source returned `.deferred`.
    public func resume(stream: Int32) { _ = nghttp2_session_resume_data(session, stream) }

    /// `count` received bytes of `stream` have left for the next hop: the peer may send that much more.
    public func consume(stream: Int32, _ count: Int) { _ = nghttp2_session_consume(session, stream, count) }

    public func reset(stream: Int32, code: HTTP2ErrorCode) {
        _ = nghttp2_submit_rst_stream(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), stream, code.rawValue)
    }

    public func ping() {
        pingsSent += 1
        _ = nghttp2_submit_ping(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), nil)
    }

    /// The first step of a graceful shutdown (server role): a GOAWAY with the largest stream ID, which tells the
    /// client to open no new streams while still accepting those already on their way (RFC 9113 6.8), then a
    /// PING once that GOAWAY is out (nghttp2 sends PINGs ahead of GOAWAYs, so it is submitted only then).
    /// Returns that PING's number: when `pingsAcked` reaches it, the client has seen the notice and every
    /// stream it opened before has arrived.
    public func shutdownNotice() -> Int {
        _ = nghttp2_submit_shutdown_notice(session)
        pingsSent += 1
        pingAfterNotice = true
        return pingsSent
    }

    fileprivate func sentGoAway(_ goaway: nghttp2_goaway) {
        if goaway.error_code != 0 { goAwayErrorSent = goaway.error_code }
        if pingAfterNotice && goaway.last_stream_id == Int32.max {
            pingAfterNotice = false
            _ = nghttp2_submit_ping(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), nil)
        }
    }

    /// GOAWAY with the last stream we accepted: no new streams, the open ones finish.
    public func goAway(code: HTTP2ErrorCode = .noError) {
        let last = nghttp2_session_get_last_proc_stream_id(session)
        _ = nghttp2_submit_goaway(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), last, code.rawValue, nil, 0)
    }

    /// Builds an `nghttp2_nv` array over one contiguous copy of the fields (one allocation per stream opened,
    /// never per request inside a tunnel).
    private func withHeaderFields<R>(_ fields: [(String, String)], _ body: (UnsafeBufferPointer<nghttp2_nv>) -> R) -> R {
        var storage: [UInt8] = []
        for (name, value) in fields { storage += Array(name.utf8); storage += Array(value.utf8) }
        return storage.withUnsafeMutableBufferPointer { bytes in
            var offset = 0
            var nva: [nghttp2_nv] = []
            nva.reserveCapacity(fields.count)
            for (name, value) in fields {
                let n = name.utf8.count, v = value.utf8.count
                nva.append(
                    nghttp2_nv(
                        name: bytes.baseAddress! + offset, value: bytes.baseAddress! + offset + n,
                        namelen: n, valuelen: v, flags: UInt8(NGHTTP2_NV_FLAG_NONE.rawValue)))
                offset += n + v
            }
            return nva.withUnsafeBufferPointer(body)
        }
    }

    /// A header block starts. A request past `maxConcurrentStreams` is refused here, before its fields are
    /// decoded: our RST_STREAM goes out and nghttp2 skips the block (it adds no reset of its own to a stream
    /// already resetting).
    fileprivate func beganHeaders(_ frame: nghttp2_frame) -> Int32 {
        headerListBytes = 0
        if isServer && frame.headers.cat == NGHTTP2_HCAT_REQUEST {
            peerStreams += 1
            if peerStreams > Int(settings.maxConcurrentStreams) {
                reset(stream: frame.hd.stream_id, code: .refusedStream)
                delegate.http2StreamRefused(stream: frame.hd.stream_id, reason: .tooManyStreams)
                return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE.rawValue
            }
        }
        delegate.http2BeginHeaders(stream: frame.hd.stream_id)
        return 0
    }

    /// One decoded field. Past `maxHeaderListSize` the stream is reset and the rest of its block skipped
    /// (nghttp2 resets it with INTERNAL_ERROR, as Envoy's waypoint does on a header overflow).
    fileprivate func receivedHeader(stream: Int32, name: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer) -> Int32 {
        headerListBytes += name.count + value.count + 32
        if headerListBytes > Int(settings.maxHeaderListSize) {
            delegate.http2StreamRefused(stream: stream, reason: .headerListTooLarge)
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE.rawValue
        }
        delegate.http2Header(stream: stream, name: name, value: value)
        return 0
    }

    fileprivate func streamClosed(_ stream: Int32, errorCode: UInt32) {
        if isServer && stream & 1 == 1 { peerStreams -= 1 }
        delegate.http2StreamClosed(stream: stream, errorCode: errorCode)
    }

}

/// RST_STREAM and GOAWAY codes we send.
public enum HTTP2ErrorCode: UInt32, Sendable {
    case noError = 0, protocolError = 1, internalError = 2, flowControlError = 3, refusedStream = 7, cancel = 8,
        connectError = 10, enhanceYourCalm = 11
}

// MARK: - nghttp2 callbacks (global functions: C function pointers carry no context or actor isolation)

@inline(__always)
private func owner(_ userData: UnsafeMutableRawPointer?) -> HTTP2Session {
    Unmanaged<HTTP2Session>.fromOpaque(userData!).takeUnretainedValue()
}

private func onFrameSent(_ session: OpaquePointer?, _ frame: UnsafePointer<nghttp2_frame>?, _ userData: UnsafeMutableRawPointer?) -> Int32 {
    let frame = frame!.pointee
    if UInt32(frame.hd.type) == NGHTTP2_GOAWAY.rawValue { owner(userData).sentGoAway(frame.goaway) }
    return 0
}

private func onBeginHeaders(_ session: OpaquePointer?, _ frame: UnsafePointer<nghttp2_frame>?, _ userData: UnsafeMutableRawPointer?)
    -> Int32
{
    owner(userData).beganHeaders(frame!.pointee)
}

private func onHeader(
    _ session: OpaquePointer?, _ frame: UnsafePointer<nghttp2_frame>?, _ name: UnsafePointer<UInt8>?, _ nameLength: Int,
    _ value: UnsafePointer<UInt8>?, _ valueLength: Int, _ flags: UInt8, _ userData: UnsafeMutableRawPointer?
) -> Int32 {
    owner(userData).receivedHeader(
        stream: frame!.pointee.hd.stream_id,
        name: UnsafeRawBufferPointer(start: name, count: nameLength),
        value: UnsafeRawBufferPointer(start: value, count: valueLength))
}

private func onFrameReceived(_ session: OpaquePointer?, _ frame: UnsafePointer<nghttp2_frame>?, _ userData: UnsafeMutableRawPointer?)
    -> Int32
{
    let hd = frame!.pointee.hd
    let endStream = hd.flags & UInt8(NGHTTP2_FLAG_END_STREAM.rawValue) != 0
    let delegate = owner(userData).delegate
    switch UInt32(hd.type) {
    case NGHTTP2_HEADERS.rawValue:
        delegate.http2HeadersComplete(stream: hd.stream_id, endStream: endStream)
    case NGHTTP2_DATA.rawValue where endStream:
        delegate.http2RemoteEnded(stream: hd.stream_id)
    case NGHTTP2_PING.rawValue where hd.flags & UInt8(NGHTTP2_FLAG_ACK.rawValue) != 0:
        owner(userData).pingsAcked += 1
        delegate.http2PingAcknowledged()
    case NGHTTP2_SETTINGS.rawValue where !owner(userData).prefaceReceived:
        owner(userData).prefaceReceived = true
        delegate.http2PrefaceReceived()
    default:
        break
    }
    return 0
}

private func onDataChunk(
    _ session: OpaquePointer?, _ flags: UInt8, _ stream: Int32, _ data: UnsafePointer<UInt8>?, _ length: Int,
    _ userData: UnsafeMutableRawPointer?
) -> Int32 {
    owner(userData).delegate.http2Data(stream: stream, UnsafeRawBufferPointer(start: data, count: length))
    return 0
}

private func onStreamClose(_ session: OpaquePointer?, _ stream: Int32, _ errorCode: UInt32, _ userData: UnsafeMutableRawPointer?) -> Int32 {
    owner(userData).streamClosed(stream, errorCode: errorCode)
    return 0
}

/// A DATA frame's payload, written by the delegate into the output buffer after room for the 9-byte header
/// that `sendData` fills in.
private func readData(
    _ session: OpaquePointer?, _ stream: Int32, _ buffer: UnsafeMutablePointer<UInt8>?, _ length: Int,
    _ flags: UnsafeMutablePointer<UInt32>?, _ source: UnsafeMutablePointer<nghttp2_data_source>?,
    _ userData: UnsafeMutableRawPointer?
) -> Int {
    let me = owner(userData)
    guard let out = me.output else { return Int(NGHTTP2_ERR_DEFERRED.rawValue) }  // DATA is packed only in `send`
    out.reserve(frameHeaderSize + length)
    let payload = UnsafeMutableRawBufferPointer(start: out.base + out.writerIndex + frameHeaderSize, count: length)
    switch me.delegate.http2ReadData(stream: stream, into: payload) {
    case .bytes(let n, let end):
        flags!.pointee |= NGHTTP2_DATA_FLAG_NO_COPY.rawValue
        if end { flags!.pointee |= NGHTTP2_DATA_FLAG_EOF.rawValue }
        return n
    case .bytesThenTrailers(let n):
        flags!.pointee |= NGHTTP2_DATA_FLAG_NO_COPY.rawValue | NGHTTP2_DATA_FLAG_EOF.rawValue | NGHTTP2_DATA_FLAG_NO_END_STREAM.rawValue
        return n
    case .deferred:
        return Int(NGHTTP2_ERR_DEFERRED.rawValue)
    }
}

/// Completes a DATA frame whose payload `readData` already wrote: the header goes in front of it (we never pad).
private func sendData(
    _ session: OpaquePointer?, _ frame: UnsafeMutablePointer<nghttp2_frame>?, _ header: UnsafePointer<UInt8>?,
    _ length: Int, _ source: UnsafeMutablePointer<nghttp2_data_source>?, _ userData: UnsafeMutableRawPointer?
) -> Int32 {
    guard let out = owner(userData).output, let header else { return NGHTTP2_ERR_CALLBACK_FAILURE.rawValue }
    (out.base + out.writerIndex).copyMemory(from: header, byteCount: frameHeaderSize)
    out.commitWrite(frameHeaderSize + length)
    return 0
}

/// The DATA payload per frame: 64 KiB or 16 KiB on the wire with the header (whole TLS records), as the peer's
/// SETTINGS_MAX_FRAME_SIZE allows (at least 16 KiB); nghttp2 lowers it to the flow-control windows.
private func dataLength(
    _ session: OpaquePointer?, _ type: UInt8, _ stream: Int32, _ connectionWindow: Int32, _ streamWindow: Int32,
    _ peerMaxFrameSize: UInt32, _ userData: UnsafeMutableRawPointer?
) -> Int {
    let large = 64 * 1024 - frameHeaderSize
    return peerMaxFrameSize >= large ? large : 16 * 1024 - frameHeaderSize
}

private let frameHeaderSize = 9
