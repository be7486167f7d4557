#if canImport(Glibc)
    import Glibc
#endif

/// Threads of the control plane (Kubernetes watchers, the certificate agent): blocking I/O on a small stack,
/// never a worker's loop.
public enum ControlThread {
    /// Runs `body` on a new detached thread with a 256 KiB stack, named `name` (its first 15 bytes: what `top -H`
    /// and `/proc/PID/task/*/comm` show).
    public static func start(name: String, _ body: @escaping @Sendable () -> Void) {
        final class Box: Sendable {
            let body: @Sendable () -> Void
            init(_ body: @escaping @Sendable () -> Void) { self.body = body }
        }
        let box = Unmanaged.passRetained(
            Box {
                nameThisThread(name)
                body()
            })
        var thread = pthread_t()
        var attributes = pthread_attr_t()
        pthread_attr_init(&attributes)
        pthread_attr_setstacksize(&attributes, 256 * 1024)
        let rc = pthread_create(
            &thread, &attributes,
            { context in
                let box = Unmanaged<Box>.fromOpaque(context!).takeRetainedValue()
                box.body()
                return nil
            }, box.toOpaque())
        pthread_attr_destroy(&attributes)
        precondition(rc == 0, "pthread_create failed: \(rc)")
        pthread_detach(thread)
    }

    /// Blocks the calling thread for `duration`.
    public static func sleep(_ duration: Duration) {
        let (seconds, attoseconds) = duration.components
        var time = timespec(tv_sec: Int(seconds), tv_nsec: Int(attoseconds / 1_000_000_000))
        var left = timespec()
        while nanosleep(&time, &left) != 0 { time = left }
    }
}

/// Names the calling thread (its first 15 bytes, the kernel's limit): what `top -H` and `/proc/PID/task/*/comm`
/// show. Best effort.
public func nameThisThread(_ name: String) {
    let fd = open("/proc/thread-self/comm", O_WRONLY)
    guard fd >= 0 else { return }
    let bytes = Array(name.utf8.prefix(15))
    _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    close(fd)
}

/// Exponential backoff with jitter for retrying a control-plane call: each wait is half the current step plus
/// a random part of the other half; the step doubles up to `ceiling`.
public struct Backoff: Sendable {
    public let floor: Duration
    public let ceiling: Duration
    private var current: Duration

    public init(floor: Duration, ceiling: Duration) { (self.floor, self.ceiling, current) = (floor, ceiling, floor) }

    public mutating func reset() { current = floor }

    public mutating func next() -> Duration {
        let wait = current / 2 + current / 2 * Double.random(in: 0...1)
        current = min(current * 2, ceiling)
        return wait
    }
}
