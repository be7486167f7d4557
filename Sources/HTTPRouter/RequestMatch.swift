import Regex
import WaypointCore

/// How a rule matches the request path: Gateway API HTTPPathMatch and Istio's `uri` StringMatch.
public enum PathMatch: Sendable {
    /// The whole path, case-sensitive.
    case exact([UInt8])
    /// Element-wise prefix (Gateway API `PathPrefix`): `/abc` matches `/abc` and `/abc/def`, not `/abcd`; a
    /// trailing `/` is ignored.
    case prefix([UInt8])
    /// Byte-wise prefix (Istio `uri.prefix`): `/abc` matches `/abcd` too.
    case stringPrefix([UInt8])
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

    /// `ignoreCase` applies to exact and prefix matches (Istio's `ignoreUriCase`); their bytes are stored lower-case.
    @inline(__always)
    func matches(_ path: UnsafeRawBufferPointer, ignoreCase: Bool) -> Bool {
        switch self {
        case .exact(let expected):
            return path.count == expected.count && Self.startsWith(path, expected, ignoreCase: ignoreCase)
        case .prefix(let prefix):
            if prefix.count == 1 { return true }  // "/" matches every path
            guard path.count >= prefix.count, Self.startsWith(path, prefix, ignoreCase: ignoreCase) else { return false }
            return path.count == prefix.count || path[prefix.count] == 0x2F
        case .stringPrefix(let prefix):
            return path.count >= prefix.count && Self.startsWith(path, prefix, ignoreCase: ignoreCase)
        case .regex(let regex):
            return regex.matches(path)
        }
    }

    @inline(__always)
    static func startsWith(_ path: UnsafeRawBufferPointer, _ prefix: [UInt8], ignoreCase: Bool) -> Bool {
        guard ignoreCase else { return path.starts(with: prefix) }
        for i in 0..<prefix.count where HTTP1Parser.lowercased(path[i]) != prefix[i] { return false }
        return true
    }
}

/// How a header, query parameter or method value must look.
public enum ValueMatch: Sendable {
    case exact([UInt8])
    /// Istio StringMatch `prefix`.
    case prefix([UInt8])
    case regex(Regex)
    /// Istio's empty StringMatch: the header is present, any value.
    case present

    @inline(__always)
    func matches(_ value: UnsafeRawBufferPointer) -> Bool {
        switch self {
        case .exact(let expected): return value.elementsEqual(expected)
        case .prefix(let prefix): return value.starts(with: prefix)
        case .regex(let regex): return regex.matches(value)
        case .present: return true
        }
    }
}

/// A header condition; the name is stored lower-case and compared case-insensitively.
public struct HeaderMatch: Sendable {
    public let name: [UInt8]
    public let value: ValueMatch
    /// Istio `withoutHeaders`: the condition holds when no field of that name matches.
    public let negated: Bool

    public init(name: String, value: ValueMatch, negated: Bool = false) {
        self.name = Array(name.lowercased().utf8)
        self.value = value
        self.negated = negated
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

/// Everything one HTTPRouteMatch (or VirtualService HTTPMatchRequest) requires; all conditions must hold.
public struct RequestMatch: Sendable {
    public var path: PathMatch
    /// Istio `ignoreUriCase`: exact and prefix paths compare case-insensitively.
    public var ignoreCase: Bool
    public var method: ValueMatch?
    public var headers: [HeaderMatch]
    public var queryParams: [QueryMatch]

    /// The specification's default match: `PathPrefix /`.
    public init(
        path: PathMatch = .prefix([0x2F]), ignoreCase: Bool = false, method: String? = nil, headers: [HeaderMatch] = [],
        queryParams: [QueryMatch] = []
    ) {
        self.init(
            path: path, ignoreCase: ignoreCase, methodMatch: method.map { .exact(Array($0.utf8)) }, headers: headers,
            queryParams: queryParams)
    }

    public init(path: PathMatch, ignoreCase: Bool, methodMatch: ValueMatch?, headers: [HeaderMatch], queryParams: [QueryMatch]) {
        switch path {
        case .exact(let p) where ignoreCase: self.path = .exact(p.map(HTTP1Parser.lowercased))
        case .prefix(let p) where ignoreCase: self.path = .prefix(p.map(HTTP1Parser.lowercased))
        case .stringPrefix(let p) where ignoreCase: self.path = .stringPrefix(p.map(HTTP1Parser.lowercased))
        default: self.path = path
        }
        self.ignoreCase = ignoreCase
        self.method = methodMatch
        self.headers = headers
        self.queryParams = queryParams
    }

    @inline(__always)
    func matches(_ head: RequestHead, _ bytes: UnsafeRawBufferPointer) -> Bool {
        path.matches(head.path.bytes(in: bytes), ignoreCase: ignoreCase) && matchesBesidesPath(head, bytes)
    }

    /// The method, header and query conditions (the path is known to match).
    @inline(__always)
    func matchesBesidesPath(_ head: RequestHead, _ bytes: UnsafeRawBufferPointer) -> Bool {
        failedCondition(head, bytes, checkingPath: false) == nil
    }

    /// A condition a request failed (indices into `headers` / `queryParams`).
    public enum Failure: Equatable, Sendable {
        case path, method, header(Int), queryParam(Int)
    }

    /// The first condition the request fails, or nil when it matches.
    public func failedCondition(_ head: RequestHead, _ bytes: UnsafeRawBufferPointer, checkingPath: Bool = true) -> Failure? {
        if checkingPath && !path.matches(head.path.bytes(in: bytes), ignoreCase: ignoreCase) { return .path }
        if let method, !method.matches(head.method.bytes(in: bytes)) { return .method }
        for (i, condition) in headers.enumerated() where Self.anyHeader(condition, head, bytes) == condition.negated {
            return .header(i)
        }
        for (i, condition) in queryParams.enumerated() {
            guard let value = head.queryParameter(condition.name, in: bytes), condition.value.matches(value) else { return .queryParam(i) }
        }
        return nil
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
        case .prefix(let p), .stringPrefix(let p): (kind, length) = (1, p.count)
        case .regex(let r): (kind, length) = (2, r.pattern.utf8.count)
        }
        return (kind, -length, method == nil ? 1 : 0, -headers.count, -queryParams.count)
    }
}

extension PathMatch: CustomStringConvertible {
    /// As the manifests spell it, e.g. `PathPrefix /api`.
    public var description: String {
        switch self {
        case .exact(let p): return "Exact " + String(decoding: p, as: UTF8.self)
        case .prefix(let p): return "PathPrefix " + String(decoding: p, as: UTF8.self)
        case .stringPrefix(let p): return "prefix " + String(decoding: p, as: UTF8.self)
        case .regex(let r): return "RegularExpression " + r.pattern
        }
    }
}

extension ValueMatch: CustomStringConvertible {
    public var description: String {
        switch self {
        case .exact(let v): return "= " + String(decoding: v, as: UTF8.self)
        case .prefix(let v): return "prefix " + String(decoding: v, as: UTF8.self)
        case .regex(let r): return "~ " + r.pattern
        case .present: return "present"
        }
    }
}
