/// The W3C trace context of one traced request: the trace it belongs to, the caller's span (its parent) and
/// the waypoint's own span, which the upstream request carries as its parent.
public struct TraceContext: Sendable, Equatable {
    public var traceHigh: UInt64
    public var traceLow: UInt64
    public var parent: UInt64
    public var span: UInt64

    public init(traceHigh: UInt64, traceLow: UInt64, parent: UInt64, span: UInt64) {
        self.traceHigh = traceHigh
        self.traceLow = traceLow
        self.parent = parent
        self.span = span
    }

    /// Whether to trace a request with this `traceparent` value (empty: none): an incoming sampled flag is
    /// honoured either way (Envoy's rule), otherwise `sampleRate` percent of requests are traced.
    public static func decide(traceparent: UnsafeRawBufferPointer, sampleRate: Double, random: inout FastRandom) -> TraceContext? {
        let incoming = parse(traceparent)
        if let incoming, !incoming.sampled { return nil }
        if incoming == nil && !(Double(random.next() % 1_000_000) < sampleRate * 10_000) { return nil }
        var span = random.next()
        if span == 0 { span = 1 }
        if let incoming { return TraceContext(traceHigh: incoming.high, traceLow: incoming.low, parent: incoming.parent, span: span) }
        return TraceContext(traceHigh: random.next(), traceLow: random.next() | 1, parent: 0, span: span)
    }

    /// `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`; nil when malformed or all-zero ids.
    public static func parse(_ value: UnsafeRawBufferPointer) -> (high: UInt64, low: UInt64, parent: UInt64, sampled: Bool)? {
        guard value.count == 55, value[2] == 0x2D, value[35] == 0x2D, value[52] == 0x2D,
            value[0] == 0x30, value[1] == 0x30,
            let high = hex(value, 3, 16), let low = hex(value, 19, 16), let parent = hex(value, 36, 16), let flags = hex(value, 53, 2),
            high | low != 0, parent != 0
        else { return nil }
        return (high, low, parent, flags & 1 == 1)
    }

    private static func hex(_ bytes: UnsafeRawBufferPointer, _ start: Int, _ count: Int) -> UInt64? {
        var value: UInt64 = 0
        for i in start..<(start + count) {
            let b = bytes[i]
            let digit: UInt8
            switch b {
            case 0x30...0x39: digit = b - 0x30
            case 0x61...0x66: digit = b - 0x61 + 10
            default: return nil
            }
            value = value << 4 | UInt64(digit)
        }
        return value
    }

    /// The `traceparent` for the upstream request: this trace, this span as the parent, sampled.
    public func writeTraceparent(into out: ByteBuffer) {
        out.append("00-")
        out.appendHex(traceHigh, width: 16)
        out.appendHex(traceLow, width: 16)
        out.append(0x2D)
        out.appendHex(span, width: 16)
        out.append("-01")
    }
}
