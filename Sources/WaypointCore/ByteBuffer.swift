/// A growable byte buffer with a read and a write index: a connection's input or pending output.
///
/// Memory is one malloc'd block reused for the connection's life; `compact()` moves unread bytes to the
/// front instead of reallocating. Thread: its connection's loop thread only. Ownership: one connection.
public final class ByteBuffer {
    public private(set) var base: UnsafeMutableRawPointer
    public private(set) var capacity: Int
    public private(set) var readerIndex = 0
    public private(set) var writerIndex = 0

    /// The block size allocated on first use (a lazy buffer starts with none).
    private let initialCapacity: Int

    public init(capacity: Int) {
        self.capacity = capacity
        initialCapacity = capacity
        base = UnsafeMutableRawPointer.allocate(byteCount: capacity, alignment: 16)
    }

    /// A buffer that allocates `capacity` bytes only when first written: an idle HBONE tunnel then costs no
    /// buffer memory (the budget is 8 KiB per idle tunnel).
    public init(lazyCapacity capacity: Int) {
        self.capacity = 0
        initialCapacity = capacity
        base = emptyStorage
    }

    deinit { if capacity > 0 { base.deallocate() } }

    @inline(__always) public var readableBytes: Int { writerIndex - readerIndex }
    @inline(__always) public var isEmpty: Bool { writerIndex == readerIndex }

    /// The unread bytes. Valid until the next mutation.
    @inline(__always) public var readable: UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: base + readerIndex, count: writerIndex - readerIndex)
    }

    /// Free space after the write index, compacting first when that makes room.
    public func writableSpace() -> UnsafeMutableRawBufferPointer {
        if capacity == 0 { grow(initialCapacity) }
        if writerIndex == capacity || (readerIndex > 0 && readerIndex >= capacity / 2) { compact() }
        return UnsafeMutableRawBufferPointer(start: base + writerIndex, count: capacity - writerIndex)
    }

    @inline(__always) public func commitWrite(_ count: Int) { writerIndex += count }

    @inline(__always) public func consume(_ count: Int) {
        readerIndex += count
        if readerIndex == writerIndex { readerIndex = 0; writerIndex = 0 }
    }

    public func clear() { readerIndex = 0; writerIndex = 0 }

    /// Moves as many readable bytes as fit into `buffer` (copied, then consumed); how many.
    @inline(__always) public func move(into buffer: UnsafeMutableRawBufferPointer) -> Int {
        let n = min(buffer.count, readableBytes)
        if n > 0 {
            buffer.baseAddress!.copyMemory(from: readable.baseAddress!, byteCount: n)
            consume(n)
        }
        return n
    }

    /// Drops readable bytes after the first `count`.
    public func truncate(to count: Int) {
        precondition(count >= 0 && count <= readableBytes)
        writerIndex = readerIndex + count
    }

    /// Moves the unread bytes to the front.
    public func compact() {
        guard readerIndex > 0 else { return }
        let n = readableBytes
        if n > 0 { (base).copyMemory(from: base + readerIndex, byteCount: n) }
        readerIndex = 0
        writerIndex = n
    }

    /// Gives a block grown past `limit` back once the buffer is empty; the next write allocates the initial size
    /// again (a connection that streamed a large body keeps no large buffer while idle).
    public func shrink(above limit: Int) {
        guard isEmpty, capacity > limit else { return }
        base.deallocate()
        base = emptyStorage
        capacity = 0
        readerIndex = 0
        writerIndex = 0
    }

    /// Makes room for `count` more bytes, growing the block if compaction is not enough.
    @inline(__always) public func reserve(_ count: Int) {
        if capacity - writerIndex >= count { return }
        grow(count)
    }

    private func grow(_ count: Int) {
        compact()
        if capacity - writerIndex >= count { return }
        var newCapacity = max(capacity * 2, initialCapacity, 16)
        while newCapacity - writerIndex < count { newCapacity *= 2 }
        let newBase = UnsafeMutableRawPointer.allocate(byteCount: newCapacity, alignment: 16)
        if capacity > 0 {
            newBase.copyMemory(from: base, byteCount: writerIndex)
            base.deallocate()
        }
        base = newBase
        capacity = newCapacity
    }

    @inline(__always) public func append(_ bytes: UnsafeRawBufferPointer) {
        guard bytes.count > 0 else { return }
        reserve(bytes.count)
        (base + writerIndex).copyMemory(from: bytes.baseAddress!, byteCount: bytes.count)
        writerIndex += bytes.count
    }

    @inline(__always) public func append(_ byte: UInt8) {
        reserve(1)
        base.storeBytes(of: byte, toByteOffset: writerIndex, as: UInt8.self)
        writerIndex += 1
    }

    public func append(_ bytes: [UInt8]) { bytes.withUnsafeBytes { append($0) } }

    /// Appends a literal's bytes: no `String`, no allocation. (Literals resolve here; dynamic text uses
    /// `append(string:)`, named apart so that a literal can never silently become a `String`.)
    @inline(__always) public func append(_ text: StaticString) {
        append(UnsafeRawBufferPointer(start: text.utf8Start, count: text.utf8CodeUnitCount))
    }

    public func append(string text: String) {
        var text = text
        text.withUTF8 { append(UnsafeRawBufferPointer($0)) }
    }

    /// Appends a non-negative integer in decimal without allocating.
    public func appendDecimal(_ value: Int) {
        var digits: (UInt64, UInt64, UInt64) = (0, 0, 0)  // 24 bytes of scratch: enough for any Int
        var v = UInt(value.magnitude)
        withUnsafeMutableBytes(of: &digits) { scratch in
            var i = scratch.count
            repeat {
                i -= 1
                scratch[i] = UInt8(truncatingIfNeeded: v % 10) + 48
                v /= 10
            } while v > 0
            if value < 0 { i -= 1; scratch[i] = 45 }
            append(UnsafeRawBufferPointer(rebasing: scratch[i...]))
        }
    }

    /// Appends a value in lower-case hex, zero-padded to `width` digits (at most 16).
    public func appendHex(_ value: UInt64, width: Int) {
        reserve(width)
        let digits = ("0123456789abcdef" as StaticString).utf8Start
        let out = (base + writerIndex).assumingMemoryBound(to: UInt8.self)
        var v = value
        var i = width
        while i > 0 {
            i -= 1
            out[i] = digits[Int(v & 0xF)]
            v >>= 4
        }
        writerIndex += width
    }
}

/// The storage of every lazy buffer that has not allocated yet: never written (its capacity is 0).
nonisolated(unsafe) private let emptyStorage = UnsafeMutableRawPointer.allocate(byteCount: 16, alignment: 16)
