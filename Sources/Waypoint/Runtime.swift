#if canImport(Glibc)
import Glibc
#endif
import EventLoop
import HBONEServer
import Logging
import Synchronization
import WaypointConfig

/// The proxy process: config, workers, the admin listener, signals and reloads, all on the main thread's
/// default libev loop (nghttpx's connection handler). Workers run their own loops and never block on it.
///
/// Thread: main thread only. Ownership: `run` keeps it until the process exits.
final class Runtime {
    struct Options {
        var configPaths: [String]?
        var httpListen: SocketAddress
        var adminListen: SocketAddress
        var workers: Int
        var namespace: String
        var drainTimeout: Duration
        var accessLog: Bool
        var settings = ProxySettings()
    }

    private let options: Options
    private let logger: Logger
    private let loop = EventLoop.makeDefault()
    private var config: ConfigSource
    private var snapshot: Snapshot
    private var workers: [Worker] = []
    private var admin: AdminServer?
    private var watchers: [SignalWatcher] = []
    private var pollTimer: Timer?
    private var drainTimer: Timer?
    private var drainTally: DrainTally?
    private var reloadsOK = 0
    private var reloadsFailed = 0
    private var draining = false
    private(set) var httpAddress: SocketAddress
    private(set) var adminAddress: SocketAddress

    /// Loads the config and binds every socket; throws a message for the user on failure.
    init(options: Options, logger: Logger) throws {
        self.options = options
        self.logger = logger
        config = ConfigSource(paths: options.configPaths, namespace: options.namespace)
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
        let adminFD = try Self.bind(options.adminListen, reusePort: false)
        adminAddress = Socket.localAddress(adminFD) ?? options.adminListen

        let tally = DrainTally(doorbell: AsyncWatcher(loop: loop) { [unowned(unsafe) self] in self.workerDrained() })
        drainTally = tally
        for (index, fd) in fds.enumerated() {
            workers.append(Worker(id: index, snapshot: snapshot, listenFDs: [fd], settings: options.settings,
                                  accessLog: options.accessLog, logger: logger) { tally.workerDrained() })
        }
        admin = AdminServer(loop: loop, fd: adminFD) { [unowned(unsafe) self] path in self.adminResponse(path) }
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
        for worker in workers { worker.start() }
        watchers = [
            SignalWatcher(loop: loop, signal: SIGHUP) { [unowned(unsafe) self] in self.reload(reason: "SIGHUP") },
            SignalWatcher(loop: loop, signal: SIGTERM) { [unowned(unsafe) self] in self.beginDrain(signal: "SIGTERM") },
            SignalWatcher(loop: loop, signal: SIGINT) { [unowned(unsafe) self] in self.beginDrain(signal: "SIGINT") },
        ]
        if options.configPaths != nil {
            let timer = Timer(loop: loop) { [unowned(unsafe) self] in
                if self.config.changed() { self.reload(reason: "files changed") }
            }
            timer.scheduleRepeating(every: .seconds(1))
            pollTimer = timer
        }
        logger.info("ready", metadata: ["http": "\(httpAddress)", "admin": "\(adminAddress)",
                                        "workers": "\(workers.count)", "config.generation": "\(snapshot.generation)"])
        loop.run()
        exit(0)
    }

    // MARK: - Reload

    private func reload(reason: String) {
        guard !draining else { return }
        do {
            let next = try config.load()
            snapshot = next
            reloadsOK += 1
            for warning in next.warnings { logger.warning("\(warning)") }
            for worker in workers { worker.post(.replaceSnapshot(next)) }
            logger.info("config reloaded", metadata: ["reason": "\(reason)", "config.generation": "\(next.generation)"])
        } catch {
            reloadsFailed += 1
            logger.error("config reload rejected, keeping generation \(snapshot.generation):\n\(error)",
                         metadata: ["reason": "\(reason)"])
        }
    }

    // MARK: - Drain

    private func beginDrain(signal: String) {
        guard !draining else { return }
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
            return draining ? (503, "text/plain", "draining\n") : (200, "text/plain", "ready\n")
        case "/stats/prometheus", "/metrics":
            return (200, "text/plain; version=0.0.4", metrics())
        case "/config_dump":
            return (200, "application/json", snapshot.dump + "\n")
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
        metric("waypoint_downstream_connections_total", "counter", "Downstream connections accepted.",
               [("", sum { $0.downstreamConnectionsTotal.value })])
        metric("waypoint_downstream_connections_active", "gauge", "Downstream connections open now.",
               [("", sum { $0.downstreamConnectionsActive.value })])
        metric("waypoint_downstream_requests_total", "counter", "Responses sent downstream, by status class.", [
            ("{status_class=\"1xx\"}", sum { $0.responses1xx.value }),
            ("{status_class=\"2xx\"}", sum { $0.responses2xx.value }),
            ("{status_class=\"3xx\"}", sum { $0.responses3xx.value }),
            ("{status_class=\"4xx\"}", sum { $0.responses4xx.value }),
            ("{status_class=\"5xx\"}", sum { $0.responses5xx.value }),
        ])
        metric("waypoint_upstream_connections_total", "counter", "Upstream connections opened.",
               [("", sum { $0.upstreamConnectionsTotal.value })])
        metric("waypoint_upstream_connect_failures_total", "counter", "Upstream connects that failed or timed out.",
               [("", sum { $0.upstreamConnectFailures.value })])
        metric("waypoint_upstream_resets_total", "counter", "Responses cut off by an upstream failure after their head was sent.",
               [("", sum { $0.upstreamResetsMidResponse.value })])
        metric("waypoint_config_reloads_total", "counter", "Config reloads, by result.",
               [("{result=\"ok\"}", reloadsOK), ("{result=\"failed\"}", reloadsFailed)])
        metric("waypoint_config_generation", "gauge", "Generation of the active config.", [("", Int(snapshot.generation))])
        metric("waypoint_workers", "gauge", "Worker threads.", [("", workers.count)])
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
