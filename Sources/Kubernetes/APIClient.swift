#if canImport(Glibc)
    import Glibc
#endif
import EventLoop
import TLS
import WaypointCore

/// Where the Kubernetes API server is and how to prove who we are: from the pod's service account (in a cluster)
/// or from a kubeconfig.
///
/// Thread: any (a value).
public struct APICredentials: Sendable {
    /// `host:port` of the API server (an IP address or a DNS name, resolved at each connect).
    public var host: String
    public var port: UInt16
    /// PEM text of the CAs the API server's certificate must chain to.
    public var trustBundle: String
    /// A bearer token file, re-read on every request (projected tokens rotate), or a fixed token.
    public var tokenFile: String?
    public var token: String?
    /// A client certificate and key (PEM text), when the kubeconfig uses one.
    public var clientCertificate: String?
    public var clientKey: String?
    /// Where these came from, for error messages.
    public var source: String

    public init(
        host: String, port: UInt16, trustBundle: String, tokenFile: String? = nil, token: String? = nil,
        clientCertificate: String? = nil, clientKey: String? = nil, source: String
    ) {
        (self.host, self.port, self.trustBundle, self.tokenFile, self.token) = (host, port, trustBundle, tokenFile, token)
        (self.clientCertificate, self.clientKey, self.source) = (clientCertificate, clientKey, source)
    }

    /// The pod's own: `KUBERNETES_SERVICE_HOST`/`_PORT` and the service account's mounted token and CA.
    public static func inCluster(
        environment: [String: String],
        serviceAccount: String = "/var/run/secrets/kubernetes.io/serviceaccount"
    ) throws(APIError) -> APICredentials {
        guard let host = environment["KUBERNETES_SERVICE_HOST"], let portText = environment["KUBERNETES_SERVICE_PORT"],
            let port = UInt16(portText)
        else {
            throw APIError("in-cluster config: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT must be set")
        }
        let caFile = "\(serviceAccount)/ca.crt"
        guard let trustBundle = readTextFile(caFile) else { throw APIError("in-cluster config: cannot read \(caFile)") }
        let tokenFile = "\(serviceAccount)/token"
        guard readTextFile(tokenFile) != nil else { throw APIError("in-cluster config: cannot read \(tokenFile)") }
        return APICredentials(host: host, port: port, trustBundle: trustBundle, tokenFile: tokenFile, source: "in-cluster config")
    }

    /// The TLS client context these credentials call for (their CA, their client certificate if any).
    public func tlsContext() throws(APIError) -> TLSContext {
        do {
            return try TLSContext(httpsClientTrusting: trustBundle, certificate: clientCertificate, key: clientKey, source: source)
        } catch {
            throw APIError("\(source): \(error)")
        }
    }

    /// The current bearer token (the file is read now), nil when none is configured.
    func currentToken() -> String? {
        if let tokenFile { return readTextFile(tokenFile).map { $0.trimmingWhitespace() } }
        return token
    }
}

/// A request to the API server that failed: the status and the server's message, or what went wrong on the way.
public struct APIError: Error, CustomStringConvertible, Sendable {
    /// The HTTP status, 0 when none came (connect, TLS or read failure).
    public let status: Int
    public let description: String
    public init(_ description: String, status: Int = 0) { (self.description, self.status) = (description, status) }
}

/// One HTTP/1.1 GET on a blocking socket (a background thread's), over TLS to the API server (or plain, for
/// `fetch`), whose body is read as lines: a LIST response is one line of JSON, a WATCH response one line per
/// event. Only one line is held at a time.
///
/// Thread: the one that made it. Ownership: its caller; the connection closes in `deinit`.
final class APIResponse {
    /// The response's status (set once the head is read).
    private(set) var status = 0
    private let fd: Int32
    /// nil: plain HTTP.
    private let tls: TLSConnection?
    private var buffer: [UInt8] = []
    /// The longest line accepted (a LIST page of Kubernetes objects is well below).
    static let maxLine = 64 * 1024 * 1024

    /// Connects, sends `GET path`, reads the head. Throws on any failure before the head.
    convenience init(credentials: APICredentials, context: TLSContext, path: String, timeout: Duration) throws(APIError) {
        try self.init(
            host: credentials.host, port: credentials.port, context: context, path: path, token: credentials.currentToken(),
            timeout: timeout, peer: "the API server", trustSource: credentials.source)
    }

    /// `GET path` from `host:port`, over TLS with `context` (nil: plain HTTP), with a bearer `token` if given;
    /// `peer` names the server in errors.
    init(
        host: String, port: UInt16, context: TLSContext?, path: String, token: String?, timeout: Duration, peer: String,
        trustSource: String
    ) throws(APIError) {
        guard let address = Socket.resolve(host, port) else { throw APIError("cannot resolve \(host)") }
        switch Socket.connectBlocking(to: address, timeout: timeout) {
        case .success(let fd): self.fd = fd
        case .failure(let error): throw APIError("\(error)")
        }
        if let context {
            guard let tls = TLSConnection(context: context, fd: fd) else {
                Socket.close(fd)
                throw APIError("TLS set-up failed")
            }
            self.tls = tls
            tls.expectServer(host)
            // From here on `deinit` closes the connection when this throws.
            guard case .done = tls.handshake() else {
                throw APIError("TLS handshake with \(host):\(port) failed (is the CA in \(trustSource) \(peer)'s?)")
            }
        } else {
            tls = nil
        }
        var request = "GET \(path) HTTP/1.1\r\nHost: \(host):\(port)\r\nAccept: application/json\r\n"
        request += "User-Agent: waypoint\r\n"
        if let token { request += "Authorization: Bearer \(token)\r\n" }
        request += "\r\n"
        var out = Array(request.utf8)
        while !out.isEmpty {
            guard case .bytes(let n) = out.withUnsafeBytes({ write($0) }) else { throw APIError("request to \(peer) failed") }
            out.removeFirst(n)
        }
        let head = try readHead()
        status = head.status
        body = head.chunked ? .chunkSize : head.contentLength.map(Body.length) ?? .untilClose
    }

    deinit {
        if let tls { tls.shutdown() } else { Socket.close(fd) }
    }

    private func write(_ bytes: UnsafeRawBufferPointer) -> IOResult { tls?.write(from: bytes) ?? Socket.write(fd, from: bytes) }

    private func read(_ bytes: UnsafeMutableRawBufferPointer) -> IOResult { tls?.read(into: bytes) ?? Socket.read(fd, into: bytes) }

    /// The next line of the body without its newline; nil at the end of the body. Throws when the connection
    /// fails or times out mid-body.
    func nextLine() throws(APIError) -> [UInt8]? {
        var scanned = 0
        while true {
            if let newline = buffer[scanned...].firstIndex(of: 0x0A) {
                let line = Array(buffer[..<newline])
                buffer.removeFirst(newline + 1)
                return line
            }
            scanned = buffer.count
            guard scanned <= Self.maxLine else { throw APIError("a line of the response is over \(Self.maxLine) bytes") }
            guard try fillBody() else {
                guard !buffer.isEmpty else { return nil }
                defer { buffer.removeAll() }
                return buffer
            }
        }
    }

    /// The whole body (a LIST page; a Status object of an error), refused past `limit` bytes rather than cut
    /// (a cut page would never parse, and the list would be retried forever).
    func readBody(limit: Int = APIResponse.maxLine) throws(APIError) -> [UInt8] {
        var all: [UInt8] = []
        while let line = try nextLine() {
            all += line
            guard all.count <= limit else { throw APIError("a response from the API server is over \(limit) bytes") }
        }
        return all
    }

    // MARK: Reading

    private var raw: [UInt8] = []
    /// What each read fills, made once per response (a watch reads one event at a time: a new zeroed 16 KiB
    /// array per read was an allocation in glibc's large bins for every event).
    private var readBuffer = [UInt8](repeating: 0, count: 16 * 1024)

    /// Reads more of the raw stream into `raw`; false at end of stream.
    private func readRaw() throws(APIError) -> Bool {
        let result = readBuffer.withUnsafeMutableBytes { read($0) }
        switch result {
        case .bytes(let n):
            raw += readBuffer[0..<n]
            return true
        case .eof:
            return false
        case .wouldBlock:
            throw APIError("the API server sent nothing for too long")
        case .failed:
            throw APIError("the connection to the API server failed")
        }
    }

    private func readHead() throws(APIError) -> (status: Int, chunked: Bool, contentLength: Int?) {
        while true {
            if let end = raw.offset(of: [0x0D, 0x0A, 0x0D, 0x0A]) {
                let text = String(decoding: raw[..<end], as: UTF8.self)
                raw.removeFirst(end + 4)
                let lines = text.split(separator: "\r\n", omittingEmptySubsequences: false)
                let parts = lines.first?.split(separator: " ") ?? []
                guard parts.count >= 2, let status = Int(parts[1]) else { throw APIError("malformed response from the API server") }
                var chunked = false
                var length: Int?
                for line in lines.dropFirst() {
                    guard let colon = line.firstIndex(of: ":") else { continue }
                    let name = line[..<colon].lowercased()
                    let value = line[line.index(after: colon)...].trimmingWhitespace()
                    if name == "transfer-encoding" && value.lowercased().contains("chunked") { chunked = true }
                    if name == "content-length" { length = Int(value) }
                }
                return (status, chunked, length)
            }
            guard raw.count < 64 * 1024 else { throw APIError("response head from the API server too large") }
            guard try readRaw() else { throw APIError("the API server closed the connection before answering") }
        }
    }

    /// Where the body reader is.
    private enum Body {
        case length(Int)
        case untilClose
        case chunkSize
        case chunkData(Int)
        /// The CRLF after a chunk's data.
        case chunkEnd
        case done
    }
    private var body: Body = .done

    /// Moves body bytes from the raw stream into `buffer` (de-chunked); false at the end of the body.
    private func fillBody() throws(APIError) -> Bool {
        while true {
            switch body {
            case .done:
                return false
            case .length(0):
                body = .done
            case .length(let left), .chunkData(let left):
                if raw.isEmpty, !(try readRaw()) { throw APIError("the API server closed the connection mid-body") }
                let take = min(raw.count, left)
                buffer += raw[..<take]
                raw.removeFirst(take)
                if case .length = body { body = .length(left - take) } else { body = left == take ? .chunkEnd : .chunkData(left - take) }
                return true
            case .untilClose:
                if raw.isEmpty, !(try readRaw()) { body = .done; return false }
                buffer += raw
                raw.removeAll(keepingCapacity: true)
                return true
            case .chunkEnd, .chunkSize:
                guard let end = raw.offset(of: [0x0D, 0x0A]) else {
                    guard raw.count < 4096 else { throw APIError("malformed chunk from the API server") }
                    guard try readRaw() else { throw APIError("the API server closed the connection mid-body") }
                    continue
                }
                let line = String(decoding: raw[..<end], as: UTF8.self)
                raw.removeFirst(end + 2)
                if case .chunkEnd = body {
                    guard line.isEmpty else { throw APIError("malformed chunk from the API server") }
                    body = .chunkSize
                    continue
                }
                guard let size = Int((line.split(separator: ";").first ?? "").trimmingWhitespace(), radix: 16), size >= 0 else {
                    throw APIError("malformed chunk from the API server")
                }
                body = size == 0 ? .done : .chunkData(size)
            }
        }
    }
}

/// A GET of an `http://` or `https://` URL on this (blocking) thread, TLS verified against `trustBundle` (PEM):
/// the body of a 200 answer, at most `limit` bytes. For the control plane's fetches besides the API's (a JWKS).
public func fetch(url: String, trustBundle: String, timeout: Duration = .seconds(10), limit: Int = 1024 * 1024) throws(APIError)
    -> [UInt8]
{
    let secure: Bool
    var rest: Substring
    if url.hasPrefix("https://") {
        (secure, rest) = (true, url.dropFirst(8))
    } else if url.hasPrefix("http://") {
        (secure, rest) = (false, url.dropFirst(7))
    } else {
        throw APIError("\(url): not an http:// or https:// URL")
    }
    let slash = rest.firstIndex(of: "/") ?? rest.endIndex
    let authority = rest[..<slash]
    rest = rest[slash...]
    var host = authority
    var port: UInt16 = secure ? 443 : 80
    if let colon = authority.lastIndex(of: ":"), !authority.hasSuffix("]") {
        guard let number = UInt16(authority[authority.index(after: colon)...]) else { throw APIError("\(url): bad port") }
        (host, port) = (authority[..<colon], number)
    }
    if host.hasPrefix("["), host.hasSuffix("]") { host = host.dropFirst().dropLast() }
    guard !host.isEmpty else { throw APIError("\(url): no host") }
    let context: TLSContext?
    do { context = secure ? try TLSContext(httpsClientTrusting: trustBundle, source: "the system trust store") : nil } catch {
        throw APIError("\(error)")
    }
    let response = try APIResponse(
        host: String(host), port: port, context: context, path: rest.isEmpty ? "/" : String(rest), token: nil, timeout: timeout,
        peer: url, trustSource: "the system trust store")
    guard response.status == 200 else { throw APIError("\(url): HTTP \(response.status)", status: response.status) }
    return try response.readBody(limit: limit)
}
