/// A span of bytes inside a message head, as offsets from the head's first byte: parsing records where things
/// are instead of copying them, so a request costs no `String`.
public struct ByteRange: Equatable, Sendable {
    public var start: Int32
    public var count: Int32

    public init(start: Int, count: Int) {
        self.start = Int32(truncatingIfNeeded: start)
        self.count = Int32(truncatingIfNeeded: count)
    }

    public static let empty = ByteRange(start: 0, count: 0)
    @inline(__always) public var isEmpty: Bool { count == 0 }

    /// The bytes of this range inside `head`.
    @inline(__always) public func bytes(in head: UnsafeRawBufferPointer) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(rebasing: head[Int(start)..<Int(start + count)])
    }

    /// The range as a `String`, for logs, config dumps and tests: never on the forwarding path.
    public func string(in head: UnsafeRawBufferPointer) -> String {
        String(decoding: bytes(in: head), as: UTF8.self)
    }
}

/// One header line: name and value (trimmed of surrounding whitespace).
public struct HeaderField: Sendable {
    public var name: ByteRange
    public var value: ByteRange
}

/// How the end of a message body is found (RFC 9112 §6).
public enum BodyFraming: Equatable, Sendable {
    /// No body at all.
    case none
    /// Exactly this many bytes follow the head.
    case contentLength(Int)
    /// Chunked transfer coding; the chunk scanner finds the end.
    case chunked
    /// Responses only: the body runs until the upstream closes the connection.
    case untilClose
}

/// A parsed request head. Ranges point into the buffer the head was parsed from, which must stay unchanged
/// while the head is used. The struct is reused across the requests of a connection to keep `headers`' storage.
public struct RequestHead: Sendable {
    public var method = ByteRange.empty
    /// The request target in origin form (path and query); for an absolute-form target, the part after the
    /// authority, or "/" when that part is empty.
    public var target = ByteRange.empty
    /// The path alone: `target` up to `?` or `#`. What routing and authorization match against.
    public var path = ByteRange.empty
    /// Host header, or the authority of an absolute-form target (which wins, RFC 9112 §3.2.2).
    public var host = ByteRange.empty
    public var headers: [HeaderField] = []
    public var isHTTP10 = false
    /// Carried by HTTP/2 (an h2c stream, its head rewritten as HTTP/1.1 for routing).
    public var isHTTP2 = false
    public var isHeadMethod = false
    public var framing = BodyFraming.none
    public var keepAlive = true
    public var expectsContinue = false
    /// The `Upgrade` header's value when `Connection` lists `upgrade` (HTTP/1.1): the protocols the client asks
    /// to switch to (WebSocket); empty otherwise.
    public var upgrade = ByteRange.empty
    /// Bytes of the head including the blank line that ends it.
    public var length = 0
    /// True when the target was `/` filled in for an empty absolute-form path.
    public var defaultedPath = false

    public init() { headers.reserveCapacity(32) }

    /// The value of the first header named `lowerName` (lower-case; names compare case-insensitively).
    public func firstHeader(_ lowerName: [UInt8], in bytes: UnsafeRawBufferPointer) -> UnsafeRawBufferPointer? {
        for field in headers where Int(field.name.count) == lowerName.count {
            let name = field.name.bytes(in: bytes)
            var equal = true
            for i in 0..<name.count where HTTP1Parser.lowercased(name[i]) != lowerName[i] { equal = false; break }
            if equal { return field.value.bytes(in: bytes) }
        }
        return nil
    }

    /// The value of the first `name=value` pair of the query named `name` (case-sensitive; empty when it has
    /// no `=`), nil when there is none.
    public func queryParameter(_ name: [UInt8], in bytes: UnsafeRawBufferPointer) -> UnsafeRawBufferPointer? {
        let target = target.bytes(in: bytes)
        let query = UnsafeRawBufferPointer(rebasing: target[min(Int(path.count) + 1, target.count)...])
        var start = 0
        while start <= query.count {
            var end = start
            while end < query.count && query[end] != 0x26 { end += 1 }  // '&'
            let pair = UnsafeRawBufferPointer(rebasing: query[start..<end])
            let equals = pair.firstIndex(of: 0x3D) ?? pair.count  // '='
            if pair[0..<equals].elementsEqual(name) {
                return equals < pair.count
                    ? UnsafeRawBufferPointer(rebasing: pair[(equals + 1)...]) : UnsafeRawBufferPointer(start: nil, count: 0)
            }
            start = end + 1
        }
        return nil
    }
}

/// A parsed response head; ranges point into the upstream input buffer.
public struct ResponseHead: Sendable {
    public var status = 0
    public var reason = ByteRange.empty
    public var headers: [HeaderField] = []
    public var isHTTP10 = false
    public var framing = BodyFraming.none
    public var keepAlive = true
    public var length = 0

    public init() { headers.reserveCapacity(32) }
}

/// Why a message was rejected, with the status that answers it.
public struct HTTP1Error: Error, Equatable, Sendable, CustomStringConvertible {
    public let status: Int
    public let reason: String

    public init(status: Int, _ reason: String) {
        self.status = status
        self.reason = reason
    }

    public var description: String { "\(status): \(reason)" }

    static func bad(_ reason: String) -> HTTP1Error { HTTP1Error(status: 400, reason) }
}
