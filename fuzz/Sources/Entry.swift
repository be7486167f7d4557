#if canImport(Glibc)
    import Glibc
#endif

/// Runs the harness named `target`.
func run(_ target: String, _ bytes: UnsafeRawBufferPointer) {
    switch target {
    case "config": Harness.config(bytes)
    case "proxy": Harness.proxy(bytes)
    case "http2": Harness.http2(bytes)
    case "kubernetes": Harness.kubernetes(bytes)
    case "meshca": Harness.meshCA(bytes)
    case "jwt": Harness.jwt(bytes)
    case "extauthz": Harness.extAuthz(bytes)
    case "dns": Harness.dns(bytes)
    default: Harness.http1(bytes)
    }
}

#if FUZZING
    /// libFuzzer entry point; `WAYPOINT_FUZZ_TARGET` picks the harness (http1, http2, config, proxy, kubernetes, meshca, jwt, extauthz or dns).
    @_cdecl("LLVMFuzzerTestOneInput")
    public func fuzzOneInput(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
        let bytes = UnsafeRawBufferPointer(start: data, count: size)
        run(fuzzTarget, bytes)
        return 0
    }

    nonisolated(unsafe) private let fuzzTarget = getenv("WAYPOINT_FUZZ_TARGET").map { String(cString: $0) } ?? "http1"

    /// SwiftPM links an executable's entry point as `<Target>_main`; hand control to libFuzzer's driver from there.
    @_cdecl("WaypointFuzz_main")
    public func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
        var count = argc
        var vector = argv
        return LLVMFuzzerRunDriver(&count, &vector, fuzzOneInput)
    }

    @_silgen_name("LLVMFuzzerRunDriver")
    private func LLVMFuzzerRunDriver(
        _ argc: UnsafeMutablePointer<CInt>,
        _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
        _ callback: @convention(c) (UnsafePointer<UInt8>, Int) -> CInt
    ) -> CInt
#else
    /// Replays saved inputs (e.g. a crash file from a fuzz run): `WaypointFuzz http1|http2|config|proxy|kubernetes|meshca|jwt|extauthz|dns FILE...`.
    @main
    struct Replay {
        static func main() {
            let args = CommandLine.arguments.dropFirst()
            guard let target = args.first,
                ["http1", "http2", "config", "proxy", "kubernetes", "meshca", "jwt", "extauthz", "dns"].contains(target)
            else {
                print("usage: WaypointFuzz http1|http2|config|proxy|kubernetes|meshca|jwt|extauthz|dns FILE...")
                exit(2)
            }
            for path in args.dropFirst() {
                guard let file = fopen(path, "rb") else { print("cannot open \(path)"); exit(1) }
                var bytes: [UInt8] = []
                var buffer = [UInt8](repeating: 0, count: 65536)
                while true {
                    let n = fread(&buffer, 1, buffer.count, file)
                    if n <= 0 { break }
                    bytes += buffer[0..<n]
                }
                fclose(file)
                bytes.withUnsafeBytes { run(target, $0) }
                print("ok \(path)")
            }
        }
    }
#endif
