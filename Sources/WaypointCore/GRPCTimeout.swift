/// The `grpc-timeout` request header (gRPC over HTTP/2): 1 to 8 ASCII digits and a unit, `H` hours, `M`
/// minutes, `S` seconds, `m` milliseconds, `u` microseconds, `n` nanoseconds.
public enum GRPCTimeout {
    /// The timeout the header asks for; nil when it is malformed (then it counts as absent).
    public static func parse(_ text: some StringProtocol) -> Duration? {
        let bytes = Array(text.utf8)
        guard (2...9).contains(bytes.count), let unit = bytes.last else { return nil }
        var value: Int64 = 0
        for digit in bytes.dropLast() {
            guard digit >= 0x30 && digit <= 0x39 else { return nil }
            value = value * 10 + Int64(digit - 0x30)
        }
        switch unit {
        case UInt8(ascii: "H"): return .seconds(value * 3600)
        case UInt8(ascii: "M"): return .seconds(value * 60)
        case UInt8(ascii: "S"): return .seconds(value)
        case UInt8(ascii: "m"): return .milliseconds(value)
        case UInt8(ascii: "u"): return .microseconds(value)
        case UInt8(ascii: "n"): return .nanoseconds(value)
        default: return nil
        }
    }

    /// `duration` as a header value: milliseconds (rounded up, so a positive timeout never becomes 0), as Envoy
    /// writes it, or a coarser unit when that needs more than 8 digits.
    public static func format(_ duration: Duration) -> String {
        let (seconds, attoseconds) = duration.components
        var value = seconds * 1000 + (attoseconds + 999_999_999_999_999) / 1_000_000_000_000_000
        for (unit, coarser) in [("m", Int64(1000)), ("S", 60), ("M", 60)] {
            if value <= 99_999_999 { return String(value) + unit }
            value = (value + coarser - 1) / coarser
        }
        return String(min(value, 99_999_999)) + "H"
    }
}
