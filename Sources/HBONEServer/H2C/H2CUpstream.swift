import EventLoop
import Filters
import HTTP2
import WaypointCore

/// An HTTP/2 (prior knowledge) connection to one upstream endpoint, multiplexing the h2c exchanges a worker
/// sends there; over a plaintext socket or, for a mesh endpoint, an HBONE tunnel.
///
/// Thread: its worker's loop thread only. Ownership: its `UpstreamPool`, until the connection closes. It holds
/// its pool strongly: a reload can retire the pool while exchanges still use the connection, which then closes
/// when the last of them ends.
final class H2CUpstream: HTTP2SessionDelegate {
    private let pool: UpstreamPool
    /// Closing once its last exchange ends: its pool was retired, or it carried `maxStreams`.
    private var retiring = false
    /// DestinationRule `maxRequestsPerConnection`: streams this connection may carry in all (nil: no limit).
    private let maxStreams: Int?
    private var streamsStarted = 0
    private var channel: HTTP2Channel!
    private var exchanges: [Int32: H2CExchange] = [:]
    /// Owners of the exchanges (downstream sessions, or the mirror sink), by upstream stream.
    private var owners: [Int32: any H2CExchangeOwner] = [:]
    private(set) var closed = false
    var onClosed: (() -> Void)?

    init(stream: any ByteStream, pool: UpstreamPool, maxStreams: Int? = nil) {
        self.pool = pool
        self.maxStreams = maxStreams
        channel = HTTP2Channel(stream: stream, role: .client, delegate: self)
        channel.onClosed = { [unowned(unsafe) self] in self.channelClosed() }
    }

    var canTakeStream: Bool {
        !closed && !retiring && channel.session.acceptsNewRequests && exchanges.count < min(100, channel.session.peerMaxConcurrentStreams)
    }

    func start(_ exchange: H2CExchange, fields: [(String, String)], owner: any H2CExchangeOwner) {
        guard let id = channel.session.request(headers: fields, body: true) else {
            return owner.upstreamFailed(exchange, .refusedStream)
        }
        exchange.upstreamID = id
        exchange.upstream = self
        exchanges[id] = exchange
        owners[id] = owner
        pool.requestsInFlight += 1
        streamsStarted += 1
        if let maxStreams, streamsStarted >= maxStreams { retiring = true }  // spent: closes after its last stream
        channel.flush()
    }

    /// The pool was retired: close once no exchange uses the connection.
    func retire() {
        retiring = true
        closeIfRetired()
    }

    private func closeIfRetired() {
        if retiring && exchanges.isEmpty { channel.close() }
    }

    func requestDataReady(_ exchange: H2CExchange) {
        channel.session.resume(stream: exchange.upstreamID)
        channel.flush()
    }

    func responseConsumed(_ exchange: H2CExchange, _ count: Int) {
        channel.session.consume(stream: exchange.upstreamID, count)
        channel.flush()
    }

    /// The downstream went away: reset the upstream stream.
    func cancel(_ exchange: H2CExchange) {
        exchange.upstream = nil
        guard exchanges.removeValue(forKey: exchange.upstreamID) != nil else { return }
        owners[exchange.upstreamID] = nil
        pool.requestsInFlight -= 1
        channel.session.reset(stream: exchange.upstreamID, code: .cancel)
        channel.flush()
        closeIfRetired()
    }

    private func channelClosed() {
        guard !closed else { return }
        closed = true
        let failed = exchanges
        let failedOwners = owners
        exchanges.removeAll()
        owners.removeAll()
        pool.requestsInFlight -= failed.count
        let outcome: RetryPolicy.Outcome = channel.heardFromPeer ? .reset : .connectFailed
        for (id, exchange) in failed { failedOwners[id]?.upstreamFailed(exchange, outcome) }
        pool.releaseLater(self)
        let callback = onClosed
        onClosed = nil
        callback?()
    }

    // MARK: HTTP2SessionDelegate (upstream side)

    func http2BeginHeaders(stream: Int32) {}

    func http2Header(stream: Int32, name: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer) {
        guard let exchange = exchanges[stream] else { return }
        let field = (String(decoding: name, as: UTF8.self), String(decoding: value, as: UTF8.self))
        if exchange.responseStarted { exchange.trailers.append(field) } else { exchange.responseFields.append(field) }
    }

    func http2HeadersComplete(stream: Int32, endStream: Bool) {
        guard let exchange = exchanges[stream], let owner = owners[stream] else { return }
        if !exchange.responseStarted {
            if exchange.responseFields.first(where: { $0.0 == ":status" }).map({ $0.1.hasPrefix("1") }) == true {
                exchange.responseFields.removeAll()  // interim (1xx) responses are not passed on
                return
            }
            exchange.responseEnded = endStream
            owner.responseHeaders(exchange)
            guard exchange.upstream === self else { return }  // the owner retries it elsewhere
        }
        if endStream {
            exchange.responseEnded = true
            owner.responseDataReady(exchange)
        }
    }

    func http2Data(stream: Int32, _ bytes: UnsafeRawBufferPointer) {
        guard let exchange = exchanges[stream], let owner = owners[stream] else {
            channel.session.consume(stream: stream, bytes.count)
            return
        }
        exchange.responseBody.append(bytes)
        owner.responseDataReady(exchange)
    }

    func http2RemoteEnded(stream: Int32) {
        guard let exchange = exchanges[stream], let owner = owners[stream] else { return }
        exchange.responseEnded = true
        owner.responseDataReady(exchange)
    }

    func http2StreamClosed(stream: Int32, errorCode: UInt32) {
        guard let exchange = exchanges.removeValue(forKey: stream), let owner = owners.removeValue(forKey: stream) else { return }
        pool.requestsInFlight -= 1
        exchange.upstream = nil
        if errorCode == HTTP2ErrorCode.refusedStream.rawValue {
            owner.upstreamFailed(exchange, .refusedStream)
        } else if errorCode != 0 || !exchange.responseEnded {
            owner.upstreamFailed(exchange, .reset)
        }
        closeIfRetired()
    }

    func http2ReadData(stream: Int32, into buffer: UnsafeMutableRawBufferPointer) -> HTTP2DataChunk {
        guard let exchange = exchanges[stream] else { return .bytes(0, end: true) }
        let n = exchange.requestBody.move(into: buffer)
        if n > 0 {
            exchange.sentInAttempt += n
            let credit = exchange.sentInAttempt - exchange.credited
            if credit > 0 {
                exchange.credited += credit
                owners[stream]?.requestConsumed(exchange, credit)
            }
        }
        if exchange.requestBody.isEmpty && exchange.requestEnded { return .bytes(n, end: true) }
        return n > 0 ? .bytes(n, end: false) : .deferred
    }

    func http2PingAcknowledged() {}
}
