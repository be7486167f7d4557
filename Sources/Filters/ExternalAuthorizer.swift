import WaypointCore

/// An external authorizer from the mesh config's `extensionProviders` (`envoyExtAuthzHttp`,
/// `envoyExtAuthzGrpc`), called by CUSTOM AuthorizationPolicies as Envoy's ext_authz filter calls it: what a
/// check asks (`httpCheck`, `grpcCheck`) and what its answer means (`outcome(...)`).
///
/// Pure and immutable. Thread: any. Ownership: the config snapshot.
public struct ExternalAuthorizer: Sendable {
    public enum API: Sendable {
        /// Envoy's HTTP service: the request's head without its body, answered 200 to allow.
        case http(HTTPSettings)
        /// `envoy.service.auth.v3.Authorization/Check` over gRPC.
        case grpc
    }

    /// `envoyExtAuthzHttp`'s own fields.
    public struct HTTPSettings: Sendable {
        /// Put before the request's path in the check's (`pathPrefix`).
        public var pathPrefix: [UInt8] = []
        /// The client's headers sent along (`includeRequestHeadersInCheck`) beside Host, Method, Path,
        /// Content-Length (always 0) and Authorization, which Envoy always sends.
        public var includeRequestHeaders: [HeaderNamePattern] = []
        /// Fixed headers added to every check (`includeAdditionalHeadersInCheck`), lower-case names.
        public var additionalHeaders: [(name: [UInt8], value: [UInt8])] = []
        /// The check answer's headers set on the forwarded request when it allows (`headersToUpstreamOnAllow`).
        public var headersToUpstreamOnAllow: [HeaderNamePattern] = []
        /// The check answer's headers added to the response when it allows (`headersToDownstreamOnAllow`).
        public var headersToDownstreamOnAllow: [HeaderNamePattern] = []
        /// The check answer's headers the client gets with a denial (`headersToDownstreamOnDeny`); nil: all of
        /// them but Host and the framing ones.
        public var headersToDownstreamOnDeny: [HeaderNamePattern]? = nil

        public init() {}
    }

    /// `includeRequestBodyInCheck`: the request body is buffered and sent with the check.
    public struct BodyInCheck: Sendable, Equatable {
        /// `maxRequestBytes`: the most that is buffered and sent.
        public var maxBytes: Int
        /// `allowPartialMessage`: a longer body is checked by its first `maxBytes`; otherwise it is refused (413).
        public var allowPartial: Bool
        /// `packAsBytes`: the gRPC check carries it as `raw_body` rather than `body`.
        public var packAsBytes: Bool

        public init(maxBytes: Int, allowPartial: Bool, packAsBytes: Bool) {
            (self.maxBytes, self.allowPartial, self.packAsBytes) = (maxBytes, allowPartial, packAsBytes)
        }
    }

    /// The provider's `name`, which CUSTOM policies' `provider.name` gives.
    public let name: String
    public let api: API
    /// The authorizer's Service (`[namespace/]host`) and port, as the provider names them.
    public let service: String
    public let port: Int
    /// Where checks go: a cluster of the snapshot (-1: the Service is not known, every check fails).
    public var cluster: Int32 = -1
    /// How long a check may take before it counts as failed (`timeout`; Istio's default 600 s).
    public let timeout: Duration
    /// A failed check allows the request (`failOpen`); otherwise it is answered `statusOnError`.
    public let failOpen: Bool
    public let statusOnError: Int
    /// nil: checks carry the request's head only.
    public let bodyInCheck: BodyInCheck?

    public init(
        name: String, api: API, service: String, port: Int, timeout: Duration?, failOpen: Bool, statusOnError: Int?,
        bodyInCheck: BodyInCheck? = nil
    ) {
        self.name = name
        self.api = api
        self.service = service
        self.port = port
        self.timeout = timeout ?? .seconds(600)
        self.failOpen = failOpen
        self.statusOnError = statusOnError ?? 403
        self.bodyInCheck = bodyInCheck
    }

    /// The `:authority` (Host) of gRPC checks: the Service's host name and port.
    public var authority: String {
        let host = service.split(separator: "/", maxSplits: 1).last.map(String.init) ?? service
        return "\(host):\(port)"
    }

    // MARK: - Asking

    /// The HTTP check for a request (`settings` from `api`): its method, the path prefix and its target, its
    /// Host, `content-length: 0`, its Authorization and the included headers, then the additional ones. A
    /// complete HTTP/1.1 request, kept-alive.
    public static func httpCheck(
        _ settings: HTTPSettings, _ head: RequestHead, _ bytes: UnsafeRawBufferPointer, into out: ByteBuffer
    ) {
        out.append(head.method.bytes(in: bytes))
        out.append(0x20)
        out.append(settings.pathPrefix)
        out.append(head.target.bytes(in: bytes))
        out.append(" HTTP/1.1\r\nhost: ")
        out.append(head.host.bytes(in: bytes))
        out.append("\r\ncontent-length: 0\r\n")
        for field in head.headers {
            let name = field.name.bytes(in: bytes)
            guard HTTP1Parser.equalsLowercase(name, "authorization") || settings.includeRequestHeaders.contains(where: { $0.matches(name) })
            else { continue }
            guard !(HTTP1Parser.equalsLowercase(name, "host") || HTTP1Parser.equalsLowercase(name, "content-length")) else { continue }
            out.append(name)
            out.append(": ")
            out.append(field.value.bytes(in: bytes))
            out.append("\r\n")
        }
        for (name, value) in settings.additionalHeaders {
            out.append(name)
            out.append(": ")
            out.append(value)
            out.append("\r\n")
        }
        out.append("\r\n")
    }

    /// `check` (from `httpCheck` or `grpcCheck`) with the request's `body` (its first `maxBytes` when `partial`),
    /// as Envoy sends it with `with_request_body`: the HTTP check's `content-length` and body, or the gRPC
    /// `CheckRequest`'s `body` (`raw_body` with `packAsBytes`); both with the header `x-envoy-auth-partial-body`.
    /// An empty body leaves the check as it is (Envoy buffered nothing).
    public func addingBody(_ body: [UInt8], partial: Bool, to check: [UInt8]) -> [UInt8] {
        guard !body.isEmpty else { return check }
        let flag = partial ? "true" : "false"
        switch api {
        case .http:
            // `httpCheck` wrote `content-length: 0` as the line after Host; no earlier line can hold a CR LF.
            let marker = Array("\r\ncontent-length: 0\r\n".utf8)
            guard let at = check.offset(of: marker) else { return check }
            let lines = Array("\r\ncontent-length: \(body.count)\r\n\(Self.partialBodyHeader): \(flag)\r\n".utf8)
            return Array(check[..<at]) + lines + check[(at + marker.count)...] + body
        case .grpc:
            // Appended as a second `attributes.request.http`: protobuf merges a repeated message field into one.
            var http = ProtobufWriter()
            http.mapEntry(3, key: Self.partialBodyHeader, value: flag)
            http.bytes(bodyInCheck?.packAsBytes == true ? 12 : 11, body)
            var request = ProtobufWriter()
            request.message(2, http)
            var context = ProtobufWriter()
            context.message(4, request)
            var more = ProtobufWriter()
            more.message(1, context)
            return check + more.bytes
        }
    }

    /// Says whether a check's body is the request's first `maxRequestBytes` only.
    static let partialBodyHeader = "x-envoy-auth-partial-body"

    /// What a gRPC check tells about the request and its peers (`CheckRequest.attributes`).
    public struct Attributes {
        public var sourceIP: String
        public var sourcePort: UInt32
        public var sourcePrincipal: String?
        public var destinationIP: String?
        public var destinationPort: UInt32
        /// `HTTP/1.1` or `HTTP/2`.
        public var protocolName: String
        /// Seconds and nanoseconds since the epoch of the request's start.
        public var time: (seconds: Int64, nanos: UInt32)

        public init(
            sourceIP: String, sourcePort: UInt32, sourcePrincipal: String?, destinationIP: String?, destinationPort: UInt32,
            protocolName: String, time: (seconds: Int64, nanos: UInt32)
        ) {
            (self.sourceIP, self.sourcePort, self.sourcePrincipal) = (sourceIP, sourcePort, sourcePrincipal)
            (self.destinationIP, self.destinationPort) = (destinationIP, destinationPort)
            self.protocolName = protocolName
            self.time = time
        }
    }

    /// The gRPC check's `CheckRequest` message (not framed): peers, and the HTTP request with every header
    /// (lower-case names; repeated ones joined with `,` as Envoy does), its target as `path`, Host, method,
    /// scheme and size (`content-length`, else -1).
    public static func grpcCheck(_ head: RequestHead, _ bytes: UnsafeRawBufferPointer, _ attributes: Attributes) -> [UInt8] {
        func peer(ip: String?, port: UInt32, principal: String?) -> ProtobufWriter {
            var socketAddress = ProtobufWriter()
            socketAddress.string(2, ip ?? "")
            socketAddress.uint32(3, port)
            var address = ProtobufWriter()
            address.message(1, socketAddress)
            var peer = ProtobufWriter()
            if ip != nil { peer.message(1, address) }
            peer.string(4, principal ?? "")
            return peer
        }
        var headers: [(String, String)] = []
        for field in head.headers {
            let name = String(decoding: field.name.bytes(in: bytes).map(HTTP1Parser.lowercased), as: UTF8.self)
            let value = field.value.string(in: bytes)
            if let i = headers.firstIndex(where: { $0.0 == name }) {
                headers[i].1 += ",\(value)"
            } else {
                headers.append((name, value))
            }
        }
        var http = ProtobufWriter()
        http.string(1, headers.first { $0.0 == "x-request-id" }?.1 ?? "")
        http.string(2, head.method.string(in: bytes))
        for (name, value) in headers where name != "host" { http.mapEntry(3, key: name, value: value) }
        http.mapEntry(3, key: ":authority", value: head.host.string(in: bytes))
        http.mapEntry(3, key: ":method", value: head.method.string(in: bytes))
        http.mapEntry(3, key: ":path", value: head.target.string(in: bytes))
        http.string(4, head.target.string(in: bytes))
        http.string(5, head.host.string(in: bytes))
        http.string(6, "http")
        if case .contentLength(let n) = head.framing {
            http.int64(9, Int64(n))
        } else if case .none = head.framing {
            http.int64(9, 0)
        } else {
            http.int64(9, -1)
        }
        http.string(10, attributes.protocolName)
        var time = ProtobufWriter()
        time.int64(1, attributes.time.seconds)
        time.uint32(2, attributes.time.nanos)
        var request = ProtobufWriter()
        request.message(1, time)
        request.message(2, http)
        var context = ProtobufWriter()
        context.message(1, peer(ip: attributes.sourceIP, port: attributes.sourcePort, principal: attributes.sourcePrincipal))
        context.message(2, peer(ip: attributes.destinationIP, port: attributes.destinationPort, principal: nil))
        context.message(4, request)
        var check = ProtobufWriter()
        check.message(1, context)
        return check.bytes
    }

    // MARK: - The answer

    /// What a check decided.
    public enum Outcome: Equatable, Sendable {
        /// Allowed: `upstream` changes the forwarded request, `downstream` the response.
        case allowed(upstream: HeaderModifier?, downstream: HeaderModifier?)
        /// Denied: the client gets this status, these headers and this body.
        case denied(status: Int, headers: [HeaderLine], body: [UInt8])
        /// No decision (unreachable, timed out, a 5xx or an answer that cannot be read): `failOpen` decides.
        case failed

        public static func == (a: Outcome, b: Outcome) -> Bool {
            switch (a, b) {
            case (.allowed(let u1, let d1), .allowed(let u2, let d2)): return u1 == u2 && d1 == d2
            case (.denied(let s1, let h1, let b1), .denied(let s2, let h2, let b2)): return s1 == s2 && h1 == h2 && b1 == b2
            case (.failed, .failed): return true
            default: return false
            }
        }
    }

    /// A header line of a denial, lower-case name.
    public struct HeaderLine: Equatable, Sendable {
        public let name: String
        public let value: String

        public init(_ name: String, _ value: String) {
            self.name = name
            self.value = value
        }
    }

    /// An HTTP check's answer (`settings` from `api`): 200 allows, with the headers the settings pass on; a
    /// 5xx fails (as Envoy's HTTP client counts it), and so does a status that is no valid final one (1xx,
    /// 600 and above); any other status denies with its headers and body.
    public static func outcome(
        _ settings: HTTPSettings, status: Int, headers: [(name: String, value: String)], body: [UInt8]
    ) -> Outcome {
        func picked(_ patterns: [HeaderNamePattern]) -> [(String, String)] {
            headers.compactMap { name, value in
                let lower = name.lowercased()
                return patterns.contains { $0.matches(lower) } && !Self.isFraming(lower) ? (lower, value) : nil
            }
        }
        switch status {
        case 200:
            // `x-envoy-auth-headers-to-remove`: request headers the authorizer takes away (comma-separated, as
            // Envoy reads it; never a pseudo-header or Host); the header itself goes nowhere.
            let remove = headers.filter { $0.name.lowercased() == Self.headersToRemove }.flatMap { line in
                line.value.split(separator: ",").map { $0.trimmingWhitespace().lowercased() }.filter {
                    !$0.isEmpty && !$0.hasPrefix(":") && $0 != "host"
                }
            }
            let upstream = picked(settings.headersToUpstreamOnAllow).filter { $0.0 != Self.headersToRemove }
            let downstream = picked(settings.headersToDownstreamOnAllow).filter { $0.0 != Self.headersToRemove }
            return .allowed(
                upstream: upstream.isEmpty && remove.isEmpty ? nil : HeaderModifier(set: upstream, add: [], remove: remove),
                downstream: downstream.isEmpty ? nil : HeaderModifier(set: [], add: downstream, remove: []))
        case 500...599, ..<200, 600...:
            return .failed  // a 5xx (Envoy's HTTP client), or no valid final status
        default:
            let passed =
                settings.headersToDownstreamOnDeny.map(picked)
                ?? headers.compactMap { name, value in
                    let lower = name.lowercased()
                    return Self.isFraming(lower) || lower == "host" ? nil : (lower, value)
                }
            return .denied(status: status, headers: passed.map { HeaderLine($0.0, $0.1) }, body: body)
        }
    }

    /// The HTTP check answer's header naming request headers to remove.
    static let headersToRemove = "x-envoy-auth-headers-to-remove"

    /// Headers that describe the check answer's own framing or connection, never passed on.
    static func isFraming(_ lower: String) -> Bool {
        switch lower {
        case "content-length", "transfer-encoding", "connection", "keep-alive", "proxy-connection", "upgrade", "te", "trailer":
            return true
        default:
            return false
        }
    }

    /// A gRPC check's `CheckResponse`: status OK allows, with `ok_response`'s headers (set, or with `append: true`
    /// joined to an existing value with a comma, as Envoy 1.40 does; `append_action` is ignored, as there) and
    /// `headers_to_remove`; any other status denies with `denied_response`'s status
    /// (403 when absent), headers and body. Malformed bytes throw.
    public static func outcome(checkResponse bytes: ArraySlice<UInt8>) throws(ProtobufReader.Malformed) -> Outcome {
        var reader = ProtobufReader(bytes)
        var code: UInt64 = 0
        var denied: ArraySlice<UInt8>? = nil
        var ok: ArraySlice<UInt8>? = nil
        while let (field, value) = try reader.next() {
            switch (field, value) {
            case (1, .lengthDelimited(let status)):
                var status = ProtobufReader(status)
                while let (f, v) = try status.next() { if f == 1, case .varint(let c) = v { code = c } }
            case (2, .lengthDelimited(let message)): denied = message; ok = nil
            case (3, .lengthDelimited(let message)): ok = message; denied = nil
            default: continue
            }
        }
        if code == 0 {
            var set: [(String, String)] = []
            var appended: [(String, String)] = []
            var remove: [String] = []
            var downstream: [(String, String)] = []
            var okReader = ProtobufReader(ok ?? [])
            while let (field, value) = try okReader.next() {
                guard case .lengthDelimited(let message) = value else { continue }
                switch field {
                case 2:
                    let (name, value, append) = try headerValueOption(message)
                    if append { appended.append((name, value)) } else { set.append((name, value)) }
                case 5: remove.append(String(decoding: message, as: UTF8.self).lowercased())
                case 6:
                    let (name, value, _) = try headerValueOption(message)
                    downstream.append((name, value))
                default: continue
                }
            }
            remove.removeAll { $0.hasPrefix(":") || $0 == "host" }  // Envoy ignores these (the request would break)
            let upstream =
                set.isEmpty && appended.isEmpty && remove.isEmpty
                ? nil : HeaderModifier(set: set, add: [], remove: remove, append: appended)
            return .allowed(upstream: upstream, downstream: downstream.isEmpty ? nil : HeaderModifier(set: [], add: downstream, remove: []))
        }
        var status = 403
        var headers: [HeaderLine] = []
        var body: [UInt8] = []
        var deniedReader = ProtobufReader(denied ?? [])
        while let (field, value) = try deniedReader.next() {
            guard case .lengthDelimited(let message) = value else { continue }
            switch field {
            case 1:
                var httpStatus = ProtobufReader(message)
                while let (f, v) = try httpStatus.next() {
                    if f == 1, case .varint(let c) = v, (100...599).contains(c) { status = Int(c) }
                }
            case 2:
                let (name, value, _) = try headerValueOption(message)
                if !isFraming(name) { headers.append(HeaderLine(name, value)) }
            case 3: body = Array(message)
            default: continue
            }
        }
        return .denied(status: status, headers: headers, body: body)
    }

    /// A `HeaderValueOption`: the header's lower-case name, its value (`value`, else `raw_value`), and whether
    /// it is appended (`append`, a BoolValue; false when absent, as in these messages). A name that is not an
    /// HTTP token or a value with CR, LF or NUL makes the answer unreadable (the check fails).
    private static func headerValueOption(_ bytes: ArraySlice<UInt8>) throws(ProtobufReader.Malformed) -> (String, String, Bool) {
        var name = ""
        var value = ""
        var append = false
        var option = ProtobufReader(bytes)
        while let (field, v) = try option.next() {
            switch (field, v) {
            case (1, .lengthDelimited(let header)):
                var reader = ProtobufReader(header)
                while let (f, hv) = try reader.next() {
                    guard case .lengthDelimited(let text) = hv else { continue }
                    if f == 1 { name = String(decoding: text, as: UTF8.self).lowercased() }
                    if f == 2 || (f == 3 && value.isEmpty) { value = String(decoding: text, as: UTF8.self) }
                }
            case (2, .lengthDelimited(let wrapper)):
                var reader = ProtobufReader(wrapper)
                while let (f, bv) = try reader.next() { if f == 1, case .varint(let b) = bv { append = b != 0 } }
            default: continue
            }
        }
        // Only what could be a header line: no header injection through the authorizer's strings.
        guard !name.isEmpty, name.utf8.allSatisfy(HTTP1Parser.isTokenChar),
            !value.utf8.contains(where: { $0 == 0x0D || $0 == 0x0A || $0 == 0 })
        else { throw ProtobufReader.Malformed(description: "header \"\(name)\" is not a valid header line") }
        return (name, value, append)
    }
}

/// A header name pattern of the mesh config's ext_authz lists: `name` exactly, `prefix*`, `*suffix`, or `*`
/// for any; names compare case-insensitively.
public enum HeaderNamePattern: Sendable, Equatable {
    case exact([UInt8])
    case prefix([UInt8])
    case suffix([UInt8])
    case any

    public init(_ text: String) {
        let lower = Array(text.lowercased().utf8)
        if lower == [0x2A] {
            self = .any
        } else if lower.last == 0x2A {
            self = .prefix(Array(lower.dropLast()))
        } else if lower.first == 0x2A {
            self = .suffix(Array(lower.dropFirst()))
        } else {
            self = .exact(lower)
        }
    }

    /// Whether a header name (any case) matches.
    public func matches(_ name: UnsafeRawBufferPointer) -> Bool {
        switch self {
        case .any: return true
        case .exact(let text): return name.count == text.count && Self.equal(name, 0, text)
        case .prefix(let text): return name.count >= text.count && Self.equal(name, 0, text)
        case .suffix(let text): return name.count >= text.count && Self.equal(name, name.count - text.count, text)
        }
    }

    /// Whether a lower-case header name matches.
    public func matches(_ lower: String) -> Bool {
        var name = lower
        return name.withUTF8 { matches(UnsafeRawBufferPointer($0)) }
    }

    private static func equal(_ name: UnsafeRawBufferPointer, _ offset: Int, _ text: [UInt8]) -> Bool {
        for i in 0..<text.count where HTTP1Parser.lowercased(name[offset + i]) != text[i] { return false }
        return true
    }
}
