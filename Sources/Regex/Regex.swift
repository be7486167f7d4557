internal import CPCRE2

/// A PCRE2 regular expression compiled once (with JIT where available) and matched against whole byte strings.
///
/// Anchored at both ends: Gateway API and Istio regex matches apply to the entire value.
/// Thread: matching allocates a per-call match-data block, so one Regex may be shared by all workers.
/// Ownership: the compiled table that holds it; the code is freed in `deinit`.
public final class Regex: @unchecked Sendable, Equatable {
    // SAFETY: pcre2_code is immutable after compile and JIT compile, and PCRE2 documents it as shareable
    // between threads; each match uses its own match data.
    private let code: OpaquePointer
    public let pattern: String

    /// Compiles `pattern`; throws a message naming the offset of the error. `anchored`: it must match the whole
    /// subject (matching); otherwise it may match anywhere (`replacingAll`).
    public init(_ pattern: String, anchored: Bool = true) throws(RegexError) {
        var errorCode: Int32 = 0
        var errorOffset = 0
        let options = anchored ? UInt32(PCRE2_ANCHORED | PCRE2_ENDANCHORED | PCRE2_UTF) : UInt32(PCRE2_UTF)
        let compiled = pattern.withCString { p in
            pcre2_compile_8(p, wp_pcre2_zero_terminated(), options, &errorCode, &errorOffset, nil)
        }
        guard let compiled else {
            var message = [UInt8](repeating: 0, count: 256)
            let n = pcre2_get_error_message_8(errorCode, &message, 256)
            let text = n > 0 ? String(decoding: message[0..<Int(n)], as: UTF8.self) : "code \(errorCode)"
            throw RegexError(pattern: pattern, offset: errorOffset, message: text)
        }
        _ = pcre2_jit_compile_8(compiled, UInt32(PCRE2_JIT_COMPLETE))  // falls back to the interpreter
        code = compiled
        self.pattern = pattern
    }

    deinit { pcre2_code_free_8(code) }

    /// Two expressions are equal when their patterns are (configs compare specs to find what changed).
    public static func == (lhs: Regex, rhs: Regex) -> Bool { lhs.pattern == rhs.pattern }

    /// `subject` with every match replaced by `replacement` (PCRE2 syntax: `$1` or `${1}` for a group, `$$` for
    /// `$`), or nil when the replacement names a group the pattern lacks.
    public func replacingAll(in subject: UnsafeRawBufferPointer, with replacement: [UInt8]) -> [UInt8]? {
        let base = subject.baseAddress?.assumingMemoryBound(to: UInt8.self) ?? UnsafePointer(bitPattern: 1)!
        var capacity = subject.count * 2 + replacement.count + 64
        for _ in 0..<2 {
            var output = [UInt8](repeating: 0, count: capacity)
            var length = capacity
            let rc = replacement.withUnsafeBufferPointer { r in
                output.withUnsafeMutableBufferPointer { out in
                    pcre2_substitute_8(
                        code, base, subject.count, 0, UInt32(PCRE2_SUBSTITUTE_GLOBAL | PCRE2_SUBSTITUTE_OVERFLOW_LENGTH),
                        nil, nil, r.baseAddress ?? UnsafePointer(bitPattern: 1)!, r.count, out.baseAddress, &length)
                }
            }
            if rc >= 0 { return Array(output[0..<length]) }
            guard rc == PCRE2_ERROR_NOMEMORY else { return nil }
            capacity = length  // the length it needs
        }
        return nil
    }

    /// The number of capturing groups in the pattern.
    public var captureCount: Int {
        var count: UInt32 = 0
        _ = pcre2_pattern_info_8(code, UInt32(PCRE2_INFO_CAPTURECOUNT), &count)
        return Int(count)
    }

    /// An RE2-style replacement (Istio's and Envoy's `\1` for group 1) in PCRE2's syntax (`${1}`, `$$`), and the
    /// highest group it names.
    public static func pcre2Replacement(fromRE2 text: String) -> (replacement: [UInt8], highestGroup: Int) {
        var out: [UInt8] = []
        var highest = 0
        var bytes = Array(text.utf8)[...]
        while let byte = bytes.popFirst() {
            if byte == 0x5C, let next = bytes.first, next >= 0x30 && next <= 0x39 {  // \N
                bytes.removeFirst()
                highest = max(highest, Int(next - 0x30))
                out += Array("${\(next - 0x30)}".utf8)
            } else if byte == 0x24 {  // a literal $
                out += [0x24, 0x24]
            } else {
                out.append(byte)
            }
        }
        return (out, highest)
    }

    /// The bytes every match must start with (the pattern's leading literal text), so that a caller can skip
    /// the match for subjects that do not start with them. Empty when the pattern has alternation or options,
    /// or starts with anything but a literal.
    public var literalPrefix: [UInt8] {
        let bytes = Array(pattern.utf8)
        guard !bytes.contains(0x7C) else { return [] }  // '|': an alternative may start differently
        var prefix: [UInt8] = []
        for byte in bytes {
            if Self.special.contains(byte) {
                // A quantifier makes the character before it optional (all of its UTF-8 bytes).
                if Self.quantifiers.contains(byte) {
                    while let last = prefix.last, last & 0xC0 == 0x80 { prefix.removeLast() }
                    if !prefix.isEmpty { prefix.removeLast() }
                }
                return prefix
            }
            prefix.append(byte)
        }
        return prefix
    }

    /// `text` as a pattern that matches exactly it.
    public static func quote(_ text: String) -> String {
        var out = ""
        for c in text { if c.isASCII, let b = c.asciiValue, special.contains(b) { out.append("\\") }; out.append(c) }
        return out
    }

    private static let special: Set<UInt8> = Set("\\^$.|?*+()[]{}#".utf8)
    private static let quantifiers: Set<UInt8> = Set("?*+{".utf8)

    /// True when the whole of `subject` matches.
    public func matches(_ subject: UnsafeRawBufferPointer) -> Bool {
        guard let data = pcre2_match_data_create_from_pattern_8(code, nil) else { return false }
        defer { pcre2_match_data_free_8(data) }
        let base = subject.baseAddress?.assumingMemoryBound(to: UInt8.self) ?? UnsafePointer(bitPattern: 1)!
        return pcre2_match_8(code, base, subject.count, 0, 0, data, nil) >= 0
    }

}

/// A pattern that PCRE2 rejected.
public struct RegexError: Error, CustomStringConvertible, Sendable {
    public let pattern: String
    public let offset: Int
    public let message: String
    public var description: String { "invalid regular expression \"\(pattern)\" at offset \(offset): \(message)" }
}
