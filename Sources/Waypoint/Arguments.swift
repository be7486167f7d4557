import CLI
import EventLoop
import Filters
import WaypointConfig
import WaypointCore

/// A duration flag in the Kubernetes/Go form (`5s`, `250ms`, `1m30s`).
struct DurationArgument: FlagValue {
    let duration: Duration

    init?(flag argument: String) {
        guard let parsed = GoDuration.parse(argument) else { return nil }
        duration = parsed
    }

    init(_ duration: Duration) { self.duration = duration }

    var flagDescription: String { GoDuration.format(duration) }
}

/// An `IP:port` flag.
struct AddressArgument: FlagValue {
    let address: SocketAddress

    init?(flag argument: String) {
        guard let parsed = SocketAddress(argument) else { return nil }
        address = parsed
    }

    var flagDescription: String { address.description }
}

/// A `region/zone/subzone` flag (fewer parts allowed).
struct LocalityArgument: FlagValue {
    let locality: Locality

    init?(flag argument: String) {
        guard let parsed = Locality(argument), !parsed.isEmpty else { return nil }
        locality = parsed
    }

    var flagDescription: String { locality.description }
}

/// `--access-log on|off`.
enum Toggle: String, FlagChoice {
    case on, off
}

/// `--path-normalization`, Istio's meshConfig names.
enum PathNormalizationArgument: String, FlagChoice {
    case none = "NONE", base = "BASE", mergeSlashes = "MERGE_SLASHES", decodeAndMergeSlashes = "DECODE_AND_MERGE_SLASHES"

    var mode: PathNormalization { PathNormalization(rawValue: rawValue)! }
}

/// `--log-level`.
enum LogLevelArgument: String, FlagChoice {
    case trace, debug, info, notice, warning, error, critical
}
