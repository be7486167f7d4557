import EventLoop
import TLS
import WaypointCore

/// A `ByteStream` over TLS that the waypoint originates to an upstream (DestinationRule `tls` SIMPLE or MUTUAL):
/// the socket connects, the handshake runs with the rule's SNI and verifies the server's certificate (its name,
/// or one of `subjectAltNames`; nothing with `insecureSkipVerify`), then reads and writes are TLS records. A
/// failed connect, handshake or verification is `connectFailed`, so the request fails as a connect failure
/// (503, `UF`) and is never sent in the clear.
///
/// Thread: its worker's loop thread only. Ownership: the upstream connection using it; it owns and closes the fd.
final class TLSStream: ByteStream {
    private enum State { case connecting, handshaking, open, failed, closed }

    private let fd: Int32
    private let tls: TLSConnection
    private let settings: UpstreamTLS
    private var state = State.connecting
    private var readWatcher: IOWatcher!
    private var writeWatcher: IOWatcher!
    private var wantsRead = false
    private var wantsWrite = false
    unowned(unsafe) var handler: (any ByteStreamHandler)?

    /// `fd` comes from `Socket.connect` (its first writability tells the connect's outcome). `http2`: the stream
    /// carries HTTP/2, so ALPN offers `h2` (else nothing, HTTP/1.1, as Istio configures Envoy).
    init?(fd: Int32, loop: EventLoop, settings: UpstreamTLS, http2: Bool) {
        guard let tls = TLSConnection(context: settings.context, fd: fd) else { return nil }
        self.fd = fd
        self.tls = tls
        self.settings = settings
        if settings.verify && settings.subjectAltNames.isEmpty {
            tls.expectServer(settings.serverName)
        } else {
            tls.sendServerName(settings.serverName)
        }
        if http2 { tls.offerH2() }
        readWatcher = IOWatcher(loop: loop, fd: fd, direction: .read) { [unowned(unsafe) self] in self.readable() }
        writeWatcher = IOWatcher(loop: loop, fd: fd, direction: .write) { [unowned(unsafe) self] in self.writable() }
        writeWatcher.start()
    }

    deinit { close(graceful: false) }

    var connectFailed: Bool { state == .failed }

    func read(into buffer: UnsafeMutableRawBufferPointer) -> IOResult {
        switch state {
        case .open: return tls.read(into: buffer)
        case .failed, .closed: return .failed(0)
        case .connecting, .handshaking: return .wouldBlock
        }
    }

    func write(from buffer: UnsafeRawBufferPointer) -> IOResult {
        switch state {
        case .open:
            let result = tls.write(from: buffer)
            if tls.hasPendingOutput { writeWatcher.start() }
            return result
        case .failed, .closed: return .failed(32)  // EPIPE
        case .connecting, .handshaking: return .wouldBlock
        }
    }

    func setReading(_ on: Bool) {
        wantsRead = on
        guard state == .open else { return }
        if on {
            readWatcher.start()
            if tls.hasDecryptedInput { readWatcher.feed() }  // the socket will not announce what OpenSSL holds
        } else {
            readWatcher.stop()
        }
    }

    func setWriteInterest(_ on: Bool) {
        wantsWrite = on
        guard state == .open else { return }
        if on || tls.hasPendingOutput { writeWatcher.start() } else { writeWatcher.stop() }
    }

    func shutdownWrite() {
        guard state == .open else { return }
        tls.shutdown()
        Socket.shutdownWrite(fd)
    }

    func close(graceful: Bool) {
        guard state != .closed else { return }
        if graceful && state == .open { tls.shutdown() }
        state = .closed
        readWatcher.stop()
        writeWatcher.stop()
        Socket.close(fd)
    }

    private func writable() {
        switch state {
        case .connecting:
            guard Socket.connectResult(fd) == 0 else { return fail() }
            state = .handshaking
            handshake()
        case .handshaking:
            handshake()
        case .open:
            if tls.hasPendingOutput, case .wouldBlock = tls.flush() { return }
            if wantsWrite { handler?.streamWritable() } else if !tls.hasPendingOutput { writeWatcher.stop() }
        case .failed, .closed:
            writeWatcher.stop()
        }
    }

    private func readable() {
        switch state {
        case .handshaking:
            handshake()
        case .open:
            // Decrypted data OpenSSL still holds is the handler's too: it reads until it has it all.
            for _ in 0..<16 where wantsRead && state == .open {
                handler?.streamReadable()
                if !tls.hasDecryptedInput { break }
            }
        default:
            readWatcher.stop()
        }
    }

    private func handshake() {
        switch tls.handshake() {
        case .done:
            guard verifiedNames() else { return fail() }
            state = .open
            readWatcher.stop()
            writeWatcher.stop()
            setReading(wantsRead)
            setWriteInterest(wantsWrite)
        case .wantRead:
            readWatcher.start()
            writeWatcher.stop()
        case .wantWrite:
            writeWatcher.start()
        case .failed:
            fail()
        }
    }

    /// With `subjectAltNames`, the verified certificate must carry one of them (DNS or URI).
    private func verifiedNames() -> Bool {
        guard settings.verify, !settings.subjectAltNames.isEmpty else { return true }
        let names = tls.peerDNSNames + tls.peerURIs
        return settings.subjectAltNames.contains { names.contains($0) }
    }

    /// The connection never got established: the handler hears it as a connect failure.
    private func fail() {
        state = .failed
        readWatcher.stop()
        writeWatcher.stop()
        if wantsWrite { handler?.streamWritable() } else if wantsRead { handler?.streamReadable() }
    }
}
