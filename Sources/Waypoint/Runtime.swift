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
        /// This waypoint's Gateway (`--gateway`, in `namespace`).
        var gateway = "waypoint"
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
        /// How often RequestAuthentication `jwksUri` key sets are fetched again.
        var jwksRefresh = Duration.seconds(20 * 60)
        /// The name server for ServiceEntry DNS resolution (nil: /etc/resolv.conf's), and its refresh floor.
        var dnsServer: SocketAddress?
        var dnsMinRefresh = Duration.seconds(5)
        /// The HBONE certificate from the mesh's CA (istiod) instead of `certificates` files.
        var meshCA: IstioCA? = nil
    }

    let options: Options
    private let logger: Logger
    private(set) var config: ConfigSource
    private(set) var kubernetes: KubernetesSource?
    /// The RequestAuthentication key sets named by URI.
    private let jwks: BackgroundRefresher<JWKSFetcher.Document>
    private let dns: BackgroundRefresher<[String]>
    let dnsResolutions = DNSResolver.Counters()
    private(set) var snapshot: Snapshot
    /// The snapshot before `snapshot`, released on this thread a second after the reload: by then every worker
    /// has swapped, so freeing it (10,000 endpoints take milliseconds) does not stall a worker.
    private var retired: Snapshot?
    /// A second after a reload (at most once a second under churn): frees `retired` and gives the freed
    /// memory back to the system.
    private lazy var retireTimer = Timer(loop: loop) { [unowned(unsafe) self] in
        self.retired = nil
        releaseFreeMemory()
    }
    private(set) var workers: [Worker] = []
    private var admin: AdminServer?
    private var publicEndpoints: [AdminServer] = []
    /// Where the stats-only and health-only listeners ended up ("off" when not configured), for the ready line.
    private var publicAddresses: [String] = ["off", "off"]
    private var watchers: [SignalWatcher] = []
    private var pollTimer: Timer?
    private var certificates: CertificateSource?
    private(set) var meshCertificates: MeshCertificates?
    private var hboneListener: Listener?
    /// The bound HBONE socket waiting for the first certificate from the mesh's CA (nothing is accepted before).
    private var waitingHBONEFD: Int32?
    /// HBONE connections handed to each worker (compared with what it adopted, to count those in flight).
    private var assigned: [Int] = []
    private var drainTimer: Timer?
    private var drainTally: DrainTally?
    private(set) var reloadsOK = 0
    private(set) var reloadsFailed = 0
    private var draining = false
    private(set) var httpAddress: SocketAddress
    private(set) var adminAddress: SocketAddress
    private(set) var hboneAddress: SocketAddress?
    private(set) var proxyProtocolAddress: SocketAddress?

    /// Declared last: when start-up fails, the properties made so far are destroyed in declaration order, and
    /// the watchers among them (the Kubernetes source's doorbell, say) still need the loop.
    private let loop = EventLoop.makeDefault()

    /// Loads the config and binds every socket; throws a message for the user on failure.
    init(options: Options, logger: Logger) throws {
        var options = options
        options.settings.workers = options.workers
        self.options = options
        // One malloc arena per worker and one for the main thread (and, shared, the control threads: one
        // Kubernetes watcher per kind and namespace would each hold an arena of their own, ~15 MiB resident
        // under API churn for no speed).
        limitMallocArenas(options.workers + 2)
        self.logger = logger
        config = ConfigSource(paths: options.configPaths, namespace: options.namespace)
        config.compiler.rootNamespace = options.rootNamespace
        config.compiler.gatewayName = options.gateway
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
            config.apiChanges = { store.takeChanges() }
            config.compiler.gateway = apiOptions.gateway
            kubernetes = source
        }
        dns = DNSResolver.refresher(
            loop: loop, logger: logger, server: options.dnsServer ?? DNSResolver.systemNameServer(), minRefresh: options.dnsMinRefresh,
            counters: dnsResolutions)
        jwks = JWKSFetcher.refresher(
            loop: loop, logger: logger, refresh: options.jwksRefresh, trustBundle: readTextFile("/etc/ssl/certs/ca-certificates.crt") ?? "")
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
        jwks.onChange = { [unowned(unsafe) self] in self.reload(reason: "jwks") }
        jwks.want(config.jwksURIs)
        dns.onChange = { [unowned(unsafe) self] in self.reload(reason: "dns") }
        dns.want(config.dnsNames)
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
            config.compiler.jwks = jwks.values.mapValues(\.keys)
            config.compiler.resolvedNames = dns.values
            let next = try config.load(previous: snapshot)
            let known = Set(snapshot.warnings)
            retired = snapshot
            snapshot = next
            reloadsOK += 1
            // New findings only: under API churn the same warnings would repeat with every swap.
            for warning in next.warnings where !known.contains(warning) { logger.warning("\(warning)") }
            for worker in workers { worker.post(.replaceSnapshot(next)) }
            if !retireTimer.isActive { retireTimer.schedule(after: .seconds(1)) }
            kubernetes?.swapped()
            kubernetes?.follow(config.foreignReferences)
            jwks.want(config.jwksURIs)
            dns.want(config.dnsNames)
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
            guard kubernetes != nil else { return (200, "application/json", JSONValue.object(entries).rendered() + "\n") }
            // Which objects came from the API, at which resourceVersion (the files are listed by `waypoint check`).
            entries.append(
                (
                    "kubernetesObjects",
                    .array(
                        config.apiObjects.map { kind, namespace, name, version in
                            .object([
                                ("kind", .string(kind)), ("namespace", .string(namespace)), ("name", .string(name)),
                                ("resourceVersion", .string(version)),
                            ])
                        })
                ))
            return (200, "application/json", JSONValue.object(entries).rendered() + "\n")
        default:
            return (404, "text/plain", "not found\n")
        }
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
