import Testing
import WaypointCore

@Suite struct ByteBufferTests {
    @Test func offsetFindsTheFirstOccurrence() {
        let bytes = Array("a\r\nb\r\n\r\n".utf8)
        #expect(bytes.offset(of: [0x0D, 0x0A]) == 1 && bytes.offset(of: [0x0D, 0x0A, 0x0D, 0x0A]) == 4)
        #expect(bytes.offset(of: Array("xyz".utf8)) == nil && [UInt8]().offset(of: [1]) == nil && bytes.offset(of: []) == nil)
    }

    @Test func appendsDecimalAndHex() {
        let buffer = ByteBuffer(capacity: 4)
        buffer.appendDecimal(0)
        buffer.append(" ")
        buffer.appendDecimal(-42)
        buffer.append(" ")
        buffer.appendDecimal(Int.max)
        buffer.append(" ")
        buffer.appendHex(0xBEEF, width: 8)
        buffer.append(" ")
        buffer.appendHex(0x0123_4567_89AB_CDEF, width: 16)
        #expect(String(decoding: buffer.readable, as: UTF8.self) == "0 -42 9223372036854775807 0000beef 0123456789abcdef")
    }

    @Test func compactsAndGrowsKeepingUnreadBytes() {
        let buffer = ByteBuffer(capacity: 8)
        buffer.append("abcdefgh")
        buffer.consume(6)
        buffer.append("ijklmnopqrstuvwxyz")
        #expect(String(decoding: buffer.readable, as: UTF8.self) == "ghijklmnopqrstuvwxyz")
        #expect(buffer.capacity >= 20)
    }
}
