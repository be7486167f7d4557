#if canImport(Glibc)
    import Glibc
#endif
import EventLoop
import WaypointCore
import HBONEServer
import Logging
import MeshIdentity
import Synchronization
import TLS
import WaypointConfig

/// The proxy process: config, workers, the admin listener, signals and reloads, all on the main thread's
/// default libev loop (nghttpx's connection handler). Workers run their own loops and never block on it.
///
/// Thread: main thread only. Ownership: `run` keeps it until the process exits.
final class Runtime {
    struct Options {
        var configPaths: [String]?
        var httpListen: SocketAddress
        /// The HBONE listener; nil when no certificate was given.
        var hboneListen: SocketAddress?
        /// The PROXY-protocol v2 listener (sandwich mode), if any.
        var proxyProtocolListen: SocketAddress? = nil
        var certificates: CertificateSource?
        var adminListen: SocketAddress
        /// Extra listeners serving only `/stats/prometheus` (Istio's 15020) and only `/healthz/ready` (15021), so
        /// the admin port (config dump) can stay on loopback.
        var statsListen: SocketAddress? = nil
        var healthListen: SocketAddress? = nil
        var workers: Int
        var namespace: String
        var drainTimeout: Duration
        var accessLog: Bool
        var settings = ProxySettings()
        var rootNamespace = "istio-system"
        var layeredAuthorization = true
        var hardenedDenyPaths = true
        /// Where the waypoint runs (locality load balancing), nil when not given.
        var locality: Locality?
        /// The Kubernetes API as a config source, when on.
        var kubernetes: KubernetesSource.Options?
        /// The HBONE certificate from the mesh's CA (istiod) instead of `certificates` files.
        var meshCA: IstioCA? = nil
    }

    private let options: Options
    private let logger: Logger
    private let loop = EventLoop.makeDefault()
    private var config: ConfigSource
    private var kubernetes: KubernetesSource?
    private var snapshot: Snapshot
    private var workers: [Worker] = []
    private var admin: AdminServer?
    private var publicEndpoints: [AdminServer] = []
    /// Where the stats-only and health-only listeners ended up ("off" when not configured), for the ready line.
    private var publicAddresses: [String] = ["off", "off"]
    private var watchers: [SignalWatcher] = []
    private var pollTimer: Timer?
    private var certificates: CertificateSource?
    private var meshCertificates: MeshCertificates?
    private var hboneListener: Listener?
    /// The bound HBONE socket waiting for the first certificate from the mesh's CA (nothing is accepted before).
    private var waitingHBONEFD: Int32?
    /// HBONE connections handed to each worker (compared with what it adopted, to count those in flight).
    private var assigned: [Int] = []
    private var drainTimer: Timer?
    private var drainTally: DrainTally?
    private var reloadsOK = 0
    private var reloadsFailed = 0
    private var draining = false
    private(set) var httpAddress: SocketAddress
    private(set) var adminAddress: SocketAddress
    private(set) var hboneAddress: SocketAddress?
    private(set) var proxyProtocolAddress: SocketAddress?

    /// Loads the config and binds every socket; throws a message for the user on failure.
    init(options: Options, logger: Logger) throws {
        var options = options
        options.settings.workers = options.workers
        self.options = options
        self.logger = logger
        config = ConfigSource(paths: options.configPaths, namespace: options.namespace)
        config.compiler.rootNamespace = options.rootNamespace
        config.compiler.layeredAuthorization = options.layeredAuthorization
        config.compiler.hardenedDenyPaths = options.hardenedDenyPaths
        config.compiler.locality = options.locality
        if let apiOptions = options.kubernetes {
            let source: KubernetesSource
            do {
                source = try KubernetesSource(options: apiOptions, loop: loop, logger: logger)
            } catch {
                throw StartupError("kubernetes: \(error)")
            }
            let store = source.store
            config.apiObjects = { store.objects() }
            config.compiler.gateway = apiOptions.gateway
            kubernetes = source
        }
        do {
            snapshot = try config.load()
        } catch {
            throw StartupError("invalid config:\n\(error)")
        }
        for warning in snapshot.warnings { logger.warning("\(warning)") }

        // Every worker binds its own socket (SO_REUSEPORT) to the same address; port 0 is resolved by the first.
        var http = options.httpListen
        var fds: [Int32] = []
        for _ in 0..<options.workers {
            let fd = try Self.bind(http)
            if http.port == 0, let bound = Socket.localAddress(fd) { http = bound }
            fds.append(fd)
        }
        httpAddress = http
        var proxyFDs: [Int32] = []
        if var address = options.proxyProtocolListen {
            for _ in 0..<options.workers {
                let fd = try Self.bind(address)
                if address.port == 0, let bound = Socket.localAddress(fd) { address = bound }
                proxyFDs.append(fd)
            }
            proxyProtocolAddress = address
        }
        let adminFD = try Self.bind(options.adminListen, reusePort: false)
        adminAddress = Socket.localAddress(adminFD) ?? options.adminListen

        var tls: TLSContexts? = nil
        certificates = options.certificates
        if var source = certificates, let address = options.hboneListen {
            do {
                tls = try source.load()
            } catch {
                throw StartupError("invalid HBONE certificate: \(error)")
            }
            certificates = source
            // SO_REUSEPORT so that a new process can take over the port during a rolling update.
            let fd = try Self.bind(address, reusePort: true)
            hboneAddress = Socket.localAddress(fd) ?? address
            hboneListener = Listener(loop: loop, fd: fd) { [unowned(unsafe) self] fd, peer in self.balance(fd, peer) }
        } else if let ca = options.meshCA, let address = options.hboneListen {
            let fd = try Self.bind(address, reusePort: true)
            hboneAddress = Socket.localAddress(fd) ?? address
            waitingHBONEFD = fd
            meshCertificates = MeshCertificates(
                ca: ca, trustDomain: options.settings.trustDomains.first ?? "cluster.local", loop: loop, logger: logger)
        }

        let tally = DrainTally(doorbell: AsyncWatcher(loop: loop) { [unowned(unsafe) self] in self.workerDrained() })
        drainTally = tally
        for (index, fd) in fds.enumerated() {
            workers.append(
                Worker(
                    id: index, snapshot: snapshot, listenFDs: [fd], proxyProtocolFDs: proxyFDs.isEmpty ? [] : [proxyFDs[index]], tls: tls,
                    settings: options.settings,
                    accessLog: options.accessLog, logger: logger
                ) { tally.workerDrained() })
        }
        assigned = Array(repeating: 0, count: workers.count)
        admin = AdminServer(loop: loop, fd: adminFD) { [unowned(unsafe) self] path in self.adminResponse(path) }
        for (index, (address, allowed)) in [
            (options.statsListen, ["/stats/prometheus", "/metrics"]),
            (options.healthListen, ["/healthz/ready"]),
        ].enumerated() {
            guard let address else { continue }
            let fd = try Self.bind(address, reusePort: false)
            publicAddresses[index] = (Socket.localAddress(fd) ?? address).description
            publicEndpoints.append(
                AdminServer(loop: loop, fd: fd) { [unowned(unsafe) self] path in
                    allowed.contains(path) ? self.adminResponse(path) : (404, "text/plain", "not found\n")
                })
        }
    }

    private static func bind(_ address: SocketAddress, reusePort: Bool = true) throws -> Int32 {
        do {
            return try Socket.listen(address, reusePort: reusePort)
        } catch {
            throw StartupError("cannot listen on \(address): \(error)")
        }
    }

    /// Starts the workers and runs the main loop until the process exits.
    func run() -> Never {
        signal(SIGPIPE, SIG_IGN)
        watchers = [
            SignalWatcher(loop: loop, signal: SIGHUP) { [unowned(unsafe) self] in self.reload(reason: "SIGHUP") },
            SignalWatcher(loop: loop, signal: SIGTERM) { [unowned(unsafe) self] in self.beginDrain(signal: "SIGTERM") },
            SignalWatcher(loop: loop, signal: SIGINT) { [unowned(unsafe) self] in self.beginDrain(signal: "SIGINT") },
        ]
        kubernetes?.onChange = { [unowned(unsafe) self] in self.reload(reason: "kubernetes") }
        if let kubernetes, let timeout = options.kubernetes?.syncTimeout {
            // Nothing is served before the first lists are in (or the timeout passed): the workers start then,
            // with the snapshot compiled from them; until then connections wait in the listen queues.
            kubernetes.onSynced = { [unowned(unsafe) self] in
                self.reload(reason: "kubernetes synced")
                self.startWorkers()
            }
            kubernetes.beginSync(timeout: timeout)
        } else {
            startWorkers()
        }
        meshCertificates?.onInstalled = { [unowned(unsafe) self] contexts in self.installCertificate(contexts) }
        meshCertificates?.start()
        if options.configPaths != nil || certificates != nil {
            let timer = Timer(loop: loop) { [unowned(unsafe) self] in
                if self.config.changed() { self.reload(reason: "files changed") }
                if self.certificates?.changed() == true { self.rotateCertificates() }
            }
            timer.scheduleRepeating(every: .seconds(1))
            pollTimer = timer
        }
        logger.info(
            "ready",
            metadata: [
                "http": "\(httpAddress)", "hbone": "\(hboneAddress?.description ?? "off")",
                "proxy_protocol": "\(proxyProtocolAddress?.description ?? "off")",
                "stats": "\(publicAddresses[0])", "health": "\(publicAddresses[1])", "admin": "\(adminAddress)",
                "workers": "\(workers.count)", "config.generation": "\(snapshot.generation)",
            ])
        loop.run()
        exit(0)
    }

    private var workersStarted = false

    private func startWorkers() {
        guard !workersStarted else { return }
        workersStarted = true
        for worker in workers { worker.start() }
    }

    // MARK: - Reload

    private func reload(reason: String) {
        guard !draining else { return }
        do {
            let next = try config.load(previous: snapshot)
            snapshot = next
            reloadsOK += 1
            for warning in next.warnings { logger.warning("\(warning)") }
            for worker in workers { worker.post(.replaceSnapshot(next)) }
            kubernetes?.swapped()
            logger.info("config reloaded", metadata: ["reason": "\(reason)", "config.generation": "\(next.generation)"])
        } catch {
            reloadsFailed += 1
            logger.error(
                "config reload rejected, keeping generation \(snapshot.generation):\n\(error)",
                metadata: ["reason": "\(reason)"])
        }
    }

    // MARK: - HBONE

    /// Hands an accepted HBONE connection to the worker with the fewest active tunnels (then the fewest
    /// connections): few long-lived connections carry up to 200 tunnels each, and kernel SO_REUSEPORT hashing
    /// could pile them on one worker (Envoy's waypoint needed ExactBalance for the same reason).
    private func balance(_ fd: Int32, _ peer: SocketAddress?) {
        guard !draining else { Socket.close(fd); return }
        var best = 0
        var bestScore = Int.max
        for (index, worker) in workers.enumerated() {
            let c = worker.counters
            let inFlight = assigned[index] - c.hboneConnectionsTotal.value
            let score = c.tunnelsActive.value * 1024 + c.hboneConnectionsActive.value + inFlight
            if score < bestScore { (best, bestScore) = (index, score) }
        }
        assigned[best] += 1
        workers[best].post(.adoptHBONE(fd: fd, peer: peer))
    }

    /// New certificate files: new connections use them; open connections keep the context they started with.
    private func rotateCertificates() {
        guard var source = certificates else { return }
        do {
            let context = try source.load()
            certificates = source
            for worker in workers { worker.post(.replaceTLS(context)) }
            logger.info("HBONE certificate reloaded")
        } catch {
            certificates = source
            logger.error("HBONE certificate reload rejected, keeping the current one: \(error)")
        }
    }

    /// A certificate from the mesh's CA: the workers use it for new handshakes; the first one opens the HBONE
    /// listener.
    private func installCertificate(_ contexts: TLSContexts) {
        guard !draining else { return }
        for worker in workers { worker.post(.replaceTLS(contexts)) }
        if let fd = waitingHBONEFD {
            waitingHBONEFD = nil
            hboneListener = Listener(loop: loop, fd: fd) { [unowned(unsafe) self] fd, peer in self.balance(fd, peer) }
        }
    }

    // MARK: - Drain

    private func beginDrain(signal: String) {
        guard !draining else { return }
        guard workersStarted else {
            logger.info("stopping before serving", metadata: ["signal": "\(signal)"])
            exit(0)
        }
        // The listener first: closing takes the connections already in its accept queue, which must still be
        // handed to workers (they are drained like the others once their handshake completes).
        hboneListener?.close()
        hboneListener = nil
        if let fd = waitingHBONEFD { Socket.close(fd) }
        waitingHBONEFD = nil
        draining = true
        logger.info("draining", metadata: ["signal": "\(signal)", "drain.timeout": "\(options.drainTimeout)"])
        for worker in workers { worker.post(.drain) }
        let timer = Timer(loop: loop) { [unowned(unsafe) self] in
            self.logger.warning("drain timeout expired; exiting with connections still open")
            exit(0)
        }
        timer.schedule(after: options.drainTimeout)
        drainTimer = timer
    }

    private func workerDrained() {
        if drainTally?.drained.load(ordering: .acquiring) == workers.count {
            logger.info("drained; exiting")
            exit(0)
        }
    }

    // MARK: - Admin

    private func adminResponse(_ path: String) -> (Int, String, String) {
        switch path {
        case "/healthz/ready":
            if draining { return (503, "text/plain", "draining\n") }
            if let waiting = kubernetes?.waitingFor { return (503, "text/plain", waiting + "\n") }
            if let meshCertificates, !meshCertificates.isServing { return (503, "text/plain", meshCertificates.notReadyReason + "\n") }
            return (200, "text/plain", "ready\n")
        case "/stats/prometheus", "/metrics":
            return (200, "text/plain; version=0.0.4", metrics())
        case "/config_dump":
            guard kubernetes != nil || meshCertificates != nil, case .object(var entries) = snapshot.dumpValue else {
                return (200, "application/json", snapshot.dump + "\n")
            }
            if let meshCertificates { entries.append(("certificate", meshCertificates.dumpValue)) }
            guard let kubernetes else { return (200, "application/json", JSONValue.object(entries).rendered() + "\n") }
            // Which objects came from the API, at which resourceVersion (the files are listed by `waypoint check`).
            entries.append(
                (
                    "kubernetesObjects",
                    .array(
                        kubernetes.store.objects().map { object in
                            let metadata = object["metadata"]
                            return .object([
                                ("kind", .string(object["kind"]?.string ?? "")),
                                ("namespace", .string(metadata?["namespace"]?.string ?? "")),
                                ("name", .string(metadata?["name"]?.string ?? "")),
                                ("resourceVersion", .string(metadata?["resourceVersion"]?.string ?? "")),
                            ])
                        })
                ))
            return (200, "application/json", JSONValue.object(entries).rendered() + "\n")
        default:
            return (404, "text/plain", "not found\n")
        }
    }

    private func metrics() -> String {
        func sum(_ counter: (WorkerCounters) -> Int) -> Int { workers.reduce(0) { $0 + counter($1.counters) } }
        var text = ""
        func metric(_ name: String, _ type: String, _ help: String, _ samples: [(String, Int)]) {
            text += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n"
            for (labels, value) in samples { text += "\(name)\(labels) \(value)\n" }
        }
        metric(
            "waypoint_downstream_connections_total", "counter", "Downstream connections accepted.",
            [("", sum { $0.downstreamConnectionsTotal.value })])
        metric(
            "waypoint_downstream_connections_active", "gauge", "Downstream connections open now.",
            [("", sum { $0.downstreamConnectionsActive.value })])
        metric(
            "waypoint_downstream_requests_total", "counter", "Responses sent downstream, by status class.",
            [
                ("{status_class=\"1xx\"}", sum { $0.responses1xx.value }),
                ("{status_class=\"2xx\"}", sum { $0.responses2xx.value }),
                ("{status_class=\"3xx\"}", sum { $0.responses3xx.value }),
                ("{status_class=\"4xx\"}", sum { $0.responses4xx.value }),
                ("{status_class=\"5xx\"}", sum { $0.responses5xx.value }),
            ])
        metric(
            "waypoint_upstream_connections_total", "counter", "Upstream connections opened.",
            [("", sum { $0.upstreamConnectionsTotal.value })])
        metric(
            "waypoint_upstream_connect_failures_total", "counter", "Upstream connects that failed or timed out.",
            [("", sum { $0.upstreamConnectFailures.value })])
        metric(
            "waypoint_upstream_resets_total", "counter", "Responses cut off by an upstream failure after their head was sent.",
            [("", sum { $0.upstreamResetsMidResponse.value })])
        metric(
            "waypoint_hbone_connections_total", "counter", "HBONE connections accepted.",
            [("", sum { $0.hboneConnectionsTotal.value })])
        metric(
            "waypoint_hbone_connections_active", "gauge", "HBONE connections open now.",
            [("", sum { $0.hboneConnectionsActive.value })])
        metric(
            "waypoint_tls_handshakes_total", "counter", "HBONE TLS handshakes, by result and failure reason.",
            [("{result=\"ok\"}", sum { $0.handshakesOK.value })]
                + WorkerCounters.handshakeFailureReasons.enumerated().map { index, reason in
                    ("{result=\"failed\",reason=\"\(reason)\"}", sum { $0.handshakeFailures.value(index) })
                })
        metric("waypoint_tunnels_active", "gauge", "HBONE tunnels open now.", [("", sum { $0.tunnelsActive.value })])
        metric(
            "waypoint_worker_tunnels_active", "gauge", "HBONE tunnels open now, per worker (balance).",
            workers.map { ("{worker=\"\($0.id)\"}", $0.counters.tunnelsActive.value) })
        metric("waypoint_tunnels_total", "counter", "HBONE tunnels opened.", [("", sum { $0.tunnelsTotal.value })])
        metric(
            "waypoint_tunnels_refused_total", "counter", "CONNECT streams refused, by reason.",
            WorkerCounters.tunnelRefusalReasons.enumerated().map { index, reason in
                ("{reason=\"\(reason)\"}", sum { $0.tunnelRefusals.value(index) })
            })
        metric(
            "waypoint_tunnel_bytes_total", "counter", "Payload bytes through HBONE tunnels, by direction.",
            [
                ("{direction=\"received\"}", sum { $0.tunnelBytesReceived.value }),
                ("{direction=\"sent\"}", sum { $0.tunnelBytesSent.value }),
            ])
        metric(
            "waypoint_proxy_protocol_rejected_total", "counter",
            "PROXY-protocol connections closed for a missing or bad header, identity or destination.",
            [("", sum { $0.proxyHeaderErrors.value })])
        metric(
            "waypoint_hbone_keepalive_timeouts_total", "counter", "HBONE connections closed for an unanswered PING.",
            [("", sum { $0.keepaliveTimeouts.value })])
        metric(
            "waypoint_hbone_preface_timeouts_total", "counter", "HBONE connections closed for no HTTP/2 preface after the TLS handshake.",
            [("", sum { $0.prefaceTimeouts.value })])
        metric(
            "waypoint_http2_protocol_errors_total", "counter", "HBONE connections closed for a protocol error or flood.",
            [("", sum { $0.http2ProtocolErrors.value })])
        metric(
            "waypoint_upstream_retries_total", "counter", "Retries started, by what the failed try ended with.",
            WorkerCounters.retryReasons.enumerated().map { index, reason in
                ("{reason=\"\(reason)\"}", sum { $0.retries.value(index) })
            })
        metric(
            "waypoint_upstream_retries_succeeded_total", "counter", "Exchanges answered 2xx-4xx after at least one retry.",
            [("", sum { $0.retriesSucceeded.value })])
        metric(
            "waypoint_upstream_retry_budget_exhausted_total", "counter", "Retries not made because the retry budget was spent.",
            [("", sum { $0.retryBudgetExhausted.value })])
        metric(
            "waypoint_upstream_retry_overflow_total", "counter",
            "Retries not made because the backend's DestinationRule maxRetries were in flight.",
            [("", sum { $0.retryOverflow.value })])
        metric(
            "waypoint_upstream_overflow_total", "counter",
            "Requests refused because the backend's connection limit and pending queue were full.",
            [("", sum { $0.upstreamOverflow.value })])
        metric(
            "waypoint_outlier_ejections_total", "counter", "Endpoints ejected by outlier detection (DestinationRule).",
            [("", sum { $0.outlierEjections.value })])
        metric(
            "waypoint_mirror_requests_total", "counter", "Request copies for RequestMirror / VirtualService mirror, by result.",
            [
                ("{result=\"sent\"}", sum { $0.mirrorRequests.value }),
                ("{result=\"skipped\"}", sum { $0.mirrorsSkipped.value }),
            ])
        metric(
            "waypoint_fault_aborts_total", "counter", "Requests answered by a VirtualService fault abort.",
            [("", sum { $0.faultAborts.value })])
        metric(
            "waypoint_fault_delays_total", "counter", "Requests held back by a VirtualService fault delay.",
            [("", sum { $0.faultDelays.value })])
        metric(
            "waypoint_authorization_decisions_total", "counter", "Authorization decisions, by result.",
            [
                ("{result=\"allow\"}", sum { $0.authorizationAllowed.value }),
                ("{result=\"deny\"}", sum { $0.authorizationDenied.value }),
            ])
        var byPolicy: [String: Int] = ["(no ALLOW policy matched)|deny": sum { $0.authorizationNoAllowMatched.value }]
        for worker in workers { byPolicy.merge(worker.counters.policyDecisionTotals(), uniquingKeysWith: +) }
        metric(
            "waypoint_authorization_policy_decisions_total", "counter", "Decisions made by a policy (or by no ALLOW policy matching).",
            byPolicy.sorted { $0.key < $1.key }.map { key, value in
                let parts = key.split(separator: "|", maxSplits: 1)
                return ("{policy=\"\(parts[0])\",result=\"\(parts.count > 1 ? parts[1] : "")\"}", value)
            })
        metric(
            "waypoint_config_reloads_total", "counter", "Config reloads, by result.",
            [("{result=\"ok\"}", reloadsOK), ("{result=\"failed\"}", reloadsFailed)])
        metric("waypoint_config_generation", "gauge", "Generation of the active config.", [("", Int(snapshot.generation))])
        let (parse, compile) = config.timings
        text += "# HELP waypoint_config_load_seconds How long the last config load took, by phase.\n"
        text += "# TYPE waypoint_config_load_seconds gauge\n"
        text += "waypoint_config_load_seconds{phase=\"parse\"} \(parse.seconds)\n"
        text += "waypoint_config_load_seconds{phase=\"compile\"} \(compile.seconds)\n"
        if let kubernetes {
            metric(
                "waypoint_kubernetes_objects", "gauge", "Objects the Kubernetes API source holds, by kind and namespace.",
                kubernetes.store.counts().map { kind, count in
                    let parts = kind.split(separator: " ")
                    return ("{kind=\"\(parts[0])\",namespace=\"\(parts.count > 1 ? parts[1] : "")\"}", count)
                })
            metric(
                "waypoint_kubernetes_watch_restarts_total", "counter", "Watches started again, by kind, namespace and why.",
                kubernetes.store.restarts().map { kind, reason, count in
                    ("{kind=\"\(kind.kind)\",namespace=\"\(kind.namespace)\",reason=\"\(reason.rawValue)\"}", count)
                })
            text += "# HELP waypoint_kubernetes_last_event_timestamp_seconds When the API server last sent a list page or event.\n"
            text += "# TYPE waypoint_kubernetes_last_event_timestamp_seconds gauge\n"
            text += "waypoint_kubernetes_last_event_timestamp_seconds \(kubernetes.store.lastEvent)\n"
            text += "# HELP waypoint_kubernetes_event_to_swap_seconds From a change reaching the waypoint to the snapshot swap with it.\n"
            text += "# TYPE waypoint_kubernetes_event_to_swap_seconds histogram\n"
            text += kubernetes.eventToSwap.lines("waypoint_kubernetes_event_to_swap_seconds")
        }
        metric("waypoint_workers", "gauge", "Worker threads.", [("", workers.count)])
        if let tracer = options.settings.tracer {
            metric(
                "waypoint_trace_spans_total", "counter", "Spans of traced requests, by what became of them.",
                [
                    ("{result=\"exported\"}", tracer.exported.value), ("{result=\"dropped\"}", tracer.dropped.value),
                ])
        }
        text += meshCertificates?.metricsText ?? ""
        text += IstioMetrics.prometheusText(workers.map(\.counters.istio))
        return text
    }
}

/// Counts workers that finished draining and rings the main loop. Thread: any.
private final class DrainTally: Sendable {
    let drained = Atomic<Int>(0)
    let doorbell: AsyncWatcher

    init(doorbell: AsyncWatcher) { self.doorbell = doorbell }

    func workerDrained() {
        drained.add(1, ordering: .releasing)
        doorbell.send()
    }
}

/// A start-up failure, printed to the user as is.
struct StartupError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
