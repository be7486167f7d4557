#if canImport(Glibc)
    import Glibc
#endif
internal import CLibEV
public import WaypointCore

/// The socket calls' view of an address (the address itself is `WaypointCore`'s).
extension SocketAddress {
    fileprivate func withSockAddr<R>(_ body: (UnsafePointer<sockaddr>, socklen_t) -> R) -> R {
        if isIPv6 {
            var sa = sockaddr_in6()
            sa.sin6_family = sa_family_t(AF_INET6)
            sa.sin6_port = port.bigEndian
            withRawIP { ip in withUnsafeMutableBytes(of: &sa.sin6_addr) { $0.copyMemory(from: ip) } }
            return withUnsafePointer(to: &sa) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_in6>.size)) }
            }
        }
        var sa = sockaddr_in()
        sa.sin_family = sa_family_t(AF_INET)
        sa.sin_port = port.bigEndian
        withRawIP { ip in withUnsafeMutableBytes(of: &sa.sin_addr) { $0.copyMemory(from: ip) } }
        return withUnsafePointer(to: &sa) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
    }

    fileprivate init?(storage: UnsafePointer<sockaddr_storage>) {
        switch Int32(storage.pointee.ss_family) {
        case AF_INET:
            let address = storage.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { p in
                withUnsafeBytes(of: p.pointee.sin_addr) { SocketAddress(rawIP: $0, port: UInt16(bigEndian: p.pointee.sin_port)) }
            }
            guard let address else { return nil }
            self = address
        case AF_INET6:
            let address = storage.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { p in
                withUnsafeBytes(of: p.pointee.sin6_addr) { SocketAddress(rawIP: $0, port: UInt16(bigEndian: p.pointee.sin6_port)) }
            }
            guard let address else { return nil }
            self = address
        default:
            return nil
        }
    }
}

/// A socket call that failed, with the call's name and errno text.
public struct SocketError: Error, CustomStringConvertible, Sendable {
    public let call: String
    public let code: Int32
    public var description: String { "\(call): \(String(cString: strerror(code)))" }
}

/// What a non-blocking read or write did.
public enum IOResult: Equatable {
    /// This many bytes moved (always > 0).
    case bytes(Int)
    /// Nothing now; wait for readiness.
    case wouldBlock
    /// Orderly end of stream (reads only).
    case eof
    /// The connection failed (errno).
    case failed(Int32)
}

/// Non-blocking TCP socket calls on plain file descriptors. The fd's owner closes it.
public enum Socket {
    /// A non-blocking listening socket. `reusePort` lets every worker bind its own socket to the same address.
    public static func listen(_ address: SocketAddress, reusePort: Bool, backlog: Int32 = 4096) throws(SocketError) -> Int32 {
        let fd = socket(
            address.isIPv6 ? AF_INET6 : AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue),
            0)
        guard fd >= 0 else { throw SocketError(call: "socket", code: errno) }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        if reusePort { setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, socklen_t(MemoryLayout<Int32>.size)) }
        let rc = address.withSockAddr { bind(fd, $0, $1) }
        guard rc == 0 else {
            let code = errno
            close(fd)
            throw SocketError(call: "bind \(address)", code: code)
        }
        guard Glibc.listen(fd, backlog) == 0 else {
            let code = errno
            close(fd)
            throw SocketError(call: "listen \(address)", code: code)
        }
        return fd
    }

    /// The address a socket is bound to (the real port after binding port 0).
    public static func localAddress(_ fd: Int32) -> SocketAddress? {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let rc = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        guard rc == 0 else { return nil }
        return SocketAddress(storage: &storage)
    }

    /// Accepts one connection as a non-blocking fd with TCP_NODELAY set; nil when none is pending.
    public static func accept(_ listenFD: Int32) -> (fd: Int32, peer: SocketAddress?)? {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let fd = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                accept4(listenFD, $0, &length, Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue))
            }
        }
        guard fd >= 0 else { return nil }
        setNoDelay(fd)
        return (fd, SocketAddress(storage: &storage))
    }

    /// Starts a non-blocking connect; completion is signalled by writability, then `connectResult`.
    public static func connect(to address: SocketAddress) -> Result<Int32, SocketError> {
        let fd = socket(
            address.isIPv6 ? AF_INET6 : AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue),
            0)
        guard fd >= 0 else { return .failure(SocketError(call: "socket", code: errno)) }
        setNoDelay(fd)
        let rc = address.withSockAddr { Glibc.connect(fd, $0, $1) }
        if rc != 0 && errno != EINPROGRESS {
            let code = errno
            close(fd)
            return .failure(SocketError(call: "connect \(address)", code: code))
        }
        return .success(fd)
    }

    /// One blocking request/response for a background thread (never a loop thread): connects, writes `request`,
    /// reads until the peer closes or, given `length`, until the response is as long as `length` says (it sees the
    /// bytes so far; nil while it cannot tell); every step bounded by `timeout`. Nil on any failure.
    public static func blockingExchange(
        with address: SocketAddress, request: [UInt8], timeout: Duration, length: (([UInt8]) -> Int?)? = nil
    ) -> [UInt8]? {
        guard case .success(let fd) = connectedBlocking(address, type: Int32(SOCK_STREAM.rawValue), timeout: timeout) else { return nil }
        defer { close(fd) }
        var sent = 0
        while sent < request.count {
            let n = request.withUnsafeBytes { send(fd, $0.baseAddress! + sent, $0.count - sent, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { return nil }
            sent += n
        }
        var response: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            if let length, let expected = length(response), response.count >= expected { return Array(response[0..<expected]) }
            let n = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n == 0 { return length == nil ? response : nil }
            guard n > 0 else { return nil }
            response += chunk[0..<n]
        }
    }

    /// One UDP datagram exchange for a background thread (never a loop thread): sends `request` to `address`
    /// from a connected socket (so only its answers are read) and returns the first datagram that comes back
    /// within `timeout`, at most 64 KiB. Nil on any failure.
    public static func datagramExchange(with address: SocketAddress, request: [UInt8], timeout: Duration) -> [UInt8]? {
        guard case .success(let fd) = connectedBlocking(address, type: Int32(SOCK_DGRAM.rawValue), timeout: timeout) else { return nil }
        defer { close(fd) }
        guard request.withUnsafeBytes({ send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }) == request.count else { return nil }
        var answer = [UInt8](repeating: 0, count: 65536)
        let n = answer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        guard n > 0 else { return nil }
        return Array(answer[0..<n])
    }

    /// A blocking connection for a background thread (never a loop thread): connect, reads and writes each
    /// bounded by `timeout` (a read that times out reports `.wouldBlock`).
    public static func connectBlocking(to address: SocketAddress, timeout: Duration) -> Result<Int32, SocketError> {
        let result = connectedBlocking(address, type: Int32(SOCK_STREAM.rawValue), timeout: timeout)
        if case .success(let fd) = result { setNoDelay(fd) }
        return result
    }

    /// A blocking socket of `type` (`SOCK_STREAM`, `SOCK_DGRAM`) connected to `address`, its connect, sends and
    /// receives each bounded by `timeout`.
    private static func connectedBlocking(_ address: SocketAddress, type: Int32, timeout: Duration) -> Result<Int32, SocketError> {
        let fd = socket(address.isIPv6 ? AF_INET6 : AF_INET, type | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return .failure(SocketError(call: "socket", code: errno)) }
        let (seconds, attoseconds) = timeout.components
        var limit = timeval(tv_sec: Int(seconds), tv_usec: Int(attoseconds / 1_000_000_000_000))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
        guard address.withSockAddr({ Glibc.connect(fd, $0, $1) }) == 0 else {
            let code = errno
            close(fd)
            return .failure(SocketError(call: "connect \(address)", code: code))
        }
        return .success(fd)
    }

    /// The address for `host` (an IP address, or a name resolved now, blocking: for the control-plane threads,
    /// never a worker).
    public static func resolve(_ host: String, _ port: UInt16) -> SocketAddress? {
        if let address = SocketAddress(ip: host, port: port) { return address }
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var result: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, nil, &hints, &result) == 0, let first = result else { return nil }
        defer { freeaddrinfo(result) }
        if first.pointee.ai_family == AF_INET {
            return first.pointee.ai_addr.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { sin in
                withUnsafeBytes(of: sin.pointee.sin_addr) { SocketAddress(rawIP: $0, port: port) }
            }
        }
        return first.pointee.ai_addr.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { sin6 in
            withUnsafeBytes(of: sin6.pointee.sin6_addr) { SocketAddress(rawIP: $0, port: port) }
        }
    }

    /// The outcome of a connect started by `connect(to:)`: 0 on success, else the errno.
    public static func connectResult(_ fd: Int32) -> Int32 {
        var code: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &code, &length)
        return code
    }

    private static func setNoDelay(_ fd: Int32) {
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
    }

    @inline(__always)
    public static func read(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer) -> IOResult {
        let n = Glibc.read(fd, buffer.baseAddress, buffer.count)
        if n > 0 { return .bytes(n) }
        if n == 0 { return .eof }
        let code = errno
        return code == EAGAIN || code == EWOULDBLOCK || code == EINTR ? .wouldBlock : .failed(code)
    }

    @inline(__always)
    public static func write(_ fd: Int32, from buffer: UnsafeRawBufferPointer) -> IOResult {
        let n = send(fd, buffer.baseAddress, buffer.count, Int32(MSG_NOSIGNAL))
        if n >= 0 { return n == 0 ? .wouldBlock : .bytes(n) }
        let code = errno
        return code == EAGAIN || code == EWOULDBLOCK || code == EINTR ? .wouldBlock : .failed(code)
    }

    /// Half-close: the peer reads end of stream, and we can still read its bytes.
    public static func shutdownWrite(_ fd: Int32) { _ = Glibc.shutdown(fd, Int32(SHUT_WR)) }

    public static func close(_ fd: Int32) { _ = Glibc.close(fd) }

}
