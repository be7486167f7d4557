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
    public static func elementPrefix(_ prefix: String) -> PathMatch {
        var bytes = Array(prefix.utf8)
        while bytes.count > 1 && bytes.last == 0x2F { bytes.removeLast() }
        return .prefix(bytes)
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

/// Everything one HTTPRouteMatch requires; all conditions must hold.
public struct RequestMatch: Sendable {
    public var path: PathMatch
    public var method: [UInt8]?
    public var headers: [HeaderMatch]

    /// The specification's default match: `PathPrefix /`.
    public init(path: PathMatch = .prefix([0x2F]), method: String? = nil, headers: [HeaderMatch] = []) {
        self.path = path
        self.method = method.map { Array($0.utf8) }
        self.headers = headers
    }

    @inline(__always)
    func matches(_ head: RequestHead, _ bytes: UnsafeRawBufferPointer) -> Bool {
        guard path.matches(head.path.bytes(in: bytes)) else { return false }
        if let method, !head.method.bytes(in: bytes).elementsEqual(method) { return false }
        for condition in headers where !Self.anyHeader(condition, head, bytes) { return false }
        return true
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
    var precedence: (Int, Int, Int, Int) {
        let (kind, length): (Int, Int)
        switch path {
        case .exact(let p): (kind, length) = (0, p.count)
        case .prefix(let p): (kind, length) = (1, p.count)
        case .regex(let r): (kind, length) = (2, r.pattern.utf8.count)
        }
        return (kind, -length, method == nil ? 1 : 0, -headers.count)
    }
}
