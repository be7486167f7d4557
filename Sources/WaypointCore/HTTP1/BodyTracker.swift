/// Follows one message body through the bytes that pass by: how many belong to it and when it ends. The bytes
/// themselves are forwarded (or discarded) unchanged by the caller; this only keeps count.
public struct BodyTracker: Sendable {
    public let framing: BodyFraming
    private var remaining: Int
    private var chunks = ChunkedScanner()
    public private(set) var isComplete: Bool
    /// Body bytes seen so far, chunk framing excluded.
    public private(set) var bodyBytes = 0

    public init(_ framing: BodyFraming) {
        self.framing = framing
        if case .contentLength(let n) = framing { remaining = n } else { remaining = 0 }
        isComplete = framing == .none
    }

    /// How many of `available` belong to this body (all of them until it ends; everything for a close-delimited
    /// body), or nil when a chunked encoding is malformed.
    @inline(__always)
    public mutating func consume(_ available: UnsafeRawBufferPointer) -> Int? {
        switch framing {
        case .none:
            return 0
        case .contentLength:
            let take = min(remaining, available.count)
            remaining -= take
            bodyBytes += take
            isComplete = remaining == 0
            return take
        case .chunked:
            guard let take = chunks.scan(available) else { return nil }
            bodyBytes = chunks.bodyBytes
            isComplete = chunks.isComplete
            return take
        case .untilClose:
            bodyBytes += available.count
            return available.count
        }
    }

    /// The connection closed: that ends a close-delimited body (and only that kind).
    public mutating func connectionClosed() {
        if framing == .untilClose { isComplete = true }
    }
}
