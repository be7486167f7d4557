import Regex
import WaypointCore

/// How a rule matches the request path (Gateway API HTTPPathMatch).
public enum PathMatch: Sendable {
    /// The whole path, case-sensitive.
    case exact([UInt8])
    /// Element-wise prefix: `/abc` matches `/abc` and `/abc/def`, not `/abcd`; a trailing `/` is ignored.
    case prefix([UInt8])
    /// PCRE2, anchored to the whole path.
    case regex(Regex)

    /// A prefix match with its trailing slash removed, as the specification compares element-wise.
    public static func elementPrefix(_ prefix: String) -> PathMatch { .prefix(elementPrefixBytes(prefix)) }

    /// The bytes an element-wise prefix compares: the prefix without trailing slashes (`/` stays `/`).
    public static func elementPrefixBytes(_ prefix: String) -> [UInt8] {
        var bytes = Array(prefix.utf8)
        while bytes.count > 1 && bytes.last == 0x2F { bytes.removeLast() }
        return bytes
    }

    @inline(__always)
    func matches(_ path: UnsafeRawBufferPointer) -> Bool {
        switch self {
        case .exact(let expected):
            return path.elementsEqual(expected)
        case .prefix(let prefix):
            if prefix.count == 1 { return true }  // "/" matches every path
            guard path.count >= prefix.count, path.starts(with: prefix) else { return false }
            return path.count == prefix.count || path[prefix.count] == 0x2F
        case .regex(let regex):
            return regex.matches(path)
        }
    }
}

/// How a header or query value must look.
public enum ValueMatch: Sendable {
    case exact([UInt8])
    case regex(Regex)

    @inline(__always)
    func matches(_ value: UnsafeRawBufferPointer) -> Bool {
        switch self {
        case .exact(let expected): return value.elementsEqual(expected)
        case .regex(let regex): return regex.matches(value)
        }
    }
}

/// A header condition; the name is stored lower-case and compared case-insensitively.
public struct HeaderMatch: Sendable {
    public let name: [UInt8]
    public let value: ValueMatch

    public init(name: String, value: ValueMatch) {
        self.name = Array(name.lowercased().utf8)
        self.value = value
    }
}

/// A query parameter condition; the name is case-sensitive (Gateway API) and the first occurrence counts.
public struct QueryMatch: Sendable {
    public let name: [UInt8]
    public let value: ValueMatch

    public init(name: String, value: ValueMatch) {
        self.name = Array(name.utf8)
        self.value = value
    }
}

/// Everything one HTTPRouteMatch requires; all conditions must hold.
public struct RequestMatch: Sendable {
    public var path: PathMatch
    public var method: [UInt8]?
    public var headers: [HeaderMatch]
    public var queryParams: [QueryMatch]

    /// The specification's default match: `PathPrefix /`.
    public init(path: PathMatch = .prefix([0x2F]), method: String? = nil, headers: [HeaderMatch] = [], queryParams: [QueryMatch] = []) {
        self.path = path
        self.method = method.map { Array($0.utf8) }
        self.headers = headers
        self.queryParams = queryParams
    }

    @inline(__always)
    func matches(_ head: RequestHead, _ bytes: UnsafeRawBufferPointer) -> Bool {
        guard path.matches(head.path.bytes(in: bytes)) else { return false }
        if let method, !head.method.bytes(in: bytes).elementsEqual(method) { return false }
        for condition in headers where !Self.anyHeader(condition, head, bytes) { return false }
        if !queryParams.isEmpty {
            let target = head.target.bytes(in: bytes)
            let query = UnsafeRawBufferPointer(rebasing: target[min(Int(head.path.count) + 1, target.count)...])
            for condition in queryParams where !Self.queryParam(condition, in: query) { return false }
        }
        return true
    }

    /// Whether the first `name=value` pair of `query` with the condition's name has a matching value.
    private static func queryParam(_ condition: QueryMatch, in query: UnsafeRawBufferPointer) -> Bool {
        var start = 0
        while start <= query.count {
            var end = start
            while end < query.count && query[end] != 0x26 { end += 1 }  // '&'
            let pair = UnsafeRawBufferPointer(rebasing: query[start..<end])
            let equals = pair.firstIndex(of: 0x3D) ?? pair.count           // '='
            if pair[0..<equals].elementsEqual(condition.name) {
                let value = equals < pair.count ? UnsafeRawBufferPointer(rebasing: pair[(equals + 1)...]) : UnsafeRawBufferPointer(start: nil, count: 0)
                return condition.value.matches(value)
            }
            start = end + 1
        }
        return false
    }

    private static func anyHeader(_ condition: HeaderMatch, _ head: RequestHead, _ bytes: UnsafeRawBufferPointer) -> Bool {
        for field in head.headers where Int(field.name.count) == condition.name.count {
            let name = field.name.bytes(in: bytes)
            var equal = true
            for i in 0..<name.count where HTTP1Parser.lowercased(name[i]) != condition.name[i] { equal = false; break }
            if equal && condition.value.matches(field.value.bytes(in: bytes)) { return true }
        }
        return false
    }

    /// The specification's precedence among matches, as a sortable summary (smaller sorts first).
    var precedence: (Int, Int, Int, Int, Int) {
        let (kind, length): (Int, Int)
        switch path {
        case .exact(let p): (kind, length) = (0, p.count)
        case .prefix(let p): (kind, length) = (1, p.count)
        case .regex(let r): (kind, length) = (2, r.pattern.utf8.count)
        }
        return (kind, -length, method == nil ? 1 : 0, -headers.count, -queryParams.count)
    }
}
