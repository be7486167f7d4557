// swift-tools-version:6.0
import PackageDescription

/// Release builds of our own modules: dynamic exclusivity checks off (measured with callgrind: 37% of the
/// instructions per proxied request were swift_beginAccess and its access set; the static checks stay), and
/// cross-module optimization so the generic route table is specialized where the data plane calls it instead
/// of instantiating generic metadata per request.
let release: [SwiftSetting] = [
    .unsafeFlags(["-enforce-exclusivity=unchecked", "-cross-module-optimization"], .when(configuration: .release))
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
        // The CLI: subcommands, flags, help and validation (it brings FoundationEssentials, ~0.8 MiB resident).
        .package(url: "https://github.com/apple/swift-argument-parser", exact: "1.8.2"),
        // The logging API (levels, metadata) the control plane and the data plane's debug events write to.
        .package(url: "https://github.com/apple/swift-log", exact: "1.16.2"),
    ],
    targets: [
        // C libraries: one system-library target each; shim.h turns macros into callable functions.
        .systemLibrary(name: "CLibEV", path: "Sources/CLibEV"),
        .systemLibrary(
            name: "CPCRE2", path: "Sources/CPCRE2", pkgConfig: "libpcre2-8",
            providers: [.apt(["libpcre2-dev"])]),
        .systemLibrary(name: "COpenSSL", path: "Sources/COpenSSL", pkgConfig: "openssl", providers: [.apt(["libssl-dev"])]),
        .systemLibrary(name: "CNghttp2", path: "Sources/CNghttp2", pkgConfig: "libnghttp2", providers: [.apt(["libnghttp2-dev"])]),
        .systemLibrary(
            name: "CJSONC", path: "Sources/CJSONC", pkgConfig: "json-c", providers: [.apt(["libjson-c-dev"])]),
        .systemLibrary(name: "CYAML", path: "Sources/CYAML", pkgConfig: "yaml-0.1", providers: [.apt(["libyaml-dev"])]),

        // Thin Swift wrappers: the only modules that import the C targets.
        .target(name: "EventLoop", dependencies: ["CLibEV", "WaypointCore"], swiftSettings: release),
        .target(name: "Regex", dependencies: ["CPCRE2"], swiftSettings: release),
        .target(name: "TLS", dependencies: ["COpenSSL", "EventLoop"], swiftSettings: release),
        .target(name: "HTTP2", dependencies: ["CNghttp2", "WaypointCore"], swiftSettings: release),
        .target(name: "JSON", dependencies: ["CJSONC"], swiftSettings: release),
        .target(name: "YAML", dependencies: ["CYAML"], swiftSettings: release),
        // The Kubernetes API as a config source: credentials, list and watch, the objects they keep.
        .target(
            name: "Kubernetes",
            dependencies: ["JSON", "TLS", "EventLoop", "WaypointCore", .product(name: "Logging", package: "swift-log")],
            swiftSettings: release),

        // The waypoint's identity from the mesh's CA (istiod): the gRPC call, the protobuf fields, the rotation.
        .target(name: "MeshIdentity", dependencies: ["TLS", "HTTP2", "EventLoop", "JSON", "WaypointCore"], swiftSettings: release),

        // Byte buffers, sockets, the HTTP/1.1 codec, durations: shared by everything above.
        .target(name: "WaypointCore", swiftSettings: release),
        // Pure: compiled route tables.
        .target(name: "HTTPRouter", dependencies: ["WaypointCore", "Regex"], swiftSettings: release),
        // Pure: header operations applied on the way through.
        .target(name: "Filters", dependencies: ["WaypointCore", "Regex"], swiftSettings: release),
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
                "WaypointCore", "HTTPRouter", "Filters", "HBONEServer", "WaypointConfig",
            ], swiftSettings: release),
        // Kubernetes manifests -> validated specs -> immutable Snapshot.
        .target(
            name: "WaypointConfig",
            dependencies: [
                "WaypointCore", "HTTPRouter", "Filters", "Regex", "JSON", "YAML",
            ], swiftSettings: release),
        .executableTarget(
            name: "Waypoint",
            dependencies: [
                "WaypointCore", "EventLoop", "HTTPRouter", "Filters", "HBONEServer", "WaypointConfig", "SnapshotRouting", "TLS", "HTTP2",
                "JSON", "Kubernetes", "MeshIdentity",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ], swiftSettings: release),

        // libFuzzer harnesses for the parsers of untrusted bytes (fuzz/run.sh builds them with -DFUZZING);
        // a plain build makes a replay tool that runs saved inputs through the same code.
        .executableTarget(
            name: "WaypointFuzz",
            dependencies: [
                "WaypointCore", "HTTPRouter", "WaypointConfig", "Filters", "Regex", "HTTP2", "JSON", "Kubernetes", "MeshIdentity",
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
        .testTarget(name: "FiltersTests", dependencies: ["Filters", "WaypointCore"]),
        .testTarget(name: "WaypointConfigTests", dependencies: ["WaypointConfig", "HTTPRouter", "WaypointCore", "Filters", "Regex"]),
        .testTarget(name: "HTTP2Tests", dependencies: ["HTTP2", "WaypointCore"]),
        .testTarget(name: "KubernetesTests", dependencies: ["Kubernetes", "JSON"]),
        .testTarget(name: "YAMLTests", dependencies: ["YAML"]),
        .testTarget(name: "MeshIdentityTests", dependencies: ["MeshIdentity", "TLS", "WaypointCore"]),
        .testTarget(
            name: "SnapshotRoutingTests",
            dependencies: [
                "SnapshotRouting", "HBONEServer", "WaypointConfig", "WaypointCore", "Filters",
            ]),
    ],
    swiftLanguageModes: [.v6]
)
