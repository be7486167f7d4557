import EventLoop
import Logging

/// What every connection of a worker shares, whatever it serves: the loop, the settings, the counters, the log,
/// the buffer TLS records are decrypted into, and the release of closed objects after the loop iteration. A
/// `ProxyServer` has one; the HBONE client tools make one of their own, with no server around it.
///
/// Thread: its worker's loop thread only (create it on that thread). Ownership: the worker (or the tool).
public final class WorkerContext {
    public let loop: EventLoop
    public let settings: ProxySettings
    public let counters: WorkerCounters
    /// Debug-level events of the data plane (rejected requests, upstream failures); never per successful request.
    let logger: Logger
    /// Where TLS records are decrypted before HTTP/2 takes them: one per worker, since a read is processed
    /// completely before the next.
    let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: 32 * 1024, alignment: 16)
    /// Readiness for tunnels whose HTTP/2 stream has closed (see `Tunnel.requestNotification`).
    let closedTunnels: ClosedTunnelNotifier
    /// Connections and sessions that closed during this loop iteration. They are released just before the loop
    /// blocks, never inside their own call stack: a connection that closes from deep in a callback (a failed
    /// write in a flush) must stay valid until that stack unwinds.
    private var closedObjects: [AnyObject] = []
    private var releaser: PrepareWatcher?

    public init(loop: EventLoop, settings: ProxySettings, counters: WorkerCounters = WorkerCounters(), logger: Logger) {
        self.loop = loop
        self.settings = settings
        self.counters = counters
        self.logger = logger
        closedTunnels = ClosedTunnelNotifier(loop: loop)
        releaser = PrepareWatcher(loop: loop) { [unowned(unsafe) self] in
            if !self.closedObjects.isEmpty { self.closedObjects.removeAll(keepingCapacity: true) }
        }
    }

    deinit { scratch.deallocate() }

    /// Keeps `object` alive until the end of this loop iteration (see `closedObjects`).
    public func releaseLater(_ object: AnyObject) { closedObjects.append(object) }
}
