// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "waypoint",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "waypoint", targets: ["Waypoint"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.0.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
    ],
    targets: [
        // C libraries: one system-library target each; shim.h turns macros into callable functions.
        .systemLibrary(name: "CLibEV", path: "Sources/CLibEV"),
        .systemLibrary(name: "CPCRE2", path: "Sources/CPCRE2", pkgConfig: "libpcre2-8",
                       providers: [.apt(["libpcre2-dev"])]),

        // Thin Swift wrappers: the only modules that import the C targets.
        .target(name: "EventLoop", dependencies: ["CLibEV"]),
        .target(name: "Regex", dependencies: ["CPCRE2"]),

        // Byte buffers, sockets, the HTTP/1.1 codec, durations: shared by everything above.
        .target(name: "WaypointCore"),
        // Pure: compiled route tables.
        .target(name: "HTTPRouter", dependencies: ["WaypointCore", "Regex"]),
        // Pure: header operations applied on the way through.
        .target(name: "Filters", dependencies: ["WaypointCore"]),
        // The data plane: listeners, downstream sessions, upstream pools.
        .target(name: "HBONEServer", dependencies: [
            "WaypointCore", "EventLoop", "Filters",
            .product(name: "Logging", package: "swift-log"),
        ]),
        // Kubernetes manifests -> validated specs -> immutable Snapshot.
        .target(name: "WaypointConfig", dependencies: [
            "WaypointCore", "EventLoop", "HTTPRouter", "Regex", "Yams",
        ]),
        .executableTarget(name: "Waypoint", dependencies: [
            "WaypointCore", "EventLoop", "HTTPRouter", "Filters", "HBONEServer", "WaypointConfig",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Logging", package: "swift-log"),
        ]),

        // libFuzzer harnesses for the parsers of untrusted bytes (fuzz/run.sh builds them with -DFUZZING);
        // a plain build makes a replay tool that runs saved inputs through the same code.
        .executableTarget(name: "WaypointFuzz", dependencies: ["WaypointCore", "HTTPRouter", "WaypointConfig"],
                          path: "fuzz/Sources"),

        .testTarget(name: "WaypointCoreTests", dependencies: ["WaypointCore"]),
        .testTarget(name: "HTTPRouterTests", dependencies: ["HTTPRouter", "WaypointCore"]),
        .testTarget(name: "FiltersTests", dependencies: ["Filters", "WaypointCore"]),
        .testTarget(name: "WaypointConfigTests", dependencies: ["WaypointConfig", "HTTPRouter", "WaypointCore"]),
    ],
    swiftLanguageModes: [.v6]
)
