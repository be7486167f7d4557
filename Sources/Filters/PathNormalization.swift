import WaypointCore

/// Istio's request path normalization (meshConfig `pathNormalization`), applied before routing and
/// authorization so that both, and the upstream, see the same path. Each step closed a bypass: `../`
/// (CVE-2019-9901), `//` and `%2F` (CVE-2021-31920), `#fragment` (CVE-2021-39156).
public enum PathNormalization: String, Sendable, CaseIterable {
    /// No normalization (`%00` is still refused).
    case none = "NONE"
    /// Decode percent-encoded unreserved characters, `\` → `/`, resolve `.` and `..` (RFC 3986 §6.2.2, §5.2.4).
    case base = "BASE"
    /// BASE, then `//` → `/`.
    case mergeSlashes = "MERGE_SLASHES"
    /// Decode `%2F`, `%2f`, `%5C`, `%5c` first, then MERGE_SLASHES.
    case decodeAndMergeSlashes = "DECODE_AND_MERGE_SLASHES"

    /// Normalizes the path (no query) held in `path`, in place: normalization never makes it longer.
    /// Returns the new length, or nil when the request must be refused with 400 (`%00`, a path that is not
    /// absolute).
    public func normalize(_ path: UnsafeMutableRawBufferPointer) -> Int? {
        let n = path.count
        // `%00` is refused in every mode (Istio).
        var i = 0
        while i + 2 < n {
            if path[i] == 0x25 && path[i + 1] == 0x30 && path[i + 2] == 0x30 { return nil }
            i += 1
        }
        guard self != .none else { return n }
        guard n > 0, path[0] == 0x2F || path[0] == 0x5C else { return nil }
        let merge = self != .base
        var w = 0
        var r = 0
        while r < n {
            var b = path[r]
            var consumed = 1
            if b == 0x25, r + 2 < n, let decoded = Self.hexByte(path[r + 1], path[r + 2]) {
                if Self.isUnreserved(decoded) || (self == .decodeAndMergeSlashes && (decoded == 0x2F || decoded == 0x5C)) {
                    b = decoded
                    consumed = 3
                }
            }
            if b == 0x5C { b = 0x2F }
            r += consumed
            if merge && b == 0x2F && w > 0 && path[w - 1] == 0x2F { continue }
            path[w] = b
            w += 1
        }
        return Self.removeDotSegments(path, count: w)
    }

    /// Calls `body` with `path` hardened: `;` path parameters dropped from every segment, then normalized as
    /// DECODE_AND_MERGE_SLASHES. Returns nil without calling `body` when hardening changes nothing (the
    /// common case: no copy is made) or the path is not absolute. What DENY rules are also checked against.
    public static func withHardened<R>(_ path: UnsafeRawBufferPointer, _ body: (UnsafeRawBufferPointer) -> R) -> R? {
        guard let first = path.first, first == 0x2F || first == 0x5C, mayHarden(path) else { return nil }
        return withUnsafeTemporaryAllocation(byteCount: path.count, alignment: 1) { copy -> R? in
            var n = 0
            var inParameter = false
            for b in path {
                if b == 0x2F || b == 0x5C { inParameter = false } else if b == 0x3B { inParameter = true }
                if !inParameter { copy[n] = b; n += 1 }
            }
            guard let length = decodeAndMergeSlashes.normalize(UnsafeMutableRawBufferPointer(rebasing: copy[0..<n])) else { return nil }
            let hardened = UnsafeRawBufferPointer(rebasing: copy[0..<length])
            guard !hardened.elementsEqual(path) else { return nil }
            return body(hardened)
        }
    }

    /// Whether hardening could change `path`: it has `;`, `%`, `\`, `//` or a segment starting with `.`.
    private static func mayHarden(_ path: UnsafeRawBufferPointer) -> Bool {
        var previous: UInt8 = 0
        for b in path {
            if b == 0x3B || b == 0x25 || b == 0x5C || (previous == 0x2F && (b == 0x2F || b == 0x2E)) { return true }
            previous = b
        }
        return false
    }

    /// RFC 3986 §5.2.4 on an absolute path, in place; returns the new length.
    static func removeDotSegments(_ path: UnsafeMutableRawBufferPointer, count: Int) -> Int {
        var w = 0  // output length; output always starts with "/"
        var r = 0
        while r < count {
            // At a "/": look at the segment that follows.
            var end = r + 1
            while end < count && path[end] != 0x2F { end += 1 }
            let length = end - r - 1
            let isDot = length == 1 && path[r + 1] == 0x2E
            let isDotDot = length == 2 && path[r + 1] == 0x2E && path[r + 2] == 0x2E
            if isDot || isDotDot {
                if isDotDot {
                    // Drop the last output segment with its "/": "/a/b" → "/a".
                    while w > 0 && path[w - 1] != 0x2F { w -= 1 }
                    if w > 0 { w -= 1 }
                }
                if end == count {
                    // A trailing "." or ".." leaves the directory: "/a/b/.." → "/a/".
                    path[w] = 0x2F
                    w += 1
                }
                r = end
                continue
            }
            for k in r..<end {
                path[w] = path[k]
                w += 1
            }
            r = end
        }
        if w == 0 {
            path[0] = 0x2F
            w = 1
        }
        return w
    }

    private static func isUnreserved(_ b: UInt8) -> Bool {
        (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A) || (b >= 0x30 && b <= 0x39) || b == 0x2D || b == 0x2E || b == 0x5F || b == 0x7E
    }

    private static func hexByte(_ high: UInt8, _ low: UInt8) -> UInt8? {
        func value(_ c: UInt8) -> UInt8? {
            switch c {
            case 0x30...0x39: return c - 0x30
            case 0x41...0x46: return c - 0x41 + 10
            case 0x61...0x66: return c - 0x61 + 10
            default: return nil
            }
        }
        guard let h = value(high), let l = value(low) else { return nil }
        return h << 4 | l
    }
}
