import Testing
import WaypointCore

@Suite struct BodyTrackerTests {
    private func feed(_ tracker: inout BodyTracker, _ text: String) -> Int? {
        Array(text.utf8).withUnsafeBytes { tracker.consume($0) }
    }

    @Test func contentLengthStopsAtTheEnd() {
        var body = BodyTracker(.contentLength(5))
        #expect(feed(&body, "abc") == 3)
        #expect(!body.isComplete)
        #expect(feed(&body, "deGET /next") == 2)
        #expect(body.isComplete)
        #expect(body.bodyBytes == 5)
    }

    @Test func chunkedCountsDecodedBytes() {
        var body = BodyTracker(.chunked)
        #expect(feed(&body, "3\r\nabc\r\n0\r\n\r\nnext") == 13)
        #expect(body.isComplete)
        #expect(body.bodyBytes == 3)
        var bad = BodyTracker(.chunked)
        #expect(feed(&bad, "x\r\n") == nil)
    }

    @Test func closeDelimitedEndsOnlyWithTheConnection() {
        var body = BodyTracker(.untilClose)
        #expect(feed(&body, "everything") == 10)
        #expect(!body.isComplete)
        body.connectionClosed()
        #expect(body.isComplete)
        var sized = BodyTracker(.contentLength(3))
        sized.connectionClosed()
        #expect(!sized.isComplete)
    }

    @Test func noBodyIsCompleteAtOnce() {
        var body = BodyTracker(.none)
        #expect(body.isComplete)
        #expect(feed(&body, "GET") == 0)
    }
}
