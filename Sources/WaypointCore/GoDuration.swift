/// Durations written the Kubernetes/Go way: `5s`, `250ms`, `1m30s`, `1.5h`, `100us`, `0`.
///
/// Used for flags and manifest fields alike, so both read the same.
public enum GoDuration {
    /// Parses a Go duration string; nil when malformed or negative.
    public static func parse(_ text: String) -> Duration? {
        if text == "0" { return .zero }
        var rest = Substring(text)
        guard !rest.isEmpty else { return nil }
        var totalNanos: Double = 0
        while !rest.isEmpty {
            let numberEnd = rest.firstIndex(where: { !($0.isNumber || $0 == ".") }) ?? rest.endIndex
            guard numberEnd > rest.startIndex, let value = Double(rest[..<numberEnd]) else { return nil }
            rest = rest[numberEnd...]
            let unitEnd = rest.firstIndex(where: { $0.isNumber || $0 == "." }) ?? rest.endIndex
            let scale: Double
            switch rest[..<unitEnd] {
            case "ns": scale = 1
            case "us", "µs": scale = 1e3
            case "ms": scale = 1e6
            case "s": scale = 1e9
            case "m": scale = 60e9
            case "h": scale = 3600e9
            default: return nil
            }
            totalNanos += value * scale
            rest = rest[unitEnd...]
        }
        guard totalNanos.isFinite, totalNanos < 1e18 else { return nil }
        return .nanoseconds(Int64(totalNanos.rounded()))
    }

    /// Formats like Go's `Duration.String` for the common cases (`5s`, `250ms`, `1m30s`).
    public static func format(_ duration: Duration) -> String {
        let (seconds, attos) = duration.components
        let millis = attos / 1_000_000_000_000_000
        if seconds == 0 { return millis == 0 && attos == 0 ? "0s" : "\(millis)ms" }
        var out = ""
        if seconds >= 3600 { out += "\(seconds / 3600)h" }
        if seconds >= 60 && (seconds % 3600) / 60 > 0 { out += "\((seconds % 3600) / 60)m" }
        let s = seconds % 60
        if s > 0 || millis > 0 { out += millis > 0 ? "\(s).\(format3(millis))s" : "\(s)s" }
        return out
    }

    private static func format3(_ millis: Int64) -> String {
        var text = String(millis)
        while text.count < 3 { text = "0" + text }
        while text.hasSuffix("0") { text.removeLast() }
        return text
    }
}

extension Duration {
    /// Seconds as a `Double`, for libev timers.
    public var seconds: Double {
        let (s, a) = components
        return Double(s) + Double(a) / 1e18
    }
}
