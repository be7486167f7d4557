#if canImport(Glibc)
    import Glibc
#endif

/// An IPv4 or IPv6 socket address parsed from `IP:port` or `[IPv6]:port`.
public struct SocketAddress: Sendable, Hashable, CustomStringConvertible {
    public let ip: String
    public let port: UInt16
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
        var v4 = in_addr()
        var v6 = in6_addr()
        if inet_pton(AF_INET, ip, &v4) == 1 {
            isIPv6 = false
        } else if inet_pton(AF_INET6, ip, &v6) == 1 {
            isIPv6 = true
        } else {
            return nil
        }
        self.ip = ip
        self.port = port
    }

    public var description: String { isIPv6 ? "[\(ip)]:\(port)" : "\(ip):\(port)" }
}
