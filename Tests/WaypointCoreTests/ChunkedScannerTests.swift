import Testing
import WaypointCore

@Suite struct ChunkedScannerTests {
    /// Feeds `text` in pieces of `step` bytes; returns bytes consumed, decoded length, and completion.
    private func scan(_ text: String, step: Int) -> (consumed: Int?, body: Int, complete: Bool) {
        var scanner = ChunkedScanner()
        let bytes = Array(text.utf8)
        var offset = 0
        return bytes.withUnsafeBytes { all in
            while offset < all.count && !scanner.isComplete {
                let end = min(offset + step, all.count)
                guard let n = scanner.scan(UnsafeRawBufferPointer(rebasing: all[offset..<end])) else { return (nil, 0, false) }
                offset += n
            }
            return (offset, scanner.bodyBytes, scanner.isComplete)
        }
    }

    @Test(arguments: [1, 2, 3, 7, 1000])
    func findsTheEndInAnySplit(step: Int) {
        let message = "5\r\nhello\r\nA;ext=1\r\n0123456789\r\n0\r\nTrailer: x\r\n\r\n"
        let result = scan(message + "NEXT", step: step)
        #expect(result.consumed == message.utf8.count)
        #expect(result.body == 15)
        #expect(result.complete)
    }

    @Test func lastChunkWithoutTrailers() {
        let result = scan("0\r\n\r\n", step: 100)
        #expect(result.consumed == 5)
        #expect(result.complete)
    }

    @Test(arguments: ["x\r\n", "5\r\nhelloX\r\n", "\r\n", "1000000000000000\r\n", "5\rX", "0\r\n bad\r\n\r\n", "3;\u{0}\r\n"])
    func rejectsMalformed(_ text: String) {
        #expect(scan(text, step: 100).consumed == nil)
    }

    @Test func incompleteIsNotAnError() {
        let result = scan("5\r\nhel", step: 100)
        #expect(result.consumed == 6)
        #expect(!result.complete)
    }
}
