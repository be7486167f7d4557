#if canImport(Glibc)
    import Glibc
#endif
import CLI
import EventLoop
import HBONEServer
import Logging
import TLS

/// The flags the client tools share: where to connect, the tunnel's destination, the client's own certificate
/// and the CA bundle for the server.
struct HBONETargetOptions: FlagSet {
    @Option(help: "HBONE server, IP:port.")
    var connect: AddressArgument

    @Option(help: "CONNECT :authority, the destination IP:port.")
    var authority: String

    @Option(help: "Client certificate chain (PEM) presented to the server.")
    var cert: String

    @Option(help: "The certificate's private key (PEM).")
    var key: String

    @Option(help: "Trust bundle (PEM) the server's certificate must chain to.")
    var ca: String

    func context() throws -> TLSContext {
        do {
            return try TLSContext(role: .client, certificateFile: cert, keyFile: key, trustBundleFile: ca)
        } catch {
            writeStderr("invalid client certificate: \(error)\n")
            throw ExitCode(2)
        }
    }
}

extension WaypointCommand {
    struct HBONEClient: Command {
        static let abstract =
            "Open one HBONE tunnel (mTLS 1.3 + HTTP/2 CONNECT) and pipe stdin/stdout through it, or send one HTTP/1.1 request."
        static let discussion =
            "Example: waypoint hbone-client --connect 10.0.0.5:15008 --authority 10.96.0.10:80 --cert c.pem --key k.pem --ca ca.pem --get /"
        static let name = "hbone-client"

        @Option(help: "Send `GET PATH` and exit when the response is complete, instead of piping stdin.")
        var get: String?

        @Option(help: "Host header of --get.")
        var host = "localhost"

        @Flags var target: HBONETargetOptions

        func run() throws {
            signal(SIGPIPE, SIG_IGN)
            let context = try target.context()
            let loop = EventLoop.makeDefault()
            let worker = WorkerContext(loop: loop, settings: ProxySettings(), logger: Logger(label: "hbone-client"))
            guard let connection = HBONEConnection.connect(to: target.connect.address, context: context, worker: worker),
                let tunnel = connection.openTunnel(authority: target.authority)
            else {
                writeStderr("hbone-client: cannot connect to \(target.connect.address)\n")
                throw ExitCode(1)
            }
            connection.onClosed = { _ in
                writeStderr("hbone-client: connection closed\n")
                Glibc.exit(1)
            }
            let request = get.map { Array("GET \($0) HTTP/1.1\r\nhost: \(host)\r\n\r\n".utf8) }
            let pipe = TunnelPipe(tunnel: tunnel, loop: loop, request: request)
            withExtendedLifetime((worker, connection, pipe)) { loop.run() }
        }
    }

    struct HBONELoad: Command {
        static let abstract = "HBONE load generator: connections × tunnels, keep-alive HTTP/1.1 GETs inside each tunnel, fixed duration."
        static let discussion =
            "Prints one line: requests, req/s, latency percentiles (µs), errors. --churn opens one mTLS connection per request."
        static let name = "hbone-load"

        @Option(name: .short, help: "Connections (per thread).")
        var connections = 4

        @Option(name: .short, help: "Tunnels per connection.")
        var streams = 16

        @Option(name: .short, help: "Measured duration.")
        var duration = DurationArgument(.seconds(10))

        @Option(help: "Load threads, each with its own connections.")
        var threads = 1

        @Option(help: "Path of the inner GET.")
        var path = "/"

        @Option(help: "Host header of the inner GET.")
        var host = "svc"

        @Switch(help: "One request per new mTLS connection (measures handshakes per second).")
        var churn = false

        @Flags var target: HBONETargetOptions

        func run() throws {
            signal(SIGPIPE, SIG_IGN)
            let context = try target.context()
            let request = Array("GET \(path) HTTP/1.1\r\nhost: \(host)\r\n\r\n".utf8)
            let options = LoadThread.Options(
                target: target.connect.address, authority: target.authority, connections: connections,
                tunnels: churn ? 1 : streams, duration: duration.duration, churn: churn, context: context)
            let loads = (0..<threads).map { _ in LoadThread(options: options, request: request) }
            var handles: [pthread_t] = []
            for load in loads {
                var thread = pthread_t()
                pthread_create(&thread, nil, runLoadThread, Unmanaged.passRetained(load).toOpaque())
                handles.append(thread)
            }
            for thread in handles { pthread_join(thread, nil) }
            var latencies = loads.flatMap(\.latencies)
            latencies.sort()
            var errors: [String: Int] = [:]
            for load in loads { errors.merge(load.errors, uniquingKeysWith: +) }
            func percentile(_ p: Double) -> Int {
                latencies.isEmpty ? 0 : Int(latencies[min(latencies.count - 1, Int(Double(latencies.count) * p))] * 1e6)
            }
            let seconds = Double(duration.duration.components.seconds) + Double(duration.duration.components.attoseconds) / 1e18
            let errorText =
                errors.isEmpty ? "none" : errors.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ",")
            print(
                "requests=\(latencies.count) rps=\(Int(Double(latencies.count) / seconds)) p50_us=\(percentile(0.5)) "
                    + "p90_us=\(percentile(0.9)) p99_us=\(percentile(0.99)) p999_us=\(percentile(0.999)) "
                    + "max_us=\(percentile(1.0)) tunnels=\(loads.reduce(0) { $0 + $1.openedTunnels }) errors=\(errorText)")
            if latencies.isEmpty { throw ExitCode(1) }
        }
    }
}

/// pthread entry point: a global function, so it carries no actor isolation (FACTS §3).
private func runLoadThread(_ context: UnsafeMutableRawPointer?) -> UnsafeMutableRawPointer? {
    let load = Unmanaged<LoadThread>.fromOpaque(context!).takeRetainedValue()
    load.run()
    return nil
}
