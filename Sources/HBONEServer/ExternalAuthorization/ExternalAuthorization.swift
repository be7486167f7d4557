import Filters
import WaypointCore

/// A worker's calls to external authorizers (CUSTOM AuthorizationPolicies): each check goes to an endpoint of
/// the authorizer's cluster, picked by its load balancer, over that endpoint's transport (plaintext, or an
/// HBONE tunnel for a mesh endpoint). Per endpoint, HTTP checks reuse kept-alive connections (one check at a
/// time each, as HTTP/1.1 allows) and gRPC checks share one HTTP/2 connection. The worker never blocks: the
/// exchange waits in `.authorizing` and hears the outcome through its call.
///
/// Thread: its worker's loop thread only. Ownership: the `ProxyServer`.
final class ExternalAuthorization {
    private unowned(unsafe) let server: ProxyServer
    /// Kept-alive HTTP check connections waiting for a check, by endpoint.
    private var idleHTTP: [SocketAddress: [HTTPCheckConnection]] = [:]
    /// HTTP check connections with a check in flight.
    private var busyHTTP: [ObjectIdentifier: HTTPCheckConnection] = [:]
    /// The HTTP/2 connections for gRPC checks, by endpoint: usually one; more while the newest is full, and
    /// ones that take no more calls (GOAWAY) stay until their last call ends.
    private var grpc: [SocketAddress: [GRPCCheckChannel]] = [:]

    init(server: ProxyServer) { self.server = server }

    /// Sends `check`'s `request` (its own, or with the request body added) on behalf of `exchange`; nil when it
    /// cannot even start (the authorizer's Service has no ready endpoint, or no socket could be had): the check failed.
    func ask(_ check: ExternalCheck, request: [UInt8], for exchange: Exchange) -> ExternalCheckCall? {
        let authorizer = check.authorizer
        guard authorizer.cluster >= 0, let endpoint = server.router.pickEndpoint(inCluster: authorizer.cluster),
            let pool = server.upstreams.pool(endpoint)
        else { return nil }
        let call = ExternalCheckCall(exchange: exchange)
        switch authorizer.api {
        case .http(let settings):
            var connection: HTTPCheckConnection? = nil
            while connection == nil, let idle = idleHTTP[pool.address]?.popLast() { if idle.isOpen { connection = idle } }
            if connection == nil, let stream = pool.openStream() {
                server.counters.upstreamConnectionsTotal.increment()
                connection = HTTPCheckConnection(stream: stream, endpoint: pool.address, owner: self)
            }
            guard let connection else { return nil }
            busyHTTP[ObjectIdentifier(connection)] = connection
            connection.send(request, settings: settings, call: call)
        case .grpc:
            let channel: GRPCCheckChannel
            if let open = grpc[pool.address]?.last(where: { $0.takesCalls }) {
                channel = open
            } else {
                guard let stream = pool.openStream(http2: true) else { return nil }
                server.counters.upstreamConnectionsTotal.increment()
                channel = GRPCCheckChannel(stream: stream, authority: authorizer.authority, timeout: authorizer.timeout)
                let address = pool.address
                channel.onClosed = { [unowned(unsafe) self, unowned(unsafe) channel] in
                    self.grpc[address]?.removeAll { $0 === channel }
                    self.server.releaseLater(channel)
                }
                grpc[address, default: []].append(channel)
            }
            guard channel.send(request, call: call) else { return nil }
        }
        return call
    }

    /// A connection's check ended: kept for the next one when it can carry another, else dropped.
    func checkEnded(_ connection: HTTPCheckConnection, reusable: Bool) {
        busyHTTP[ObjectIdentifier(connection)] = nil
        server.releaseLater(connection)
        guard reusable, !server.draining else { return connection.close() }
        idleHTTP[connection.endpoint, default: []].append(connection)
    }

    /// An idle connection was closed by the authorizer (or timed out).
    func idleClosed(_ connection: HTTPCheckConnection) {
        idleHTTP[connection.endpoint]?.removeAll { $0 === connection }
        server.releaseLater(connection)
    }
}

/// One check in flight, as its exchange sees it: the outcome reaches the exchange unless it was cancelled (the
/// exchange ended or gave up waiting), and a cancelled call lets its carrier drop the check.
///
/// Thread: its worker's loop thread only. Ownership: its exchange and its carrier, until it ends.
final class ExternalCheckCall {
    private unowned(unsafe) var exchange: Exchange?
    /// Told when the call is cancelled, so that it stops the check (closes its connection, resets its stream).
    var onCancel: (() -> Void)?

    init(exchange: Exchange) { self.exchange = exchange }

    var isCancelled: Bool { exchange == nil }

    /// The check's outcome, for the exchange (once; nothing after a cancel).
    func finish(_ outcome: ExternalAuthorizer.Outcome) {
        guard let exchange else { return }
        self.exchange = nil
        onCancel = nil
        exchange.checkAnswered(outcome)
    }

    func cancel() {
        guard exchange != nil else { return }
        exchange = nil
        let stop = onCancel
        onCancel = nil
        stop?()
    }
}
