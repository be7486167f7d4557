/// Finds the end of a chunked body (RFC 9112 §7.1) in the bytes passing through, without changing them: the
/// proxy forwards chunked bodies verbatim and only needs to know where each message ends.
///
/// A small state machine fed any split of the stream; memory and work are constant per byte.
public struct ChunkedScanner: Sendable {
    enum State: Sendable {
        case size, sizeLF, extensions, data, dataCR, dataLF, trailerLineStart, trailerLine, trailerLF, finalLF, done
    }

    private var state = State.size
    private var remaining = 0
    private var sizeDigits = 0
    /// Decoded body bytes seen so far (chunk data only).
    public private(set) var bodyBytes = 0

    public init() {}

    public var isComplete: Bool { if case .done = state { return true } else { return false } }

    /// Scans `bytes`; returns how many belong to this body (all of them unless the body ends inside),
    /// or nil when the encoding is malformed.
    public mutating func scan(_ bytes: UnsafeRawBufferPointer) -> Int? {
        var i = 0
        let n = bytes.count
        while i < n {
            let b = bytes[i]
            switch state {
            case .size:
                if let digit = Self.hexValue(b) {
                    guard sizeDigits < 15 else { return nil }  // keeps the size well inside Int
                    remaining = remaining << 4 | digit
                    sizeDigits += 1
                } else {
                    guard sizeDigits > 0 else { return nil }
                    switch b {
                    case 0x0D: state = .sizeLF
                    case 0x0A: endOfSizeLine()
                    case 0x3B, 0x20, 0x09: state = .extensions
                    default: return nil
                    }
                }
            case .extensions:
                // chunk-ext: skipped, but only visible characters may appear (no bare CR, no NUL).
                if b == 0x0D {
                    state = .sizeLF
                } else if b == 0x0A {
                    endOfSizeLine()
                } else if b < 0x20 && b != 0x09 || b == 0x7F {
                    return nil
                }
            case .sizeLF:
                guard b == 0x0A else { return nil }
                endOfSizeLine()
            case .data:
                let take = min(remaining, n - i)
                remaining -= take
                bodyBytes += take
                i += take
                if remaining == 0 { state = .dataCR }
                continue
            case .dataCR:
                if b == 0x0D { state = .dataLF } else if b == 0x0A { state = .size } else { return nil }
            case .dataLF:
                guard b == 0x0A else { return nil }
                state = .size
            case .trailerLineStart:
                if b == 0x0D {
                    state = .finalLF
                } else if b == 0x0A {
                    state = .done; return i + 1
                } else if b == 0x20 || b == 0x09 {
                    return nil
                } else {
                    state = .trailerLine
                }
            case .trailerLine:
                if b == 0x0D {
                    state = .trailerLF
                } else if b == 0x0A {
                    state = .trailerLineStart
                } else if b < 0x20 && b != 0x09 || b == 0x7F {
                    return nil
                }
            case .trailerLF:
                guard b == 0x0A else { return nil }
                state = .trailerLineStart
            case .finalLF:
                guard b == 0x0A else { return nil }
                state = .done
                return i + 1
            case .done:
                return i
            }
            i += 1
        }
        return n
    }

    private mutating func endOfSizeLine() {
        sizeDigits = 0
        if remaining == 0 {
            state = .trailerLineStart
        } else {
            state = .data
        }
    }

    /// The data of a chunked body (or its start) that a scanner accepted: sizes, extensions and trailers dropped,
    /// a chunk cut off kept as far as it goes.
    public static func decode(_ body: UnsafeRawBufferPointer) -> [UInt8] {
        var data: [UInt8] = []
        var i = 0
        while i < body.count {
            var size = 0
            while i < body.count, let digit = hexValue(body[i]) {
                size = size << 4 | digit
                i += 1
            }
            while i < body.count && body[i] != 0x0A { i += 1 }  // extensions, CR
            i += 1
            guard size > 0, i < body.count else { break }
            data += body[i..<min(i + size, body.count)]
            i += size
            while i < body.count && body[i] != 0x0A { i += 1 }  // CR
            i += 1
        }
        return data
    }

    @inline(__always) private static func hexValue(_ b: UInt8) -> Int? {
        switch b {
        case 0x30...0x39: return Int(b - 0x30)
        case 0x41...0x46: return Int(b - 0x41 + 10)
        case 0x61...0x66: return Int(b - 0x61 + 10)
        default: return nil
        }
    }
}
