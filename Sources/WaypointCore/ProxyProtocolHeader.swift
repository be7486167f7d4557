#if canImport(Glibc)
    import Glibc
#endif

/// A PROXY protocol v2 header as the local ztunnel writes it in the "sandwich" mode (kgateway): the original
/// source, the HBONE target as destination, and TLV 0xD0 carrying the source's SPIFFE identity.
///
/// Only v2, only the PROXY command, only TCP over IPv4/IPv6: anything else is refused, since without the
/// destination the waypoint cannot tell which service the bytes are for. Thread: any (a value).
public struct ProxyProtocolHeader: Sendable, Equatable {
    public var sourceIP: String
    public var sourcePort: UInt16
    public var destinationIP: String
    public var destinationPort: UInt16
    /// TLV 0xD0: the source workload's SPIFFE ID, if present.
    public var identity: String?

    public init(sourceIP: String, sourcePort: UInt16, destinationIP: String, destinationPort: UInt16, identity: String?) {
        self.sourceIP = sourceIP
        self.sourcePort = sourcePort
        self.destinationIP = destinationIP
        self.destinationPort = destinationPort
        self.identity = identity
    }

    /// The TLV type ztunnel uses for the peer identity.
    public static let identityTLV: UInt8 = 0xD0
    static let signature: [UInt8] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A]
    /// Bigger headers are refused (ztunnel's are about 100 bytes).
    public static let maxLength = 1024

    public enum ParseResult: Equatable {
        /// More bytes are needed.
        case incomplete
        /// Not a usable PROXY v2 header: close the connection.
        case invalid(String)
        /// The header, and how many bytes it took.
        case complete(ProxyProtocolHeader, length: Int)
    }

    /// Parses the start of `bytes`.
    public static func parse(_ bytes: UnsafeRawBufferPointer) -> ParseResult {
        let prefix = min(bytes.count, signature.count)
        for i in 0..<prefix where bytes[i] != signature[i] { return .invalid("no PROXY v2 signature") }
        guard bytes.count >= 16 else { return .incomplete }
        guard bytes[12] >> 4 == 2 else { return .invalid("PROXY protocol version \(bytes[12] >> 4)") }
        guard bytes[12] & 0x0F == 1 else { return .invalid("PROXY command \(bytes[12] & 0x0F) (only PROXY is accepted)") }
        let length = Int(bytes[14]) << 8 | Int(bytes[15])
        guard 16 + length <= maxLength else { return .invalid("PROXY header of \(16 + length) bytes") }
        guard bytes.count >= 16 + length else { return .incomplete }
        let body = UnsafeRawBufferPointer(rebasing: bytes[16..<(16 + length)])
        let addressLength: Int
        let family: Int32
        switch bytes[13] {
        case 0x11: (addressLength, family) = (12, AF_INET)
        case 0x21: (addressLength, family) = (36, AF_INET6)
        default: return .invalid("PROXY address family 0x\(String(bytes[13], radix: 16)) (only TCP over IPv4/IPv6)")
        }
        guard body.count >= addressLength else { return .invalid("PROXY addresses truncated") }
        let ipLength = (addressLength - 4) / 2
        var header = ProxyProtocolHeader(
            sourceIP: format(UnsafeRawBufferPointer(rebasing: body[0..<ipLength]), family),
            sourcePort: UInt16(body[2 * ipLength]) << 8 | UInt16(body[2 * ipLength + 1]),
            destinationIP: format(UnsafeRawBufferPointer(rebasing: body[ipLength..<(2 * ipLength)]), family),
            destinationPort: UInt16(body[2 * ipLength + 2]) << 8 | UInt16(body[2 * ipLength + 3]),
            identity: nil)
        var offset = addressLength
        while offset < body.count {
            guard body.count - offset >= 3 else { return .invalid("PROXY TLV truncated") }
            let type = body[offset]
            let valueLength = Int(body[offset + 1]) << 8 | Int(body[offset + 2])
            guard body.count - offset - 3 >= valueLength else { return .invalid("PROXY TLV truncated") }
            let value = UnsafeRawBufferPointer(rebasing: body[(offset + 3)..<(offset + 3 + valueLength)])
            if type == identityTLV {
                guard header.identity == nil else { return .invalid("PROXY header carries two identities") }
                guard let text = String(validating: value, as: UTF8.self) else { return .invalid("PROXY identity is not UTF-8") }
                header.identity = text
            }
            offset += 3 + valueLength
        }
        return .complete(header, length: 16 + length)
    }

    private static func format(_ ip: UnsafeRawBufferPointer, _ family: Int32) -> String {
        var text = [CChar](repeating: 0, count: 64)
        _ = inet_ntop(family, ip.baseAddress, &text, socklen_t(text.count))
        return String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
