import Testing
import WaypointCore

@Suite struct GoDurationTests {
    @Test(arguments: [
        ("5s", Duration.seconds(5)), ("250ms", .milliseconds(250)), ("1m30s", .seconds(90)), ("1.5h", .seconds(5400)),
        ("100us", .microseconds(100)), ("0", .zero), ("2h45m", .seconds(9900)),
    ])
    func parses(_ text: String, _ expected: Duration) {
        #expect(GoDuration.parse(text) == expected)
    }

    @Test(arguments: ["", "5", "s", "-5s", "5x", "1m30", "five seconds"])
    func rejects(_ text: String) {
        #expect(GoDuration.parse(text) == nil)
    }

    @Test(arguments: [(Duration.seconds(5), "5s"), (.milliseconds(250), "250ms"), (.seconds(90), "1m30s"), (.milliseconds(1500), "1.5s")])
    func formats(_ duration: Duration, _ expected: String) {
        #expect(GoDuration.format(duration) == expected)
    }
}
