#if canImport(Glibc)
    import Glibc
#endif

/// An IPv4 or IPv6 socket address parsed from `IP:port` or `[IPv6]:port`.
///
/// Plain data (the IP's bytes inline, no string): the snapshot's table of 10,000 endpoint addresses is copied
/// with one memcpy and freed without a release per entry, and an address hashes and compares as two words.
public struct SocketAddress: Sendable, Hashable, CustomStringConvertible {
    /// The IP in network byte order, IPv4 in the first 4 bytes (the rest zero).
    private let high: UInt64
    private let low: UInt64
    public private(set) var port: UInt16
    public let isIPv6: Bool

    /// Parses `IP:port`; nil if either part is invalid. No name resolution: configs name addresses.
    public init?(_ text: String) {
        var host = Substring(text)
        let portText: Substring
        if host.hasPrefix("[") {
            guard let close = host.firstIndex(of: "]"), host[host.index(after: close)...].hasPrefix(":") else { return nil }
            portText = host[host.index(close, offsetBy: 2)...]
            host = host[host.index(after: host.startIndex)..<close]
        } else {
            guard let colon = host.lastIndex(of: ":") else { return nil }
            portText = host[host.index(after: colon)...]
            host = host[..<colon]
            if host.contains(":") { return nil }  // IPv6 needs brackets
        }
        guard let port = UInt16(portText), !portText.hasPrefix("+") else { return nil }
        self.init(ip: String(host), port: port)
    }

    /// An address from an IP literal and a port; nil if `ip` is not a literal.
    public init?(ip: String, port: UInt16) {
        // withCString: the text as it is (passing the String converts it to a new array per call).
        var raw: (UInt64, UInt64) = (0, 0)
        let family = ip.withCString { text in
            inet_pton(AF_INET, text, &raw) == 1 ? AF_INET : inet_pton(AF_INET6, text, &raw) == 1 ? AF_INET6 : -1
        }
        guard family != -1 else { return nil }
        isIPv6 = family == AF_INET6
        (high, low) = raw
        self.port = port
    }

    /// An address from the IP's bytes in network byte order (4 for IPv4, 16 for IPv6; nil for another count).
    public init?(rawIP: UnsafeRawBufferPointer, port: UInt16) {
        guard rawIP.count == 4 || rawIP.count == 16 else { return nil }
        var raw: (UInt64, UInt64) = (0, 0)
        withUnsafeMutableBytes(of: &raw) { $0.copyMemory(from: rawIP) }
        (high, low) = raw
        isIPv6 = rawIP.count == 16
        self.port = port
    }

    /// The same IP at another port.
    public func with(port: UInt16) -> SocketAddress {
        var other = self
        other.port = port
        return other
    }

    /// The IP's bytes in network byte order (4 or 16).
    public func withRawIP<R>(_ body: (UnsafeRawBufferPointer) -> R) -> R {
        withUnsafeBytes(of: (high, low)) { body(UnsafeRawBufferPointer(rebasing: $0.prefix(isIPv6 ? 16 : 4))) }
    }

    /// The IP as text (`10.0.0.1`, `fd00::1`: the canonical form, whatever form it was given in).
    public var ip: String {
        withUnsafeTemporaryAllocation(of: CChar.self, capacity: Int(INET6_ADDRSTRLEN)) { text in
            var raw = (high, low)
            _ = inet_ntop(isIPv6 ? AF_INET6 : AF_INET, &raw, text.baseAddress, socklen_t(text.count))
            return String(cString: text.baseAddress!)
        }
    }

    public var description: String { isIPv6 ? "[\(ip)]:\(port)" : "\(ip):\(port)" }
}
