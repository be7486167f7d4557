import Testing
import WaypointCore

@Suite struct GRPCTimeoutTests {
    @Test(arguments: [
        ("1H", Duration.seconds(3600)), ("2M", .seconds(120)), ("3S", .seconds(3)), ("250m", .milliseconds(250)),
        ("7u", .microseconds(7)), ("99999999n", .nanoseconds(99_999_999)), ("0m", .zero),
    ])
    func parses(text: String, expected: Duration) {
        #expect(GRPCTimeout.parse(text) == expected)
    }

    @Test(arguments: ["", "m", "5", "123456789m", "5s", "-5m", "5 m", "1.5S", "５m"])
    func refusesMalformed(text: String) {
        #expect(GRPCTimeout.parse(text) == nil)
    }

    @Test func formatsInMillisecondsRoundingUp() {
        #expect(GRPCTimeout.format(.milliseconds(300)) == "300m")
        #expect(GRPCTimeout.format(.microseconds(1500)) == "2m")
        #expect(GRPCTimeout.format(.seconds(200_000)) == "200000S")
        #expect(GRPCTimeout.parse(GRPCTimeout.format(.seconds(7))) == .seconds(7))
    }
}
