import EventLoop
import Synchronization
import WaypointCore
#if canImport(Glibc)
    import Glibc
#endif

/// The span of one traced request, exported as OTLP's JSON encoding spells it once the request ends.
/// A class: the data plane keeps an optional one per exchange, and a nil reference costs nothing to pass around.
final class Span {
    let context: TraceContext
    let name: String
    let start: Double
    var end = 0.0
    var attributes: [(String, String)]
    var status = 0

    init(context: TraceContext, name: String, start: Double, attributes: [(String, String)]) {
        self.context = context
        self.name = name
        self.start = start
        self.attributes = attributes
    }

    func json() -> String {
        func hex(_ v: UInt64) -> String { let s = String(v, radix: 16); return String(repeating: "0", count: 16 - s.count) + s }
        func nanos(_ t: Double) -> String { String(UInt64((t * 1e9).rounded())) }
        var text = "{\"traceId\":\"\(hex(context.traceHigh))\(hex(context.traceLow))\",\"spanId\":\"\(hex(context.span))\","
        if context.parent != 0 { text += "\"parentSpanId\":\"\(hex(context.parent))\"," }
        text += "\"name\":\(quote(name)),\"kind\":2,\"startTimeUnixNano\":\"\(nanos(start))\",\"endTimeUnixNano\":\"\(nanos(end))\","
        text +=
            "\"attributes\":["
            + attributes.map { "{\"key\":\(quote($0.0)),\"value\":{\"stringValue\":\(quote($0.1))}}" }.joined(separator: ",")
        text += ",{\"key\":\"http.status_code\",\"value\":{\"intValue\":\"\(status)\"}}],"
        text += "\"status\":{\"code\":\(status >= 500 || status == 0 ? 2 : 0)}}"
        return text
    }

    private func quote(_ s: String) -> String {
        var out = "\""
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case _ where scalar.value < 0x20:
                out += "\\u" + String(repeating: "0", count: 4 - String(scalar.value, radix: 16).count) + String(scalar.value, radix: 16)
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }
}

/// Exports finished spans as OTLP/HTTP JSON (`POST /v1/traces`) from a thread of its own, in batches, so the
/// workers only append to a queue (a lock per traced request, never per request). When the collector is slow
/// or away, spans beyond `maxQueued` are dropped and counted, never waited for.
///
/// Thread: `submit` from workers; the export thread runs for the life of the process. Ownership: the runtime.
public final class SpanExporter: @unchecked Sendable {
    // SAFETY: the queue is behind a mutex; the settings are immutable; counters are atomics.
    public let endpoint: SocketAddress
    public let serviceName: String
    public let sampleRate: Double
    private let queue = Mutex<[String]>([])
    static let maxQueued = 8192
    public let exported = Atomic<Int>(0)
    public let dropped = Atomic<Int>(0)

    /// `sampleRate`: percent of requests without an incoming sampling decision that are traced.
    public init(endpoint: SocketAddress, serviceName: String, sampleRate: Double) {
        self.endpoint = endpoint
        self.serviceName = serviceName
        self.sampleRate = sampleRate
    }

    func submit(_ span: Span) {
        let json = span.json()
        let accepted = queue.withLock { spans -> Bool in
            guard spans.count < Self.maxQueued else { return false }
            spans.append(json)
            return true
        }
        if !accepted { dropped.increment() }
    }

    /// Starts the export thread: every `interval`, whatever is queued goes out in one request.
    public func start(interval: Duration = .milliseconds(500)) {
        self.interval = interval
        let box = Unmanaged.passRetained(self)
        var thread = pthread_t()
        let rc = pthread_create(
            &thread, nil,
            { context in
                let exporter = Unmanaged<SpanExporter>.fromOpaque(context!).takeRetainedValue()
                exporter.run()  // never returns
            }, box.toOpaque())
        precondition(rc == 0, "pthread_create failed: \(rc)")
        pthread_detach(thread)
    }

    private var interval: Duration = .milliseconds(500)

    private func run() -> Never {
        while true {
            let (seconds, attoseconds) = interval.components
            usleep(UInt32(seconds) * 1_000_000 + UInt32(attoseconds / 1_000_000_000_000))
            let batch = queue.withLock { spans -> [String] in
                defer { spans.removeAll(keepingCapacity: true) }
                return spans
            }
            guard !batch.isEmpty else { continue }
            let body =
                "{\"resourceSpans\":[{\"resource\":{\"attributes\":[{\"key\":\"service.name\",\"value\":{\"stringValue\":\"\(serviceName)\"}}]},"
                + "\"scopeSpans\":[{\"scope\":{\"name\":\"waypoint\"},\"spans\":[" + batch.joined(separator: ",") + "]}]}]}"
            let request =
                "POST /v1/traces HTTP/1.1\r\nhost: \(endpoint)\r\ncontent-type: application/json\r\ncontent-length: \(body.utf8.count)\r\nconnection: close\r\n\r\n"
                + body
            let response = Socket.blockingExchange(with: endpoint, request: Array(request.utf8), timeout: .seconds(5))
            if let response, response.starts(with: Array("HTTP/1.1 2".utf8)) || response.starts(with: Array("HTTP/1.0 2".utf8)) {
                exported.increment(by: batch.count)
            } else {
                dropped.increment(by: batch.count)
            }
        }
    }
}
