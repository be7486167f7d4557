import EventLoop
import JWT
import Kubernetes
import Logging
import WaypointCore

/// The key sets that RequestAuthentication `jwksUri`s name, kept by a `BackgroundRefresher`: fetched at once
/// when a URI appears, then every `refresh` (istiod's default, 20 minutes); a failure keeps the keys fetched
/// before and retries (1 s doubling to a minute). New keys ring the main loop, which compiles them in.
enum JWKSFetcher {
    /// A fetched key set: a change is a change of its text.
    struct Document: Sendable, Equatable {
        let text: [UInt8]
        let keys: JSONWebKeySet

        static func == (a: Document, b: Document) -> Bool { a.text == b.text }
    }

    /// `trustBundle`: PEM roots for `https://` URIs.
    static func refresher(loop: EventLoop, logger: Logger, refresh: Duration, trustBundle: String) -> BackgroundRefresher<Document> {
        BackgroundRefresher(
            name: "jwks", loop: loop, maxBackoff: 60,
            fetch: { uri in
                do {
                    let text = try Kubernetes.fetch(url: uri, trustBundle: trustBundle)
                    let keys = try JSONWebKeySet(json: String(decoding: text, as: UTF8.self))
                    return .fetched(Document(text: text, keys: keys), refreshAfter: refresh)
                } catch {
                    return .failed("\(error)")
                }
            },
            report: { uri, outcome, changed in
                switch outcome {
                case .failed(let reason):
                    logger.warning("jwks: cannot fetch \(uri) (\(reason)); keeping the keys fetched before, if any; retrying")
                case .fetched:
                    if changed { logger.info("jwks: new keys from \(uri)") }
                }
            })
    }
}
