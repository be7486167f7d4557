#if canImport(Glibc)
    import Glibc
#endif

/// An immutable hash map from byte strings to values, looked up with a borrowed byte view so that a request
/// needs no `String` or array to find its virtual host.
///
/// Open addressing with linear probing over a power-of-two table at most half full; FNV-1a hash.
/// Thread: immutable after init, so shared by all workers. Ownership: the compiled table that holds it.
public struct ByteStringMap<Value: Sendable>: Sendable {
    private struct Slot: Sendable {
        var hash: UInt64
        var key: [UInt8]
        var value: Value
    }

    private var slots: [Slot?]
    private let mask: Int
    public private(set) var count = 0

    public init(_ entries: [([UInt8], Value)]) {
        var size = 8
        while size < entries.count * 2 { size *= 2 }
        slots = Array(repeating: nil, count: size)
        mask = size - 1
        for (key, value) in entries { insert(key, value) }
    }

    /// Inserts or, for a key already present, keeps the first value (config order wins).
    private mutating func insert(_ key: [UInt8], _ value: Value) {
        let hash = key.withUnsafeBytes { Self.hash($0) }
        var i = Int(truncatingIfNeeded: hash) & mask
        while let slot = slots[i] {
            if slot.hash == hash && slot.key == key { return }
            i = (i + 1) & mask
        }
        slots[i] = Slot(hash: hash, key: key, value: value)
        count += 1
    }

    @inline(__always)
    public func lookup(_ key: UnsafeRawBufferPointer) -> Value? {
        let hash = Self.hash(key)
        var i = Int(truncatingIfNeeded: hash) & mask
        while let slot = slots[i] {
            if slot.hash == hash && slot.key.count == key.count {
                let equal = slot.key.withUnsafeBytes { k in key.count == 0 || memcmp(k.baseAddress!, key.baseAddress!, key.count) == 0 }
                if equal { return slot.value }
            }
            i = (i + 1) & mask
        }
        return nil
    }

    @inline(__always)
    static func hash(_ bytes: UnsafeRawBufferPointer) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in bytes { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
        return h
    }
}
