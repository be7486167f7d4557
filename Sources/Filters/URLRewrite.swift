import Regex
import WaypointCore

/// A path modifier: replace the whole path, or the prefix the rule matched (Gateway API), or every match of
/// a regular expression (Istio `uriRegexRewrite`).
public enum PathModifier: Sendable, Equatable {
    case replaceFullPath([UInt8])
    /// The replacement, and the matched prefix it replaces (element-wise, as PathPrefix matched it).
    case replacePrefixMatch([UInt8], matched: [UInt8])
    /// Every match of the (unanchored) pattern replaced; the replacement in PCRE2 syntax.
    case replaceRegex(Regex, [UInt8])

    public static func == (a: Self, b: Self) -> Bool {
        switch (a, b) {
        case (.replaceFullPath(let x), .replaceFullPath(let y)): return x == y
        case (.replacePrefixMatch(let x, let m), .replacePrefixMatch(let y, let n)): return x == y && m == n
        case (.replaceRegex(let r, let x), .replaceRegex(let s, let y)): return r.pattern == s.pattern && x == y
        default: return false
        }
    }

    /// The new path for `path`. Gateway API: `/foo/bar` matched by `/foo` with replacement `/xyz` becomes
    /// `/xyz/bar`, with replacement `/` becomes `/bar`.
    public func apply(to path: UnsafeRawBufferPointer) -> [UInt8] {
        switch self {
        case .replaceFullPath(let full):
            return full
        case .replaceRegex(let regex, let replacement):
            guard let result = regex.replacingAll(in: path, with: replacement), result.first == 0x2F else { return Array(path) }
            return result
        case .replacePrefixMatch(let replacement, let matched):
            let keep = matched.count == 1 ? 0 : min(matched.count, path.count)  // "/" matched nothing to strip
            var rest = Array(path[keep...])
            if replacement.last == 0x2F && rest.first == 0x2F { rest.removeFirst() }
            var result = replacement + rest
            if result.isEmpty { result = [0x2F] }
            if result.first != 0x2F { result.insert(0x2F, at: 0) }
            return result
        }
    }
}

/// Gateway API `URLRewrite`: the upstream request gets another Host and/or path (the query is kept).
public struct URLRewrite: Sendable, Equatable {
    public var hostname: [UInt8]?
    public var path: PathModifier?

    public init(hostname: String?, path: PathModifier?) {
        self.hostname = hostname.map { Array($0.utf8) }
        self.path = path
    }
}

/// Gateway API `RequestRedirect`: answered by the proxy with a 3xx and a `location` built from the request,
/// each part replaced when configured.
public struct RequestRedirect: Sendable, Equatable {
    public var scheme: String?
    public var hostname: String?
    public var port: Int?
    public var path: PathModifier?
    public var statusCode: Int

    public init(scheme: String?, hostname: String?, port: Int?, path: PathModifier?, statusCode: Int) {
        self.scheme = scheme
        self.hostname = hostname
        self.port = port
        self.path = path
        self.statusCode = statusCode
    }

    /// The `location` for a request with this Host (name and optional port), path and query (with its `?`).
    /// Gateway API: the port is left out when it is the scheme's default; a changed scheme without a port
    /// uses the scheme's default.
    public func location(
        host: UnsafeRawBufferPointer, requestPort: UInt16?, path: UnsafeRawBufferPointer,
        query: UnsafeRawBufferPointer
    ) -> [UInt8] {
        let scheme = self.scheme ?? "http"
        var port: Int? = self.port ?? (self.scheme == nil ? requestPort.map(Int.init) : nil)
        if (scheme == "http" && port == 80) || (scheme == "https" && port == 443) { port = nil }
        var out = Array(scheme.utf8) + Array("://".utf8)
        out += hostname.map { Array($0.utf8) } ?? Array(host)
        if let port { out += Array(":\(port)".utf8) }
        out += self.path?.apply(to: path) ?? Array(path)
        out += Array(query)
        return out
    }
}
