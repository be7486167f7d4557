import WaypointCore

/// Where the data plane sends one request: decided by the code that knows the config.
public enum RouteDecision {
    /// Forward to the endpoint with this index in the list given to `ProxyServer.updateEndpoints`.
    /// `route` names the matched route for the access log.
    case forward(endpoint: Int32, route: String)
    /// Answer locally.
    case reply(LocalReply)
}

/// Decides where each request goes. One instance per worker.
///
/// A class-bound existential: the data plane makes one indirect call per request through it (a few
/// nanoseconds), which keeps the data plane free of the config's types without `@inlinable` plumbing.
/// Thread: its worker's loop thread only.
public protocol RequestRouter: AnyObject {
    func route(_ head: RequestHead, _ bytes: UnsafeRawBufferPointer) -> RouteDecision
}
