import ArgumentParser
import EventLoop
import Filters
import WaypointConfig
import WaypointCore

/// A duration flag in the Kubernetes/Go form (`5s`, `250ms`, `1m30s`).
struct DurationArgument: ExpressibleByArgument, CustomStringConvertible {
    let duration: Duration

    init?(argument: String) {
        guard let parsed = GoDuration.parse(argument) else { return nil }
        duration = parsed
    }

    init(_ duration: Duration) { self.duration = duration }

    var description: String { GoDuration.format(duration) }
    var defaultValueDescription: String { description }
}

/// An `IP:port` flag.
struct AddressArgument: ExpressibleByArgument, CustomStringConvertible {
    let address: SocketAddress

    init?(argument: String) {
        guard let parsed = SocketAddress(argument) else { return nil }
        address = parsed
    }

    var description: String { address.description }
    var defaultValueDescription: String { description }
}

/// A `region/zone/subzone` flag (fewer parts allowed).
struct LocalityArgument: ExpressibleByArgument, CustomStringConvertible {
    let locality: Locality

    init?(argument: String) {
        guard let parsed = Locality(argument), !parsed.isEmpty else { return nil }
        locality = parsed
    }

    var description: String { locality.description }
}

/// `--access-log on|off`.
enum Toggle: String, ExpressibleByArgument, CaseIterable {
    case on, off
}

/// `--path-normalization`, Istio's meshConfig names.
enum PathNormalizationArgument: String, ExpressibleByArgument, CaseIterable {
    case none = "NONE", base = "BASE", mergeSlashes = "MERGE_SLASHES", decodeAndMergeSlashes = "DECODE_AND_MERGE_SLASHES"

    var mode: PathNormalization { PathNormalization(rawValue: rawValue)! }
}

/// `--log-level`.
enum LogLevelArgument: String, ExpressibleByArgument, CaseIterable {
    case trace, debug, info, notice, warning, error, critical
}

/// Every flag can also come from the environment as `WAYPOINT_<FLAG>` (upper case, `-` → `_`); a flag on the
/// command line wins. Repeatable flags take a comma-separated list.
enum EnvironmentFlags {
    /// Flags each subcommand accepts from the environment, with whether they are repeatable.
    static let flags: [String: [(name: String, repeatable: Bool)]] = [
        "run": [
            ("config", true), ("http-listen", false), ("admin-listen", false), ("workers", false),
            ("hbone-listen", false), ("proxy-protocol-listen", false), ("stats-listen", false), ("health-listen", false), ("cert", false),
            ("key", false), ("ca", false), ("trust-domain", false),
            ("trust-domain-aliases", true), ("max-concurrent-streams", false), ("handshake-timeout", false), ("hbone-keepalive", false),
            ("upstream-hbone-port", false), ("path-normalization", false), ("layered-authorization", false),
            ("harden-deny-paths", false),
            ("root-namespace", false), ("default-retries", false), ("http-upgrades", false),
            ("namespace", false), ("drain-timeout", false), ("connect-timeout", false), ("header-timeout", false),
            ("log-level", false), ("access-log", false), ("ca-address", false), ("ca-server-name", false), ("ca-root", false),
            ("ca-token-file", false), ("cluster-id", false),
        ],
        "check": [
            ("config", true), ("namespace", false), ("layered-authorization", false), ("harden-deny-paths", false),
            ("root-namespace", false),
        ],
        "origin": [("listen", false), ("workers", false), ("name", false), ("fail-percent", false)],
    ]

    /// `arguments` (without the program name) with flags from the environment appended where absent.
    static func apply(to arguments: [String], environment: [String: String]) -> [String] {
        guard let subcommand = arguments.first, let known = flags[subcommand] else { return arguments }
        var result = arguments
        for (name, repeatable) in known {
            let variable = "WAYPOINT_" + String(name.uppercased().map { $0 == "-" ? "_" : $0 })
            guard let value = environment[variable], !value.isEmpty else { continue }
            let given = arguments.contains { $0 == "--\(name)" || $0.hasPrefix("--\(name)=") }
            guard !given else { continue }
            let values = repeatable ? value.split(separator: ",").map(String.init) : [value]
            for v in values { result += ["--\(name)", v] }
        }
        return result
    }
}
