import Testing
import WaypointCore

@Suite struct TraceContextTests {
    private func parse(_ text: String) -> (high: UInt64, low: UInt64, parent: UInt64, sampled: Bool)? {
        Array(text.utf8).withUnsafeBytes { TraceContext.parse($0) }
    }

    @Test func validValueAndFlags() throws {
        let parsed = try #require(parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"))
        #expect(
            parsed.high == 0x4bf92f3577b34da6 && parsed.low == 0xa3ce929d0e0e4736 && parsed.parent == 0x00f067aa0ba902b7 && parsed.sampled)
        #expect(parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")?.sampled == false)
    }

    @Test(arguments: [
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  // all-zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  // all-zero parent
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  // upper-case hex
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  // unknown version
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",  // wrong length
        "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    ])
    func malformedValuesAreIgnored(_ value: String) {
        #expect(parse(value) == nil)
    }

    @Test func continuedContextNamesTheNewSpanAsParent() {
        var random = FastRandom(seed: 7)
        let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        let context = Array(incoming.utf8).withUnsafeBytes { TraceContext.decide(traceparent: $0, sampleRate: 0, random: &random) }
        let out = ByteBuffer(capacity: 64)
        context?.writeTraceparent(into: out)
        let text = String(decoding: out.readable, as: UTF8.self)
        #expect(text.hasPrefix("00-4bf92f3577b34da6a3ce929d0e0e4736-") && text.hasSuffix("-01") && !text.contains("00f067aa0ba902b7"))
        #expect(Array("x".utf8).withUnsafeBytes { TraceContext.decide(traceparent: $0, sampleRate: 0, random: &random) } == nil)
    }
}
