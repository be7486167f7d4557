// swift-tools-version:6.0
import PackageDescription

/// Release builds of our own modules: dynamic exclusivity checks off (measured with callgrind: 37% of the
/// instructions per proxied request were swift_beginAccess and its access set; the static checks stay), and
/// cross-module optimization so the generic route table is specialized where the data plane calls it instead
/// of instantiating generic metadata per request. Each function in its own section, so that the linker can place
/// them as `linker/order.txt` says (see `lean` below).
let release: [SwiftSetting] = [
    .unsafeFlags(["-enforce-exclusivity=unchecked", "-cross-module-optimization", "-function-sections"], .when(configuration: .release))
]

/// How the waypoint binary is linked, for fewer resident pages (benchmarks/rss_map.py): lld (shipped with the
/// toolchain) instead of gold, for packed relative relocations (`.relr.dyn`: ~1 MiB of `.rela.dyn` the loader
/// read and kept resident becomes 8 KiB) and for `linker/order.txt`, the functions start-up, idle and the
/// request paths run, placed together at the start of `.text` (`linker/order.sh` writes it).
let root = String(#filePath.dropLast("Package.swift".count))
let lean = [
    "-use-ld=lld", "-Xlinker", "-z", "-Xlinker", "pack-relative-relocs",
    "-Xlinker", "--symbol-ordering-file=\(root)linker/order.txt", "-Xlinker", "--no-warn-symbol-ordering",
    "-Xlinker", "--no-export-dynamic",
]

let package = Package(
    name: "waypoint",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "waypoint", targets: ["Waypoint"])
    ],
    dependencies: [
        // Pinned exactly (reproducible builds; Package.resolved stays out of git, as the local package mirror's
        // commit ids are not upstream's).
        // The logging API (levels, metadata) the control plane and the data plane's debug events write to.
        .package(url: "https://github.com/apple/swift-log", exact: "1.16.2")
    ],
    targets: [
        // C libraries: one system-library target each; shim.h turns macros into callable functions.
        .systemLibrary(name: "CLibEV", path: "Sources/CLibEV"),
        .systemLibrary(
            name: "CPCRE2", path: "Sources/CPCRE2", pkgConfig: "libpcre2-8",
            providers: [.apt(["libpcre2-dev"])]),
        .systemLibrary(name: "COpenSSL", path: "Sources/COpenSSL", pkgConfig: "openssl", providers: [.apt(["libssl-dev"])]),
        .systemLibrary(name: "CNghttp2", path: "Sources/CNghttp2", pkgConfig: "libnghttp2", providers: [.apt(["libnghttp2-dev"])]),
        // simdjson is C++: a C interface of our own (Sources/CSimdJSON/include) is what Swift imports.
        .target(name: "CSimdJSON", path: "Sources/CSimdJSON", linkerSettings: [.linkedLibrary("simdjson")]),
        .systemLibrary(name: "CYAML", path: "Sources/CYAML", pkgConfig: "yaml-0.1", providers: [.apt(["libyaml-dev"])]),

        // Thin Swift wrappers: the only modules that import the C targets.
        .target(name: "EventLoop", dependencies: ["CLibEV", "WaypointCore"], swiftSettings: release),
        .target(name: "Regex", dependencies: ["CPCRE2"], swiftSettings: release),
        .target(name: "TLS", dependencies: ["COpenSSL", "EventLoop", "WaypointCore"], swiftSettings: release),
        .target(name: "HTTP2", dependencies: ["CNghttp2", "WaypointCore"], swiftSettings: release),
        .target(name: "JSON", dependencies: ["CSimdJSON"], swiftSettings: release),
        .target(name: "YAML", dependencies: ["CYAML"], swiftSettings: release),
        // The Kubernetes API as a config source: credentials, list and watch, the objects they keep.
        .target(
            name: "Kubernetes",
            dependencies: ["JSON", "TLS", "EventLoop", "WaypointCore", .product(name: "Logging", package: "swift-log")],
            swiftSettings: release),

        // The waypoint's identity from the mesh's CA (istiod): the gRPC call, the protobuf fields, the rotation.
        .target(name: "MeshIdentity", dependencies: ["TLS", "HTTP2", "EventLoop", "JSON", "WaypointCore"], swiftSettings: release),

        // The command line: subcommands, flags (also from the environment), help.
        .target(name: "CLI"),
        // Byte buffers, sockets, the HTTP/1.1 codec, durations: shared by everything above.
        .target(name: "WaypointCore", swiftSettings: release),
        // Pure: compiled route tables.
        .target(name: "HTTPRouter", dependencies: ["WaypointCore", "Regex"], swiftSettings: release),
        // Pure: header operations applied on the way through.
        .target(name: "Filters", dependencies: ["WaypointCore", "Regex", "JSON"], swiftSettings: release),
        .target(name: "JWT", dependencies: ["Filters", "TLS", "JSON", "WaypointCore"], swiftSettings: release),
        // The data plane: listeners, downstream sessions, upstream pools.
        .target(
            name: "HBONEServer",
            dependencies: [
                "WaypointCore", "EventLoop", "Filters", "TLS", "HTTP2",
                .product(name: "Logging", package: "swift-log"),
            ], swiftSettings: release),
        // The data plane's RequestRouter over a Snapshot: authorization, routes, backend and endpoint choice
        // (load balancing, locality, outlier detection).
        .target(
            name: "SnapshotRouting",
            dependencies: [
                "WaypointCore", "HTTPRouter", "Filters", "JWT", "HBONEServer", "WaypointConfig",
            ], swiftSettings: release),
        // Kubernetes manifests -> validated specs -> immutable Snapshot.
        .target(
            name: "WaypointConfig",
            dependencies: [
                "WaypointCore", "HTTPRouter", "Filters", "JWT", "Regex", "JSON", "YAML", "TLS",
            ], swiftSettings: release),
        .executableTarget(
            name: "Waypoint",
            dependencies: [
                "WaypointCore", "EventLoop", "HTTPRouter", "Filters", "HBONEServer", "WaypointConfig", "SnapshotRouting", "TLS", "HTTP2",
                "JSON", "Kubernetes", "MeshIdentity",
                "CLI",
                .product(name: "Logging", package: "swift-log"),
            ], swiftSettings: release,
            linkerSettings: [.unsafeFlags(lean, .when(configuration: .release))]),

        // libFuzzer harnesses for the parsers of untrusted bytes (fuzz/run.sh builds them with -DFUZZING);
        // a plain build makes a replay tool that runs saved inputs through the same code.
        .executableTarget(
            name: "WaypointFuzz",
            dependencies: [
                "WaypointCore", "HTTPRouter", "WaypointConfig", "Filters", "Regex", "HTTP2", "JSON", "Kubernetes", "MeshIdentity",
                "JWT",
            ],
            path: "fuzz/Sources"),

        // Authorization decision cost (benchmarks/README.md); built in CI, run by hand.
        .executableTarget(
            name: "AuthzBenchmark", dependencies: ["Filters", "WaypointCore"], path: "benchmarks/authz",
            swiftSettings: release),

        // Route selection cost (benchmarks/README.md); built in CI, run by hand.
        .executableTarget(
            name: "RoutingBenchmark", dependencies: ["HTTPRouter", "Regex", "WaypointCore"], path: "benchmarks/routing",
            swiftSettings: release),

        .testTarget(name: "WaypointCoreTests", dependencies: ["WaypointCore"]),
        .testTarget(name: "HTTPRouterTests", dependencies: ["HTTPRouter", "WaypointCore"]),
        .testTarget(name: "FiltersTests", dependencies: ["Filters", "WaypointCore", "JSON"]),
        .testTarget(name: "JWTTests", dependencies: ["JWT", "Filters", "JSON", "WaypointCore"]),
        .testTarget(
            name: "WaypointConfigTests", dependencies: ["WaypointConfig", "HTTPRouter", "WaypointCore", "Filters", "Regex", "JSON", "JWT"]),
        .testTarget(name: "HTTP2Tests", dependencies: ["HTTP2", "WaypointCore"]),
        .testTarget(name: "KubernetesTests", dependencies: ["Kubernetes", "JSON"]),
        .testTarget(name: "YAMLTests", dependencies: ["YAML"]),
        .testTarget(name: "CLITests", dependencies: ["CLI"]),
        .testTarget(name: "MeshIdentityTests", dependencies: ["MeshIdentity", "TLS", "WaypointCore"]),
        .testTarget(
            name: "SnapshotRoutingTests",
            dependencies: [
                "SnapshotRouting", "HBONEServer", "WaypointConfig", "WaypointCore", "Filters",
            ]),
    ],
    swiftLanguageModes: [.v6],
    cxxLanguageStandard: .cxx17
)
