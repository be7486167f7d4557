import WaypointCore

/// Istio's string match, used by every AuthorizationPolicy field: exact, prefix `abc*`, suffix `*abc`, and
/// presence `*` (any value, but the attribute must be there).
public enum StringMatch: Sendable, Equatable {
    case exact([UInt8])
    case prefix([UInt8])
    case suffix([UInt8])
    case present

    /// Parses Istio's pattern; `caseInsensitive` lower-cases it (hosts), and values are then lower-cased too.
    public init(_ pattern: String, caseInsensitive: Bool = false) {
        let text = caseInsensitive ? pattern.lowercased() : pattern
        if text == "*" {
            self = .present
        } else if text.hasPrefix("*") {
            self = .suffix(Array(text.utf8.dropFirst()))
        } else if text.hasSuffix("*") {
            self = .prefix(Array(text.utf8.dropLast()))
        } else {
            self = .exact(Array(text.utf8))
        }
    }

    public func matches(_ value: UnsafeRawBufferPointer) -> Bool {
        switch self {
        case .present: return true
        case .exact(let v): return value.count == v.count && value.elementsEqual(v)
        case .prefix(let p): return value.count >= p.count && value.prefix(p.count).elementsEqual(p)
        case .suffix(let s): return value.count >= s.count && value.suffix(s.count).elementsEqual(s)
        }
    }

    public func matches(_ value: String) -> Bool {
        var value = value
        return value.withUTF8 { matches(UnsafeRawBufferPointer($0)) }
    }
}

/// An IPv4 or IPv6 CIDR block (`10.0.0.0/8`, `fd00::/8`; a bare address is a /32 or /128).
public struct CIDRBlock: Sendable, Equatable {
    public let address: [UInt8]
    public let prefixLength: Int

    public init?(_ text: String) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count <= 2, let address = IPAddress.parse(String(parts[0])) else { return nil }
        let maxLength = address.count * 8
        if parts.count == 2 {
            guard let length = Int(parts[1]), length >= 0, length <= maxLength, !parts[1].hasPrefix("+") else { return nil }
            prefixLength = length
        } else {
            prefixLength = maxLength
        }
        self.address = address
    }

    /// Whether `ip` (4 or 16 bytes) is inside the block; an IPv4 address never matches an IPv6 block.
    public func contains(_ ip: [UInt8]) -> Bool {
        guard ip.count == address.count else { return false }
        var bits = prefixLength
        var i = 0
        while bits >= 8 {
            if ip[i] != address[i] { return false }
            bits -= 8
            i += 1
        }
        if bits == 0 { return true }
        let mask = UInt8(truncatingIfNeeded: 0xFF << (8 - bits))
        return ip[i] & mask == address[i] & mask
    }
}

/// An AuthorizationPolicy `paths` entry: Istio's string match, or a path template where `{*}` is exactly one
/// segment and `{**}` (last only) the rest of the path.
public enum PathPattern: Sendable, Equatable {
    case string(StringMatch)
    /// Segments: nil = `{*}`; the pattern ends with `{**}` when `rest` is true.
    case template(segments: [[UInt8]?], rest: Bool)

    public init?(_ pattern: String) {
        guard pattern.contains("{") else { self = .string(StringMatch(pattern)); return }
        var segments: [[UInt8]?] = []
        var rest = false
        let parts = pattern.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.first == "" else { return nil }
        for (i, part) in parts.dropFirst().enumerated() {
            if part == "{*}" {
                segments.append(nil)
            } else if part == "{**}" {
                guard i == parts.count - 2 else { return nil }  // `{**}` only as the last segment
                rest = true
            } else {
                guard !part.contains("{") && !part.contains("}") && !part.contains("*") else { return nil }
                segments.append(Array(part.utf8))
            }
        }
        self = .template(segments: segments, rest: rest)
    }

    public func matches(_ path: UnsafeRawBufferPointer) -> Bool {
        switch self {
        case .string(let match):
            return match.matches(path)
        case .template(let segments, let rest):
            guard path.first == 0x2F else { return false }
            var parts = path.dropFirst().split(separator: 0x2F, omittingEmptySubsequences: false)
            if rest {
                guard parts.count > segments.count else { return false }
                parts = Array(parts[0..<segments.count])
            } else {
                guard parts.count == segments.count else { return false }
            }
            for (part, segment) in zip(parts, segments) {
                if let segment {
                    guard part.elementsEqual(segment) else { return false }
                } else if part.isEmpty {
                    return false
                }
            }
            return true
        }
    }
}
