import EventLoop
import Logging
import Synchronization
import WaypointCore

/// The addresses of ServiceEntry host names (`resolution: DNS` or `DNS_ROUND_ROBIN`), kept by a
/// `BackgroundRefresher`: A and AAAA queries over UDP to the name server (asked again over TCP when an answer
/// is truncated), at once when a name appears, then again when the answer's TTL runs out, kept within
/// `minRefresh`...60 s (Istio's DNS refresh rate is the ceiling). A failure (no answer within 2 s, SERVFAIL,
/// NXDOMAIN, a malformed answer) keeps the addresses resolved before and retries (1 s doubling to 30 s). A
/// changed answer rings the main loop.
enum DNSResolver {
    /// Resolutions by result, for `waypoint_dns_resolutions_total`.
    final class Counters: Sendable {
        let succeeded = Atomic<Int>(0)
        let failed = Atomic<Int>(0)
    }

    static func refresher(
        loop: EventLoop, logger: Logger, server: SocketAddress, minRefresh: Duration, counters: Counters
    ) -> BackgroundRefresher<[String]> {
        BackgroundRefresher(
            name: "dns", loop: loop, maxBackoff: 30,
            fetch: { name in
                switch query(name, server: server) {
                case .success(let (addresses, ttl)):
                    let seconds = Duration.seconds(Int64(min(ttl, UInt32(Int32.max))))
                    return .fetched(addresses, refreshAfter: min(max(seconds, minRefresh), .seconds(60)))
                case .failure(let reason):
                    return .failed(reason.description)
                }
            },
            report: { name, outcome, changed in
                switch outcome {
                case .fetched(let addresses, _):
                    counters.succeeded.add(1, ordering: .relaxed)
                    if changed { logger.info("dns: \(name) is \(addresses.isEmpty ? "no address" : addresses.joined(separator: ", "))") }
                case .failed(let reason):
                    counters.failed.add(1, ordering: .relaxed)
                    logger.warning("dns: cannot resolve \(name) (\(reason)); keeping the addresses resolved before, if any; retrying")
                }
            })
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

    /// Both record types of `name`: the addresses and the smaller TTL of those found, or why it failed.
    static func query(_ name: String, server: SocketAddress) -> Result<([String], UInt32), DNSMessage.Malformed> {
        var addresses: [String] = []
        var ttl = UInt32.max
        for type in [DNSMessage.RecordType.a, .aaaa] {
            let id = UInt16.random(in: 0...UInt16.max)
            guard let question = DNSMessage.query(id: id, name: name, type: type) else { return .failure(.init("not a DNS name")) }
            guard var bytes = Socket.datagramExchange(with: server, request: question, timeout: .seconds(2)) else {
                return .failure(.init("no answer from \(server) within 2 s"))
            }
            if DNSMessage.isTruncated(bytes) {
                // Too large for a datagram: the same question over TCP (RFC 7766).
                guard
                    let framed = Socket.blockingExchange(
                        with: server, request: DNSMessage.tcpFramed(question), timeout: .seconds(2), length: DNSMessage.tcpFramedLength)
                else { return .failure(.init("truncated over UDP, and no answer from \(server) over TCP within 2 s")) }
                bytes = Array(framed.dropFirst(2))
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
        return .success((addresses, ttl == .max ? 0 : ttl))
    }
}
