import EventLoop
import Logging
import Synchronization
import WaypointCore

/// Resolves the host names of ServiceEntries with `resolution: DNS` or `DNS_ROUND_ROBIN`, on a thread of its own
/// (never a worker or the main loop): A and AAAA queries over UDP to the name server, at once when a name
/// appears, then again when the answer's TTL runs out, kept within `minRefresh`...`maxRefresh` (Istio's DNS
/// refresh rate, 60 s, is the ceiling). A failure (no answer within 2 s, SERVFAIL, NXDOMAIN, a malformed or
/// truncated answer) keeps the addresses resolved before and retries with backoff (1 s doubling to 30 s). A
/// changed answer rings the main loop, which compiles it in (`addresses`).
///
/// Thread: `want` and `addresses` on the main thread; queries on its own. Ownership: the `Runtime`.
final class DNSResolver: @unchecked Sendable {
    // SAFETY: the mutable state is behind `state`'s mutex; `doorbell` is set on the main thread before the
    // resolving thread starts and never changed after (that thread only calls its thread-safe `send`).
    private struct State {
        /// The names the config needs, and when each is due.
        var due: [String: ContinuousClock.Instant] = [:]
        var failures: [String: Int] = [:]
        var resolved: [String: [String]] = [:]
        var running = false
    }
    private let state = Mutex(State())
    private var doorbell: AsyncWatcher?
    private unowned(unsafe) let loop: EventLoop
    private let logger: Logger
    private let server: SocketAddress
    private let minRefresh: Duration
    private let maxRefresh = Duration.seconds(60)
    /// Resolutions by result, for `waypoint_dns_resolutions_total`.
    let succeeded = Atomic<Int>(0)
    let failed = Atomic<Int>(0)

    /// Runs on the main loop after an answer changed.
    var onChange: (() -> Void)? {
        get { callback.body }
        set { callback.body = newValue }
    }
    private let callback = Callback()
    private final class Callback: @unchecked Sendable {
        // SAFETY: set and called on the main thread only.
        var body: (() -> Void)?
    }

    init(loop: EventLoop, logger: Logger, server: SocketAddress, minRefresh: Duration) {
        self.loop = loop
        self.logger = logger
        self.server = server
        self.minRefresh = minRefresh
    }

    /// The first `nameserver` of /etc/resolv.conf, port 53 (127.0.0.1 without one).
    static func systemNameServer() -> SocketAddress {
        let lines = (readTextFile("/etc/resolv.conf") ?? "").split(separator: "\n")
        for line in lines {
            let words = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            if words.count >= 2, words[0] == "nameserver", let address = SocketAddress(ip: String(words[1]), port: 53) { return address }
        }
        return SocketAddress(ip: "127.0.0.1", port: 53)!
    }

    /// The addresses resolved so far, by name.
    var addresses: [String: [String]] { state.withLock { $0.resolved } }

    /// Resolves `names` from now on (new ones at once) and forgets the others. Main thread, after start-up.
    func want(_ names: Set<String>) {
        if doorbell == nil && !names.isEmpty {
            let callback = callback
            doorbell = AsyncWatcher(loop: loop) { callback.body?() }
        }
        let start = state.withLock { state in
            for name in state.due.keys where !names.contains(name) {
                state.due[name] = nil
                state.resolved[name] = nil
                state.failures[name] = nil
            }
            for name in names where state.due[name] == nil { state.due[name] = .now }
            defer { state.running = state.running || !names.isEmpty }
            return !state.running && !names.isEmpty
        }
        if start { ControlThread.start(name: "dns") { self.run() } }
    }

    private func run() {
        while true {
            let next = state.withLock { state in state.due.filter { $0.value <= .now }.map(\.key).sorted().first }
            guard let name = next else {
                ControlThread.sleep(.milliseconds(100))
                continue
            }
            resolve(name)
        }
    }

    /// Both record types of `name`: the addresses and the smaller TTL, or why it failed.
    private func query(_ name: String) -> Result<(addresses: [String], ttl: UInt32), DNSMessage.Malformed> {
        var addresses: [String] = []
        var ttl = UInt32.max
        for type in [DNSMessage.RecordType.a, .aaaa] {
            let id = UInt16.random(in: 0...UInt16.max)
            guard let question = DNSMessage.query(id: id, name: name, type: type) else { return .failure(.init("not a DNS name")) }
            guard let bytes = Socket.datagramExchange(with: server, request: question, timeout: .seconds(2)) else {
                return .failure(.init("no answer from \(server) within 2 s"))
            }
            do {
                switch try DNSMessage.answer(bytes, id: id, name: name, type: type) {
                case .addresses(let found, let recordTTL):
                    addresses += found
                    if !found.isEmpty { ttl = min(ttl, recordTTL) }
                case .failed(let rcode):
                    return .failure(.init("RCODE \(rcode)\(rcode == 3 ? " (NXDOMAIN)" : rcode == 2 ? " (SERVFAIL)" : "")"))
                }
            } catch {
                return .failure(error)
            }
        }
        return .success((addresses, ttl))
    }

    private func resolve(_ name: String) {
        let result = query(name)
        let changed = state.withLock { state -> Bool in
            guard state.due[name] != nil else { return false }  // no longer wanted
            guard case .success(let answer) = result else {
                let failures = (state.failures[name] ?? 0) + 1
                state.failures[name] = failures
                state.due[name] = .now + .seconds(min(30, 1 << min(failures - 1, 5)))
                return false
            }
            state.failures[name] = nil
            let ttl = Duration.seconds(Int64(min(answer.ttl, UInt32(Int32.max))))
            state.due[name] = .now + min(max(ttl, minRefresh), maxRefresh)
            guard state.resolved[name] != answer.addresses else { return false }
            state.resolved[name] = answer.addresses
            return true
        }
        switch result {
        case .success(let answer):
            succeeded.add(1, ordering: .relaxed)
            if changed {
                logger.info("dns: \(name) is \(answer.addresses.isEmpty ? "no address" : answer.addresses.joined(separator: ", "))")
            }
        case .failure(let reason):
            failed.add(1, ordering: .relaxed)
            logger.warning("dns: cannot resolve \(name) (\(reason)); keeping the addresses resolved before, if any; retrying")
        }
        if changed { doorbell?.send() }
    }
}
