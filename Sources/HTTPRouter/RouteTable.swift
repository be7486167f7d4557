import WaypointCore

/// Where a rule came from: what precedence ties are broken by, and what logs and `explain` name.
public struct RuleOrigin: Sendable, Equatable {
    /// `namespace/name` of the route.
    public var route: String
    public var ruleIndex: Int
    /// Creation time as sortable text (RFC 3339); empty sorts first, like a route with no timestamp.
    public var creationTimestamp: String

    public init(route: String, ruleIndex: Int, creationTimestamp: String = "") {
        self.route = route
        self.ruleIndex = ruleIndex
        self.creationTimestamp = creationTimestamp
    }
}

/// One match of one rule and what it leads to.
public struct RouteRule<Action: Sendable>: Sendable {
    public var match: RequestMatch
    public var action: Action
    public var origin: RuleOrigin

    public init(match: RequestMatch, action: Action, origin: RuleOrigin) {
        self.match = match
        self.action = action
        self.origin = origin
    }
}

/// The rules for one destination (a service port, or the Gateway's hostnames), in decision order.
/// `fallback` answers when no rule matches: the service itself when no route is attached, nil (404) otherwise.
///
/// A class: a request looks its rule set up on every request, and a reference costs one retain where a struct
/// of the index's tables would cost one per table. Thread: immutable, any thread.
public final class RuleSet<Action: Sendable>: Sendable {
    public let rules: [RouteRule<Action>]
    public let fallback: Action?
    private let index: RuleIndex

    /// Sorts `rules` in Gateway API order: exact path, longest prefix, method, most header matches, most query
    /// matches, then the oldest route, then `namespace/name`, then rule order.
    public convenience init(rules: [RouteRule<Action>], fallback: Action?) {
        self.init(
            orderedRules: rules.enumerated().sorted { a, b in
                let (pa, pb) = (a.element.match.precedence, b.element.match.precedence)
                if pa != pb { return pa < pb }
                let (oa, ob) = (a.element.origin, b.element.origin)
                if oa.creationTimestamp != ob.creationTimestamp { return oa.creationTimestamp < ob.creationTimestamp }
                if oa.route != ob.route { return oa.route < ob.route }
                if oa.ruleIndex != ob.ruleIndex { return oa.ruleIndex < ob.ruleIndex }
                return a.offset < b.offset
            }.map(\.element), fallback: fallback)
    }

    /// Keeps `rules` in the given order, first match wins (Istio VirtualService `http[]`).
    public init(orderedRules: [RouteRule<Action>], fallback: Action?) {
        self.rules = orderedRules
        self.fallback = fallback
        self.index = RuleIndex(orderedRules.map(\.match))
    }

    /// The action of the first rule that matches, else the fallback.
    @inline(__always)
    public func route(_ head: RequestHead, _ bytes: UnsafeRawBufferPointer) -> Action? {
        if let position = firstMatch(head, bytes) { return rules[position].action }
        return fallback
    }

    /// The position in `rules` of the first rule that matches. Only rules whose path can match are looked at:
    /// exact paths by one hash lookup, prefixes (and regular expressions, by their leading literal text) by one
    /// lookup per distinct prefix length; the rest are tried in order, and only while they could still come first.
    public func firstMatch(_ head: RequestHead, _ bytes: UnsafeRawBufferPointer) -> Int? {
        let path = head.path.bytes(in: bytes)
        var best = Int32.max
        firstMatching(index.exact.lookup(path), head, bytes, before: &best)
        for length in index.elementPrefixLengths {
            if length > path.count { break }
            guard length == path.count || path[length] == 0x2F else { continue }
            firstMatching(index.elementPrefixes.lookup(UnsafeRawBufferPointer(rebasing: path[0..<length])), head, bytes, before: &best)
        }
        for length in index.stringPrefixLengths {
            if length > path.count { break }
            firstMatching(index.stringPrefixes.lookup(UnsafeRawBufferPointer(rebasing: path[0..<length])), head, bytes, before: &best)
        }
        for length in index.regexPrefixLengths {
            if length > path.count { break }
            firstMatching(
                index.regexPrefixes.lookup(UnsafeRawBufferPointer(rebasing: path[0..<length])), head, bytes,
                before: &best, checkingPath: true)
        }
        for position in index.scanned {
            if position >= best { break }
            if rules[Int(position)].match.matches(head, bytes) { best = position; break }
        }
        return best == .max ? nil : Int(best)
    }

    /// Lowers `best` to the first rule of `group` (whose path matches) that matches otherwise, if it comes earlier.
    @inline(__always)
    private func firstMatching(
        _ group: RuleIndex.Group?, _ head: RequestHead, _ bytes: UnsafeRawBufferPointer,
        before best: inout Int32, checkingPath: Bool = false
    ) {
        guard let group else { return }
        for i in group.start..<(group.start + group.count) {
            let position = index.positions[Int(i)]
            if position >= best { return }
            let match = rules[Int(position)].match
            if checkingPath ? match.matches(head, bytes) : match.matchesBesidesPath(head, bytes) { best = position; return }
        }
    }
}

/// Rule positions grouped by what their path match needs, built once with the rule set.
struct RuleIndex: Sendable {
    /// A run of ascending rule positions in `positions`.
    struct Group: Sendable {
        var start: Int32
        var count: Int32
    }
    /// Every group's positions, back to back.
    let positions: [Int32]
    let exact: ByteStringMap<Group>
    let elementPrefixes: ByteStringMap<Group>
    /// Distinct lengths of `elementPrefixes` keys, ascending.
    let elementPrefixLengths: [Int]
    let stringPrefixes: ByteStringMap<Group>
    let stringPrefixLengths: [Int]
    /// Regular expressions by the literal text they start with; the path is matched against them in full.
    let regexPrefixes: ByteStringMap<Group>
    let regexPrefixLengths: [Int]
    /// Rules tried one by one: regular expressions without a leading literal, case-insensitive paths and the
    /// prefix `/`; ascending.
    let scanned: [Int32]

    init(_ matches: [RequestMatch]) {
        var exact: [[UInt8]: [Int32]] = [:]
        var elementPrefixes: [[UInt8]: [Int32]] = [:]
        var stringPrefixes: [[UInt8]: [Int32]] = [:]
        var regexPrefixes: [[UInt8]: [Int32]] = [:]
        var scanned: [Int32] = []
        for (position, match) in matches.enumerated() {
            let p = Int32(position)
            switch match.path {
            case .exact(let bytes) where !match.ignoreCase: exact[bytes, default: []].append(p)
            case .prefix(let bytes) where !match.ignoreCase && bytes.count > 1: elementPrefixes[bytes, default: []].append(p)
            case .stringPrefix(let bytes) where !match.ignoreCase && !bytes.isEmpty: stringPrefixes[bytes, default: []].append(p)
            case .regex(let regex) where regex.literalPrefix.count > 1: regexPrefixes[regex.literalPrefix, default: []].append(p)
            default: scanned.append(p)
            }
        }
        var positions: [Int32] = []
        func groups(_ keyed: [[UInt8]: [Int32]]) -> ByteStringMap<Group> {
            ByteStringMap(
                keyed.map { key, list in
                    defer { positions += list }
                    return (key, Group(start: Int32(positions.count), count: Int32(list.count)))
                })
        }
        self.exact = groups(exact)
        self.elementPrefixes = groups(elementPrefixes)
        self.stringPrefixes = groups(stringPrefixes)
        self.regexPrefixes = groups(regexPrefixes)
        self.positions = positions
        elementPrefixLengths = Set(elementPrefixes.keys.map(\.count)).sorted()
        stringPrefixLengths = Set(stringPrefixes.keys.map(\.count)).sorted()
        regexPrefixLengths = Set(regexPrefixes.keys.map(\.count)).sorted()
        self.scanned = scanned
    }
}

/// A destination reachable under some host names: the rule set for each port it serves.
public struct VirtualHost<Action: Sendable>: Sendable {
    /// (port, rule set); port 0 serves any port.
    public var ports: [(port: UInt16, rules: RuleSet<Action>)]
    /// The port used when the Host header carries none.
    public var defaultPort: UInt16

    public init(ports: [(port: UInt16, rules: RuleSet<Action>)], defaultPort: UInt16) {
        self.ports = ports
        self.defaultPort = defaultPort
    }

    @inline(__always)
    public func rules(forPort port: UInt16?) -> RuleSet<Action>? {
        let wanted = port ?? defaultPort
        for entry in ports where entry.port == wanted || entry.port == 0 { return entry.rules }
        return nil
    }
}

/// Host → virtual host → port → rules, compiled once per config and shared read-only by all workers.
///
/// Generic over the action a rule leads to, so routing knows nothing about upstreams.
/// Thread: immutable, any thread. Ownership: the config snapshot.
public struct RouteTable<Action: Sendable>: Sendable {
    public let virtualHosts: [VirtualHost<Action>]
    private let exactHosts: ByteStringMap<Int32>
    /// `*.example.com` hosts as (".example.com", index), longest suffix first.
    private let wildcardHosts: [([UInt8], Int32)]
    /// The host that takes requests no name matched (a Gateway route without hostnames).
    private let catchAll: Int32?

    /// `names` pairs lower-case host names (`*.suffix` for wildcards, `*` for catch-all) with an index into
    /// `virtualHosts`. The first entry for a name wins.
    public init(virtualHosts: [VirtualHost<Action>], names: [(String, Int)]) {
        self.virtualHosts = virtualHosts
        var exact: [([UInt8], Int32)] = []
        var wildcards: [([UInt8], Int32)] = []
        var catchAll: Int32? = nil
        for (name, index) in names {
            if name == "*" {
                if catchAll == nil { catchAll = Int32(index) }
            } else if name.hasPrefix("*.") {
                wildcards.append((Array(name.utf8.dropFirst()), Int32(index)))
            } else {
                exact.append((Array(name.lowercased().utf8), Int32(index)))
            }
        }
        exactHosts = ByteStringMap(exact)
        wildcardHosts = wildcards.sorted { $0.0.count > $1.0.count }
        self.catchAll = catchAll
    }

    /// What a request to `host` (a Host header: name, optional `:port`) is routed by, or nil when no
    /// destination serves that host and port.
    public func ruleSet(forHost host: UnsafeRawBufferPointer) -> RuleSet<Action>? {
        guard let (index, port) = virtualHost(forHost: host) else { return nil }
        return virtualHosts[Int(index)].rules(forPort: port)
    }

    /// The virtual host serving `host` (name, optional `:port`) and the port it names, or nil when no name matches.
    public func virtualHost(forHost host: UnsafeRawBufferPointer) -> (index: Int32, port: UInt16?)? {
        let (name, port) = Self.split(host)
        guard let name else { return nil }
        // Host names are case-insensitive (CVE-2021-39155 came from forgetting it): lower-case on a small stack copy.
        return withUnsafeTemporaryAllocation(of: UInt8.self, capacity: max(name.count, 1)) { lower -> (Int32, UInt16?)? in
            for i in 0..<name.count { lower[i] = HTTP1Parser.lowercased(name[i]) }
            let key = UnsafeRawBufferPointer(UnsafeMutableBufferPointer(rebasing: lower[0..<name.count]))
            if let index = exactHosts.lookup(key) { return (index, port) }
            for (suffix, index) in wildcardHosts where key.count > suffix.count && key.reversed().starts(with: suffix.reversed()) {
                return (index, port)
            }
            if let catchAll { return (catchAll, port) }
            return nil
        }
    }

    /// Splits `name[:port]` (and `[v6]:port`), dropping one trailing dot from the name. Name nil when malformed.
    public static func split(_ host: UnsafeRawBufferPointer) -> (UnsafeRawBufferPointer?, UInt16?) {
        var end = host.count
        var port: UInt16? = nil
        var i = end - 1
        while i >= 0, host[i] >= 0x30 && host[i] <= 0x39 { i -= 1 }
        if i >= 0, host[i] == 0x3A, i < end - 1, host.first != 0x5B || (i > 0 && host[i - 1] == 0x5D) {
            var value = 0
            for b in host[(i + 1)..<end] { value = value * 10 + Int(b - 0x30); if value > 65535 { return (nil, nil) } }
            port = UInt16(value)
            end = i
        }
        if end > 0 && host[end - 1] == 0x2E { end -= 1 }
        guard end > 0 else { return (nil, nil) }
        return (UnsafeRawBufferPointer(rebasing: host[0..<end]), port)
    }
}
