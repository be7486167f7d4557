#if canImport(Glibc)
    import Glibc
#endif
import EventLoop
import WaypointCore
import HBONEServer
import SnapshotRouting
import Logging
import Synchronization
import TLS
import WaypointConfig

/// What the main thread tells a worker.
enum WorkerEvent: Sendable {
    case replaceSnapshot(Snapshot)
    /// A new certificate: new HBONE connections use it, open ones keep theirs.
    case replaceTLS(TLSContexts)
    /// An accepted HBONE connection, balanced to this worker.
    case adoptHBONE(fd: Int32, peer: SocketAddress?)
    case drain
}

/// One worker thread: a libev loop running a `ProxyServer` on its own SO_REUSEPORT listening sockets, plus an
/// inbox the main thread posts to. Config swaps happen on the worker's own thread, so requests read the
/// snapshot without locks or atomics.
///
/// Thread: `post` and `counters` from any thread; everything else on the worker's thread once started.
/// Ownership: the `Runtime` keeps every worker for the life of the process.
final class Worker: @unchecked Sendable {
    // SAFETY: after `start()`, other threads call only `post` (Mutex + ev_async_send, thread-safe) and read
    // `counters` (atomics); all other state is confined to the worker thread, which the start handed it to.
    let id: Int
    let counters: WorkerCounters
    private let loop: EventLoop
    private let server: ProxyServer
    private let router: SnapshotRouter
    private let inbox = Mutex<[WorkerEvent]>([])
    private var doorbell: AsyncWatcher!
    private let onDrained: @Sendable () -> Void
    private let logger: Logger

    init(
        id: Int, snapshot: Snapshot, listenFDs: [Int32], proxyProtocolFDs: [Int32], tls: TLSContexts?, settings: ProxySettings,
        accessLog: Bool,
        logger: Logger, onDrained: @escaping @Sendable () -> Void
    ) {
        var logger = logger
        logger[metadataKey: "worker.id"] = "\(id)"
        self.id = id
        self.logger = logger
        self.onDrained = onDrained
        loop = EventLoop()
        var seed = SystemRandomNumberGenerator()
        counters = WorkerCounters(istioSeries: settings.istioMetricsMaxSeries)
        router = SnapshotRouter(snapshot: snapshot, seed: seed.next(), counters: counters) { [unowned(unsafe) loop] in loop.now }
        server = ProxyServer(loop: loop, router: router, settings: settings, accessLog: accessLog, logger: logger, counters: counters)
        router.requestsInFlight = { [unowned(unsafe) server] endpoint in server.upstreams.requestsInFlight(endpoint) }
        server.updateEndpoints(snapshot.upstreamEndpoints)
        server.tlsContext = tls?.server
        server.clientTLSContext = tls?.client
        for fd in listenFDs { server.listen(fd: fd) }
        for fd in proxyProtocolFDs { server.listenProxyProtocol(fd: fd) }
        doorbell = AsyncWatcher(loop: loop) { [unowned(unsafe) self] in self.drainInbox() }
    }

    /// Starts the worker thread; what was posted before applies first (the thread does not exist yet, so it is
    /// applied here).
    func start() {
        drainInbox()
        var thread = pthread_t()
        let context = Unmanaged.passRetained(self).toOpaque()
        let rc = pthread_create(&thread, nil, runWorkerThread, context)
        precondition(rc == 0, "pthread_create failed: \(rc)")
        pthread_detach(thread)
    }

    /// Any thread.
    func post(_ event: WorkerEvent) {
        inbox.withLock { $0.append(event) }
        doorbell.send()
    }

    fileprivate func run() {
        nameThisThread("worker-\(id)")
        loop.run()
    }

    private func drainInbox() {
        let events = inbox.withLock { queue in
            defer { queue.removeAll(keepingCapacity: true) }
            return queue
        }
        for event in events {
            switch event {
            case .replaceSnapshot(let next):
                // In-flight exchanges already hold their endpoint; new requests see the new snapshot.
                if next.lineage == router.snapshot.lineage {
                    server.patchEndpoints(next.upstreamEndpoints, revised: next.revisedEndpoints)
                } else {
                    server.updateEndpoints(next.upstreamEndpoints)
                }
                router.replace(next)
                server.routingGeneration = next.generation
                logger.debug("serving config generation \(next.generation)")
            case .replaceTLS(let contexts):
                server.tlsContext = contexts.server
                server.clientTLSContext = contexts.client
            case .adoptHBONE(let fd, let peer):
                server.adoptHBONE(fd: fd, peer: peer)
            case .drain:
                server.onDrained = { [onDrained] in onDrained() }
                server.beginDrain()
                logger.debug("draining \(server.activeConnections) connections")
            }
        }
    }
}

/// pthread entry point: a global function, not a closure, so it carries no actor isolation (FACTS §3).
private func runWorkerThread(_ context: UnsafeMutableRawPointer?) -> UnsafeMutableRawPointer? {
    let worker = Unmanaged<Worker>.fromOpaque(context!).takeRetainedValue()
    worker.run()
    return nil
}

extension Snapshot {
    /// The endpoints as a worker's upstream side takes them.
    fileprivate var upstreamEndpoints: UpstreamEndpoints {
        UpstreamEndpoints(
            addresses: endpoints, transports: endpointTransports, peers: peerAccounts, workloads: workloads, workloadOf: endpointWorkloads,
            tls: upstreamTLS)
    }
}
