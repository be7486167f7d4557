#if canImport(Glibc)
    import Glibc
#endif
import CLI
import Kubernetes
import EventLoop
import WaypointCore
import Filters
import HBONEServer
import Logging
import MeshIdentity
import WaypointConfig

/// The `waypoint` command line: subcommands, `run` when none is named.
enum WaypointCommand {
    static let version = "0.1.0"

    static var program: Program {
        Program(
            name: "waypoint", abstract: "An L7 waypoint proxy for sidecarless service meshes.",
            commands: [Run.self, Check.self, Explain.self, Origin.self, Demo.self, HBONEClient.self, HBONELoad.self, Version.self],
            defaultCommand: Run.self, environmentPrefix: "WAYPOINT_")
    }

    /// Parses the command line plus `WAYPOINT_*` variables and runs the chosen subcommand.
    static func main() -> Never {
        switch program.parse(Array(CommandLine.arguments.dropFirst()), environment: processEnvironment()) {
        case .exit(let text, let status):
            if status == 0 { writeStdout(text) } else { writeStderr(text) }
            exit(status)
        case .run(let command):
            do {
                try command.run()
                exit(0)
            } catch let code as ExitCode {
                exit(code.status)
            } catch {
                writeStderr("Error: \(error)\n")
                exit(1)
            }
        }
    }
}

/// Sets up swift-log once: human-readable lines on stderr.
func makeLogger(level: LogLevelArgument) -> Logger {
    LoggingSystem.bootstrap { label in
        var handler = StreamLogHandler.standardError(label: label)
        handler.logLevel = Logger.Level(rawValue: level.rawValue) ?? .info
        return handler
    }
    return Logger(label: "waypoint")
}

extension WaypointCommand {
    struct Run: Command {
        static let name = "run"
        static let abstract = "Run the proxy (the default subcommand)."

        @Option(help: "Manifest file or directory (repeatable). Without it, the embedded demo config.")
        var config: [String] = []

        @Option(help: "Plaintext HTTP/1.1 listener, IP:port.")
        var httpListen = AddressArgument(flag: "0.0.0.0:8080")!

        @Option(help: "Admin listener (/healthz/ready, /stats/prometheus, /config_dump), IP:port.")
        var adminListen = AddressArgument(flag: "127.0.0.1:15000")!

        @Option(help: "A listener serving only /stats/prometheus (Istio's port 15020), IP:port.")
        var statsListen: AddressArgument?

        @Option(help: "A listener serving only /healthz/ready (Istio's port 15021), IP:port.")
        var healthListen: AddressArgument?

        @Option(help: "HBONE listener (mTLS 1.3 + HTTP/2 CONNECT), IP:port; on when --cert, --key and --ca are given.")
        var hboneListen = AddressArgument(flag: "0.0.0.0:15008")!

        @Option(help: "PROXY-protocol v2 listener (sandwich mode: the node's ztunnel terminates HBONE), IP:port.")
        var proxyProtocolListen: AddressArgument?

        @Option(help: "The waypoint's certificate chain (PEM), re-read when it changes.")
        var cert: String?

        @Option(help: "The certificate's private key (PEM).")
        var key: String?

        @Option(help: "Trust bundle (PEM CA certificates) that peer certificates must chain to.")
        var ca: String?

        @Option(help: "Trust domain of accepted peer SPIFFE IDs.")
        var trustDomain = "cluster.local"

        @Option(help: "Further accepted trust domains (repeatable).")
        var trustDomainAliases: [String] = []

        @Option(help: "HTTP/2 streams (tunnels) per HBONE connection.")
        var maxConcurrentStreams = 200

        @Option(help: "HBONE port on the nodes of mesh endpoints (ztunnel's inbound).")
        var upstreamHbonePort: UInt16 = 15008

        @Option(
            help: "HBONE PING interval; a connection whose PING stays unanswered twice this long is closed (ztunnel: 10s).")
        var hboneKeepalive = DurationArgument(.seconds(10))

        @Option(help: "A TLS handshake must complete within this long.")
        var handshakeTimeout = DurationArgument(.seconds(10))

        @Option(help: "Worker threads (default: the number of cores).")
        var workers: Int?

        @Option(help: "Namespace for manifests without one, and for bare service names in Host.")
        var namespace = "default"

        @Option(help: "How long in-flight requests may take to finish after SIGTERM.")
        var drainTimeout = DurationArgument(.seconds(5))

        @Option(help: "Upstream connect timeout (503 upstream connect error when it expires).")
        var connectTimeout = DurationArgument(.seconds(5))

        @Option(help: "A request head must arrive within this long of its first byte (else 408).")
        var headerTimeout = DurationArgument(.seconds(30))

        @Option(
            help: "TCP tunnels and upgraded (WebSocket) connections that move no byte either way this long are closed (0s: never).")
        var relayIdleTimeout = DurationArgument(.seconds(3600))

        @Option(help: "How often the key sets of RequestAuthentication jwksUris are fetched again (a failure retries sooner).")
        var jwksRefresh = DurationArgument(.seconds(20 * 60))

        @Option(help: "The name server (IP:port) for ServiceEntry hosts with resolution DNS (default: /etc/resolv.conf's first).")
        var dnsServer: AddressArgument?

        @Option(help: "A DNS answer is asked again after its TTL, but not sooner than this (at most every 60s).")
        var dnsMinRefresh = DurationArgument(.seconds(5))

        @Option(help: "Log level.")
        var logLevel = LogLevelArgument.info

        @Option(help: "One JSON access-log line per request on stdout.")
        var accessLog = Toggle.on

        @Option(
            help: "Request path normalization before routing and authorization: NONE, BASE, MERGE_SLASHES, DECODE_AND_MERGE_SLASHES.")
        var pathNormalization = PathNormalizationArgument.base

        @Option(help: "Apply namespace-wide and root-namespace AuthorizationPolicies (no targetRefs) to the waypoint.")
        var layeredAuthorization = Toggle.on

        @Option(
            help: "DENY rules also match the path hardened (slashes merged, ';' parameters dropped, %2F decoded); off: exactly Istio.")
        var hardenDenyPaths = Toggle.on

        @Option(help: "Istio's default retries (2 retries on connect failure or 503, another endpoint each time).")
        var defaultRetries = Toggle.on

        @Option(
            help: "HTTP/1.1 Upgrade (WebSocket) passes through and a 101 makes the connection a byte relay, as Istio's waypoints allow.")
        var httpUpgrades = Toggle.on

        @Option(
            help: "While draining, how long idle keep-alive connections stay open for a last request (answered with connection: close).")
        var drainIdleGrace = DurationArgument(.seconds(2))

        @Option(
            help: "OTLP/HTTP collector (IP:PORT) that spans of traced requests are sent to (POST /v1/traces); off by default.")
        var otlpEndpoint: AddressArgument?

        @Option(help: "Percent of requests without an incoming sampling decision that are traced (with --otlp-endpoint).")
        var traceSampleRate = 1.0

        @Option(help: "Istio metric series (label sets) per worker; later ones are counted in an overflow series.")
        var istioMetricsMaxSeries = 2000

        @Option(help: "Istio's root namespace (mesh-wide policies).")
        var rootNamespace = "istio-system"

        @Option(
            help:
                "Where the waypoint runs, region/zone/subzone: backends with outlier detection then prefer nearby endpoints (Istio's locality load balancing)."
        )
        var locality: LocalityArgument?

        @Option(
            help:
                "Watch the Kubernetes API for config (env WAYPOINT_KUBERNETES); default on in a pod (KUBERNETES_SERVICE_HOST set) without --config."
        )
        var kubernetes: Toggle?

        @Option(
            help: "Reach the Kubernetes API as this kubeconfig's current context says (env KUBECONFIG); turns --kubernetes on."
        )
        var kubeconfig: String?

        @Option(help: "Further namespaces whose objects the waypoint reads (comma-separated), besides --namespace.")
        var watchNamespaces: String?

        @Option(
            help:
                "This waypoint's Gateway name in --namespace: policies and routes targeting a Gateway apply only when they name it; with the Kubernetes API, only Services whose istio.io/use-waypoint names it are served."
        )
        var gateway = "waypoint"

        @Option(help: "How long start-up waits for the first list of every watched kind before serving what it has.")
        var kubernetesSyncTimeout = DurationArgument(.seconds(30))

        @Option(
            help: "How long (to twice as long, drawn per watch) the API server keeps each watch open before the waypoint resumes it.")
        var kubernetesWatchTimeout = DurationArgument(.seconds(300))

        @Option(help: "How often a kind the API server does not serve (CRD not installed) is looked for again.")
        var kubernetesProbeInterval = DurationArgument(.seconds(60))

        @Option(
            help:
                "The mesh CA (istiod) that issues the HBONE certificate, HOST:PORT (env WAYPOINT_CA_ADDRESS); default istiod.istio-system.svc:15012 with --kubernetes and no --cert; none: no CA (and no HBONE without --cert)."
        )
        var caAddress: String?

        @Option(help: "The name the CA's serving certificate must carry (default: the host of --ca-address).")
        var caServerName: String?

        @Option(help: "The mesh root (PEM) that the CA's serving certificate chains to.")
        var caRoot = "/var/run/secrets/istio/root-cert.pem"

        @Option(help: "The projected service-account token (audience istio-ca) sent to the CA, re-read on every request.")
        var caTokenFile = "/var/run/secrets/tokens/istio-token"

        @Option(help: "The cluster ID sent to the CA (istiod validates the token against that cluster).")
        var clusterId = "Kubernetes"

        func validate() throws {
            if let workers, workers < 1 || workers > 256 { throw UsageError("--workers must be 1...256") }
            let given = [cert, key, ca].compactMap { $0 }.count
            if given != 0 && given != 3 { throw UsageError("--cert, --key and --ca go together") }
            if given != 0 && caAddress != nil && caAddress != "none" {
                throw UsageError("--ca-address and --cert are alternatives: one source of the certificate")
            }
            if let caAddress, caAddress != "none", Self.hostAndPort(caAddress) == nil {
                throw UsageError("--ca-address must be HOST:PORT, not \(caAddress)")
            }
            if maxConcurrentStreams < 1 { throw UsageError("--max-concurrent-streams must be at least 1") }
            if !(0...100).contains(traceSampleRate) { throw UsageError("--trace-sample-rate must be 0...100 (percent)") }
            if istioMetricsMaxSeries < 1 || istioMetricsMaxSeries > 1_000_000 {
                throw UsageError("--istio-metrics-max-series must be 1...1000000")
            }
        }

        /// The Kubernetes source's settings when it is on: asked for (flag or env), a kubeconfig given, or running
        /// in a pod without --config.
        private func kubernetesOptions() throws -> KubernetesSource.Options? {
            let environment = processEnvironment()
            let kubeconfigPath = kubeconfig ?? environment["KUBECONFIG"]
            let inPod = environment["KUBERNETES_SERVICE_HOST"] != nil && config.isEmpty && kubeconfigPath == nil
            guard kubernetes.map({ $0 == .on }) ?? (kubeconfigPath != nil || inPod) else { return nil }
            let credentials: APICredentials
            if let kubeconfigPath {
                credentials = APICredentials(try Kubeconfig.load(path: kubeconfigPath), path: kubeconfigPath)
            } else {
                credentials = try APICredentials.inCluster(environment: environment)
            }
            var namespaces = [namespace]
            for extra in (watchNamespaces ?? "").split(separator: ",") where !namespaces.contains(String(extra)) {
                namespaces.append(String(extra))
            }
            var options = KubernetesSource.Options(
                credentials: credentials, namespaces: namespaces, rootNamespace: rootNamespace, gateway: gateway)
            options.syncTimeout = kubernetesSyncTimeout.duration
            options.settings.watchSeconds = max(1, Int(kubernetesWatchTimeout.duration.components.seconds))
            options.settings.absentProbe = kubernetesProbeInterval.duration
            return options
        }

        /// The mesh CA when the certificate comes from it: asked for (flag or env), or the default with the
        /// Kubernetes source on and no certificate files.
        private func meshCA(kubernetes: Bool) -> IstioCA? {
            guard cert == nil, caAddress != "none" else { return nil }
            guard let address = caAddress ?? (kubernetes ? Self.istiod : nil),
                let (host, port) = Self.hostAndPort(address)
            else { return nil }
            var ca = IstioCA(host: host, port: port, serverName: caServerName, rootFile: caRoot, tokenFile: caTokenFile)
            ca.clusterID = clusterId
            return ca
        }

        static let istiod = "istiod.istio-system.svc:15012"

        /// `host:port` or `[v6]:port`.
        static func hostAndPort(_ text: String) -> (String, UInt16)? {
            guard let colon = text.lastIndex(of: ":"), let port = UInt16(text[text.index(after: colon)...]) else { return nil }
            var host = text[..<colon]
            if host.hasPrefix("[") && host.hasSuffix("]") { host = host.dropFirst().dropLast() }
            return host.isEmpty ? nil : (String(host), port)
        }

        func run() throws {
            let logger = makeLogger(level: logLevel)
            let kubernetesOptions: KubernetesSource.Options?
            do {
                kubernetesOptions = try self.kubernetesOptions()
            } catch {
                logger.critical("\(error)")
                throw ExitCode(1)
            }
            var certificates: CertificateSource? = nil
            let meshCA = meshCA(kubernetes: kubernetesOptions != nil)
            if let cert, let key, let ca {
                certificates = CertificateSource(certificate: cert, key: key, trustBundle: ca)
            } else if meshCA == nil {
                logger.info("HBONE listener off: --cert, --key and --ca not given, no --ca-address")
            }
            var options = Runtime.Options(
                configPaths: config.isEmpty ? nil : config, httpListen: httpListen.address,
                hboneListen: certificates == nil && meshCA == nil ? nil : hboneListen.address, certificates: certificates,
                adminListen: adminListen.address,
                workers: workers ?? availableCPUs(), namespace: namespace,
                drainTimeout: drainTimeout.duration, accessLog: accessLog == .on)
            options.settings.headerTimeout = headerTimeout.duration
            options.settings.relayIdleTimeout = relayIdleTimeout.duration > .zero ? relayIdleTimeout.duration : nil
            options.settings.connectTimeout = connectTimeout.duration
            options.jwksRefresh = jwksRefresh.duration
            options.dnsServer = dnsServer?.address
            options.dnsMinRefresh = dnsMinRefresh.duration
            options.settings.handshakeTimeout = handshakeTimeout.duration
            options.settings.keepaliveInterval = hboneKeepalive.duration
            options.settings.keepaliveTimeout = hboneKeepalive.duration * 2
            options.gateway = gateway
            options.proxyProtocolListen = proxyProtocolListen?.address
            options.statsListen = statsListen?.address
            options.healthListen = healthListen?.address
            options.settings.upstreamHBONEPort = upstreamHbonePort
            options.settings.pathNormalization = pathNormalization.mode
            options.settings.defaultRetries = defaultRetries == .on ? .istioDefault : nil
            options.settings.upgrades = httpUpgrades == .on
            options.settings.istioMetricsMaxSeries = istioMetricsMaxSeries
            options.settings.drainIdleGrace = drainIdleGrace.duration
            if let otlpEndpoint {
                let exporter = SpanExporter(endpoint: otlpEndpoint.address, serviceName: "waypoint", sampleRate: traceSampleRate)
                exporter.start()
                options.settings.tracer = exporter
            }
            options.layeredAuthorization = layeredAuthorization == .on
            options.hardenedDenyPaths = hardenDenyPaths == .on
            options.rootNamespace = rootNamespace
            options.locality = locality?.locality
            options.settings.trustDomains = ([trustDomain] + trustDomainAliases).map { $0.lowercased() }
            options.settings.http2.maxConcurrentStreams = UInt32(maxConcurrentStreams)
            options.kubernetes = kubernetesOptions
            options.meshCA = meshCA
            let runtime: Runtime
            do {
                runtime = try Runtime(options: options, logger: logger)
            } catch {
                logger.critical("\(error)")
                // At once: background threads (Kubernetes watchers mid-handshake) may still be running, and the
                // exit handlers would tear OpenSSL down under them.
                fflush(nil)  // every output stream
                _exit(1)
            }
            runtime.run()
        }
    }

    struct Check: Command {
        static let name = "check"
        static let abstract = "Validate manifests: print every error (file, document, field) and warning; exit 1 on errors."

        @Option(help: "Manifest file or directory (repeatable).")
        var config: [String] = []

        @Option(help: "Namespace for manifests without one.")
        var namespace = "default"

        @Option(help: "As `run`: apply namespace-wide and root-namespace AuthorizationPolicies.")
        var layeredAuthorization = Toggle.on

        @Option(help: "As `run`: DENY rules also match the hardened path.")
        var hardenDenyPaths = Toggle.on

        @Option(help: "As `run`: Istio's root namespace.")
        var rootNamespace = "istio-system"

        @Option(help: "As `run`: this waypoint's Gateway name in --namespace.")
        var gateway = "waypoint"

        func validate() throws {
            if config.isEmpty { throw UsageError("--config is required") }
        }

        func run() throws {
            do {
                let spec = try ManifestLoader.load(paths: config, defaultNamespace: namespace)
                var compiler = SnapshotCompiler(namespace: namespace)
                compiler.rootNamespace = rootNamespace
                compiler.gatewayName = gateway
                compiler.layeredAuthorization = layeredAuthorization == .on
                compiler.hardenedDenyPaths = hardenDenyPaths == .on
                let snapshot = compiler.compile(spec, generation: 1)
                for warning in snapshot.warnings { print("warning: \(warning)") }
                print(
                    "ok: \(spec.services.count) services, \(spec.endpointSlices.count) endpoint slices, "
                        + "\(spec.serviceEntries.count) service entries, \(spec.gateways.count) gateways, \(spec.httpRoutes.count) HTTP routes, "
                        + "\(spec.authorizationPolicies.count) authorization policies, \(spec.peerAuthentications.count) peer authentications"
                )
            } catch {
                for e in error.errors { print("error: \(e)") }
                throw ExitCode(1)
            }
        }
    }

    struct Origin: Command {
        static let name = "origin"
        static let abstract = "A fast test origin that answers JSON describing each request."
        static let discussion = "Query knobs: status=N, delay=DURATION, size=BYTES, fail=N&key=K (first N requests with key K get 503)."

        @Option(help: "Listen address, IP:port.")
        var listen = AddressArgument(flag: "127.0.0.1:18181")!

        @Option(help: "Threads, each with its own SO_REUSEPORT socket.")
        var workers = 1

        @Option(help: "Name reported in the x-origin header and the JSON body.")
        var name = "origin"

        @Option(
            help: "Answer this percentage of requests with 503 (a flaky endpoint). GET /__requests reports the request count.")
        var failPercent = 0

        func run() throws {
            signal(SIGPIPE, SIG_IGN)
            let origin: OriginServer
            do {
                origin = try OriginServer(address: listen.address, threads: workers, name: name, failPercent: failPercent)
            } catch {
                writeStderr("waypoint origin: \(error)\n")
                throw ExitCode(1)
            }
            origin.start()
            writeStderr("origin \(name) listening on \(origin.address)\n")
            while true { pause() }
        }
    }

    struct Demo: Command {
        static let name = "demo"
        static let abstract = "Start two origins and the proxy with the embedded demo config on loopback, and print what to try."

        /// Writes the embedded demo PKI into a new private directory and returns its path.
        static func writeDemoCertificates() throws -> String {
            var template = Array("/tmp/waypoint-demo-XXXXXX".utf8CString)
            guard let dir = mkdtemp(&template) else { throw StartupError("cannot create a directory for the demo certificates") }
            let path = String(cString: dir)
            for (name, pem) in DemoCertificates.files {
                guard writeTextFile("\(path)/\(name)", pem, mode: 0o600) else { throw StartupError("cannot write \(path)/\(name)") }
            }
            return path
        }

        func run() throws {
            let logger = makeLogger(level: .info)
            signal(SIGPIPE, SIG_IGN)
            do {
                for (name, address) in [("a", DemoConfig.originA), ("b", DemoConfig.originB)] {
                    let origin = try OriginServer(address: SocketAddress(address)!, threads: 1, name: name)
                    origin.start()
                }
                let http = SocketAddress("127.0.0.1:18080")!
                let hbone = SocketAddress("127.0.0.1:15008")!
                let pki = try Self.writeDemoCertificates()
                let runtime = try Runtime(
                    options: .init(
                        configPaths: nil, httpListen: http, hboneListen: hbone,
                        certificates: CertificateSource(
                            certificate: "\(pki)/waypoint.pem", key: "\(pki)/waypoint.key", trustBundle: "\(pki)/ca.pem"),
                        adminListen: SocketAddress("127.0.0.1:15000")!, workers: 2,
                        namespace: "default", drainTimeout: .seconds(5), accessLog: true), logger: logger)
                // Written directly (not print's buffer), so it comes before the access-log lines workers write to fd 1.
                writeStdout(
                    """
                    waypoint demo: origins a (\(DemoConfig.originA)) and b (\(DemoConfig.originB)), proxy on \(http), admin on 127.0.0.1:15000
                    Try:
                      curl -s -H 'Host: reviews' http://\(http)/hello                 # service reviews -> origin a
                      curl -s -H 'Host: reviews' -H 'x-canary: true' http://\(http)/  # mesh route -> origin b
                      curl -s -H 'Host: reviews.default.svc.cluster.local' http://\(http)/v2/x   # prefix rule -> origin b
                      curl -s -H 'Host: demo.local' http://\(http)/ratings            # Gateway route, 90/10 split
                      curl -s -H 'Host: nowhere' http://\(http)/                      # 404 no route
                    HBONE (mTLS 1.3 + HTTP/2 CONNECT, as ztunnel sends it) on \(hbone), demo certificates in \(pki):
                      waypoint hbone-client --connect \(hbone) --authority 10.96.0.10:80 --get /hello \\
                          --cert \(pki)/client.pem --key \(pki)/client.key --ca \(pki)/ca.pem
                      curl -s http://127.0.0.1:15000/stats/prometheus
                      curl -s http://127.0.0.1:15000/config_dump
                    Ctrl-C drains and exits.

                    """)
                runtime.run()
            } catch {
                logger.critical("\(error)")
                throw ExitCode(1)
            }
        }
    }

    struct Version: Command {
        static let name = "version"
        static let abstract = "Print the version."
        func run() { print("waypoint \(WaypointCommand.version)") }
    }
}
