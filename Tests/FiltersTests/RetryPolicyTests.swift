import Filters
import Testing

@Suite struct RetryPolicyTests {
    @Test(arguments: [
        (RetryPolicy.Outcome.connectFailed, true), (.reset, false), (.status(503), true), (.status(502), false),
        (.status(500), false), (.status(504), false), (.status(200), false), (.refusedStream, true),
        (.grpcStatus(14), true), (.grpcStatus(1), true), (.grpcStatus(13), false), (.grpcStatus(4), false),
    ])
    func istioDefaultRetriesConnectFailuresRefusedStreamsUnavailableCancelledAnd503(outcome: RetryPolicy.Outcome, expected: Bool) {
        #expect(RetryPolicy.istioDefault.wouldRetry(outcome) == expected)
    }

    @Test(arguments: [(RetryPolicy.Outcome.status(502), true), (.status(504), true), (.status(500), false), (.reset, true)])
    func gatewayErrorAndReset(outcome: RetryPolicy.Outcome, expected: Bool) {
        let policy = RetryPolicy(maxRetries: 1, retryOn: [.gatewayError, .reset])
        #expect(policy.wouldRetry(outcome) == expected)
    }

    /// Envoy's rule: a refused stream is a reset, so `reset`, `5xx` and `gateway-error` retry it too.
    @Test(arguments: [("reset", true), ("5xx", true), ("gateway-error", true), ("refused-stream", true), ("connect-failure", false)])
    func refusedStreamIsAReset(retryOn: String, expected: Bool) {
        #expect(RetryPolicy.istio(attempts: 1, retryOn: retryOn).wouldRetry(.refusedStream) == expected)
    }

    @Test func grpcConditionsByName() {
        let policy = RetryPolicy.istio(attempts: 1, retryOn: "cancelled,deadline-exceeded,resource-exhausted,internal,unavailable")
        #expect([1, 4, 8, 13, 14].allSatisfy { policy.wouldRetry(.grpcStatus($0)) })
        #expect(![0, 2, 3, 5, 7, 12, 16].contains { policy.wouldRetry(.grpcStatus($0)) })
        #expect(!policy.wouldRetry(.status(503)) && !policy.wouldRetry(.reset))
        let internalOnly = RetryPolicy.istio(attempts: 1, retryOn: "internal")
        #expect(internalOnly.wouldRetry(.grpcStatus(13)) && !internalOnly.wouldRetry(.grpcStatus(14)))
    }

    @Test func serverErrorCoversEvery5xx() {
        let policy = RetryPolicy(maxRetries: 1, retryOn: .serverError)
        #expect((500...599).allSatisfy { policy.wouldRetry(.status($0)) })
        #expect(!policy.wouldRetry(.status(499)))
    }

    /// Full jitter: retry n waits in [0, min(250 ms, 25 ms · 2ⁿ⁻¹)).
    @Test(arguments: [(1, 25), (2, 50), (3, 100), (4, 200), (5, 250), (9, 250)])
    func backoffStaysUnderItsCeiling(retry: Int, ceilingMs: Int) {
        let policy = RetryPolicy.istioDefault
        var generator = SystemRandomNumberGenerator()
        var longest = Duration.zero
        for _ in 0..<2000 {
            let wait = policy.backoff(retry: retry, random: generator.next())
            #expect(wait >= .zero && wait < .milliseconds(ceilingMs))
            longest = max(longest, wait)
        }
        #expect(longest > .milliseconds(ceilingMs) * 0.9)  // and uses the whole range
    }
}

@Suite struct OutlierDetectionTests {
    @Test func consecutive5xxTripsAndSuccessResets() {
        let detection = OutlierDetection(consecutive5xxErrors: 3, consecutiveGatewayErrors: nil)
        var fiveXX = 0, gateway = 0
        #expect(!detection.record(.status(500), fiveXX: &fiveXX, gateway: &gateway))
        #expect(!detection.record(.connectFailure, fiveXX: &fiveXX, gateway: &gateway))
        #expect(!detection.record(.status(200), fiveXX: &fiveXX, gateway: &gateway))  // resets
        #expect(!detection.record(.status(503), fiveXX: &fiveXX, gateway: &gateway))
        #expect(!detection.record(.status(500), fiveXX: &fiveXX, gateway: &gateway))
        #expect(detection.record(.status(502), fiveXX: &fiveXX, gateway: &gateway))
    }

    @Test func gatewayErrorsCountOnly502To504AndConnectFailures() {
        let detection = OutlierDetection(consecutive5xxErrors: nil, consecutiveGatewayErrors: 2)
        var fiveXX = 0, gateway = 0
        #expect(!detection.record(.status(503), fiveXX: &fiveXX, gateway: &gateway))
        #expect(!detection.record(.status(500), fiveXX: &fiveXX, gateway: &gateway))  // not a gateway error: resets
        #expect(!detection.record(.connectFailure, fiveXX: &fiveXX, gateway: &gateway))
        #expect(detection.record(.status(504), fiveXX: &fiveXX, gateway: &gateway))
    }

    @Test(arguments: [(0, 10, 10, true), (1, 10, 10, false), (1, 10, 50, true), (5, 10, 50, false), (0, 1, 0, true)])
    func maxEjectionPercentAlwaysAllowsOne(ejected: Int, size: Int, percent: Int, expected: Bool) {
        let detection = OutlierDetection(consecutive5xxErrors: 1, consecutiveGatewayErrors: nil, maxEjectionPercent: percent)
        #expect(detection.mayEject(ejected: ejected, size: size) == expected)
    }

    /// baseEjectionTime × ejections in a row, capped at Envoy's 300 s unless the base itself is longer.
    @Test(arguments: [(30, 1, 30), (30, 3, 90), (30, 10, 300), (30, 50, 300), (400, 2, 400)])
    func ejectionTimeGrowsToTheCap(base: Int, count: Int, seconds: Int) {
        let detection = OutlierDetection(consecutive5xxErrors: 5, consecutiveGatewayErrors: nil, baseEjectionTime: .seconds(base))
        #expect(detection.ejectionTime(count) == .seconds(seconds))
    }

    /// One less per interval (10 s) once back for baseEjectionTime (30 s).
    @Test(arguments: [(0, 4), (29, 4), (30, 3), (39, 3), (40, 2), (60, 0), (600, 0)])
    func ejectionCountDecays(healthySeconds: Int, expected: Int) {
        let detection = OutlierDetection(consecutive5xxErrors: 5, consecutiveGatewayErrors: nil)
        #expect(detection.decayed(4, healthyFor: .seconds(healthySeconds)) == expected)
    }

    @Test func panicBelowMinHealthPercentOnly() {
        let never = OutlierDetection(consecutive5xxErrors: 5, consecutiveGatewayErrors: nil)
        #expect(!never.panics(healthy: 0, size: 3))  // Istio's default 0: all ejected is no healthy upstream
        let half = OutlierDetection(consecutive5xxErrors: 5, consecutiveGatewayErrors: nil, minHealthPercent: 50)
        #expect(half.panics(healthy: 1, size: 3) && !half.panics(healthy: 2, size: 4))
    }
}

@Suite struct ClusterLimitsTests {
    @Test func countsStopAtTheLimitAndComeBackDown() {
        let limits = ClusterLimits(ConnectionPoolSettings(maxRetries: 2, maxPendingRequests: 1, maxRequests: 3))
        #expect(limits.enterRequest() && limits.enterRequest() && limits.enterRequest())
        #expect(!limits.enterRequest())  // refused, and not counted
        #expect(limits.requests.load(ordering: .relaxed) == 3)
        limits.leaveRequest()
        #expect(limits.enterRequest())
        #expect(limits.enterPending() && !limits.enterPending())
        #expect(limits.enterRetry() && limits.enterRetry() && !limits.enterRetry())
    }

    @Test func noLimitCountsWithoutRefusing() {
        let limits = ClusterLimits(ConnectionPoolSettings(connectTimeout: .seconds(1)))
        #expect((0..<1000).allSatisfy { _ in limits.enterRequest() && limits.enterPending() })
        for _ in 0..<10_000 { limits.connectionOpened() }
        #expect(limits.mayOpenConnection)
    }

    @Test func connectionsAgainstMaxConnections() {
        let limits = ClusterLimits(ConnectionPoolSettings(maxConnections: 2))
        limits.connectionOpened()
        #expect(limits.mayOpenConnection)
        limits.connectionOpened()
        #expect(!limits.mayOpenConnection)
        limits.connectionClosed()
        #expect(limits.mayOpenConnection)
    }

    /// Every worker counts into the same object: concurrent entries never pass the limit.
    @Test func concurrentEntriesNeverPassTheLimit() async {
        let limits = ClusterLimits(ConnectionPoolSettings(maxRequests: 50))
        let admitted = await withTaskGroup(of: Int.self) { group in
            for _ in 0..<8 { group.addTask { (0..<1000).reduce(0) { n, _ in limits.enterRequest() ? n + 1 : n } } }
            return await group.reduce(0, +)
        }
        #expect(admitted == 50)
    }
}
