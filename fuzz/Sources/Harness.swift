import Filters
import HTTPRouter
import JSON
import JWT
import Kubernetes
import MeshIdentity
import Regex
import WaypointConfig
import WaypointCore

/// The fuzzed entry points. Each must never crash, and what it returns must point inside its input.
enum Harness {
    /// HTTP/1.1 request and response heads, chunked bodies, and Host/authority splitting.
    static func http1(_ data: UnsafeRawBufferPointer) {
        var scanned = 0
        if let length = HTTP1Parser.findHeadEnd(data, scanned: &scanned) {
            precondition(length <= data.count)
            let head = UnsafeRawBufferPointer(rebasing: data[0..<length])
            var request = RequestHead()
            if HTTP1Parser.parseRequest(head, into: &request) == .complete {
                for range in [request.method, request.target, request.path, request.host] { check(range, in: head) }
                for field in request.headers { check(field.name, in: head); check(field.value, in: head) }
                _ = table.ruleSet(forHost: request.host.bytes(in: head))?.route(request, head)
                // The compiled lookup must pick what a walk in order picks, for both orders.
                for set in [mixed, mixedDeclared] {
                    let walked = set.rules.firstIndex { $0.match.failedCondition(request, head) == nil }
                    precondition(set.firstMatch(request, head) == walked, "compiled route selection differs from the walk")
                }
            }
            var response = ResponseHead()
            if HTTP1Parser.parseResponse(head, requestWasHead: data.first == 0x48, into: &response) == .complete {
                check(response.reason, in: head)
                for field in response.headers { check(field.name, in: head); check(field.value, in: head) }
            }
        } else {
            precondition(scanned <= data.count)
        }
        // Chunked bodies, split where the first byte says, must scan the same as in one piece.
        var whole = ChunkedScanner()
        let all = whole.scan(data)
        var split = ChunkedScanner()
        let cut = data.isEmpty ? 0 : Int(data[0]) % (data.count + 1)
        var consumed: Int? = split.scan(UnsafeRawBufferPointer(rebasing: data[0..<cut]))
        if let first = consumed, first == cut, !split.isComplete {
            consumed = split.scan(UnsafeRawBufferPointer(rebasing: data[cut...])).map { first + $0 }
        }
        if let all, let consumed { precondition(all == consumed && whole.bodyBytes == split.bodyBytes, "split scan differs") }
        _ = table.ruleSet(forHost: data)
        normalization(data)
        hardening(data)
    }

    /// Path normalization: never longer, always absolute, no `.` or `..` segment left, in every mode.
    static func normalization(_ data: UnsafeRawBufferPointer) {
        for mode in PathNormalization.allCases {
            var bytes = Array(data)
            guard let length = bytes.withUnsafeMutableBytes({ mode.normalize($0) }) else { continue }
            precondition(length <= data.count, "normalization grew the path")
            guard mode != .none else { continue }
            let path = bytes[0..<length]
            precondition(path.first == 0x2F, "normalized path is not absolute")
            for segment in path.split(separator: 0x2F, omittingEmptySubsequences: false) {
                precondition(!segment.elementsEqual([0x2E]) && !segment.elementsEqual([0x2E, 0x2E]), "dot segment left")
            }
        }
    }

    /// Kubernetes manifests: any text must load or fail with errors, and compile when it loads.
    static func config(_ data: UnsafeRawBufferPointer) {
        let text = String(decoding: data, as: UTF8.self)
        if let spec = try? ManifestLoader.load(text: text, file: "fuzz.yaml", defaultNamespace: "default") {
            var compiler = SnapshotCompiler(namespace: "default")
            compiler.locality = Locality(region: "r1", zone: "z1", subzone: "s1")  // so locality tiers are built too
            _ = compiler.compile(spec, generation: 1)
            _ = spec.foreignReferences(clusterDomain: compiler.clusterDomain)
        }
    }

    /// What the Kubernetes API sends: each line a watch event (or a list page) through the JSON decoder, the
    /// watch state machine, the parsed objects it patches and the compiler (what a hostile or broken API server
    /// could feed the waypoint).
    static func kubernetes(_ data: UnsafeRawBufferPointer) {
        var cache = WatchCache(kind: WatchedKind(group: "", version: "v1", resource: "services", kind: "Service", namespace: "default"))
        var parsed = ParsedKind(source: "fuzz", defaultNamespace: "default")
        let parser = JSONParser()  // one for the stream, as a watch has
        for line in data.split(separator: 0x0A) {
            guard let value = try? parser.parse(UnsafeRawBufferPointer(rebasing: line)) else { continue }
            // The document read back as a value and written again is the same document: its counts, links and
            // text ranges hold together.
            precondition(JSONDocument(value.root.json) == value, "a parsed document differs from its rewrite")
            if value.root["items"] != nil {
                if (try? cache.receivedPage(value, first: true)) == .watch { parsed.replace(with: cache.takeList()) }
            } else if let change = (try? cache.receivedEvent(value))?.change {
                parsed.apply([change.key: change.object])
            }
        }
        _ = parsed.takeEndpointChanges()
        if parsed.errors.isEmpty {
            _ = SnapshotCompiler(namespace: "default").compile(parsed.spec, generation: 1)
            _ = parsed.spec.foreignReferences(clusterDomain: "cluster.local")  // what the source then watches by name
        }
    }

    /// What a client and a key server send: the first line a JWKS (a `jwksUri` answer), the rest a request's
    /// `Authorization` header; the token is found, parsed and verified against those keys (what a hostile client
    /// or key server could feed the waypoint).
    static func jwt(_ data: UnsafeRawBufferPointer) {
        let lines = data.split(separator: 0x0A, maxSplits: 1, omittingEmptySubsequences: false)
        let keys = (try? JSONWebKeySet(json: String(decoding: lines[0], as: UTF8.self))) ?? .none
        let header = lines.count > 1 ? Array(lines[1]) : []
        let rules = RequestAuthenticator(rules: [
            JWTRule(issuer: "https://issuer.example.com", audiences: ["shop"], keys: keys, locations: [])
        ])
        let request = RequestAuthenticator.Request(header: { $0 == Array("authorization".utf8) ? header : nil }, query: header)
        for presented in rules.tokens(in: request) {
            if case .success(let identity) = rules.verify(presented, now: 1_800_000_000) { _ = identity.claim(["groups"]) }
        }
    }

    /// What an external authorizer answers: a gRPC `CheckResponse` (first byte even) or an HTTP answer (odd),
    /// read as the worker reads it (head, body framing, chunked decoding) into a check outcome. No header line
    /// an outcome carries may hold CR, LF or NUL, and a chunked body decodes to the bytes the scanner counted.
    static func extAuthz(_ data: UnsafeRawBufferPointer) {
        guard let first = data.first else { return }
        let rest = UnsafeRawBufferPointer(rebasing: data[1...])
        func safe(_ text: String) -> Bool { !text.utf8.contains { $0 == 0x0D || $0 == 0x0A || $0 == 0 } }
        let outcome: ExternalAuthorizer.Outcome
        if first % 2 == 0 {
            guard let read = try? ExternalAuthorizer.outcome(checkResponse: Array(rest)[...]) else { return }
            outcome = read
        } else {
            var scanned = 0
            guard let length = HTTP1Parser.findHeadEnd(rest, scanned: &scanned) else { return }
            var head = ResponseHead()
            guard
                case .complete = HTTP1Parser.parseResponse(
                    UnsafeRawBufferPointer(rebasing: rest[0..<length]), requestWasHead: false, into: &head)
            else { return }
            let body = UnsafeRawBufferPointer(rebasing: rest[length...])
            var tracker = BodyTracker(head.framing)
            guard let taken = tracker.consume(body) else { return }
            if head.framing == .chunked && !tracker.isComplete {
                // a body cut off (collected for a check with includeRequestBodyInCheck): as much as arrived
                let partial = ChunkedScanner.decode(UnsafeRawBufferPointer(rebasing: body[0..<taken]))
                precondition(partial.count == tracker.bodyBytes, "decoded \(partial.count) bytes of \(tracker.bodyBytes) so far")
            }
            tracker.connectionClosed()
            guard tracker.isComplete else { return }
            let bodyBytes = UnsafeRawBufferPointer(rebasing: body[0..<taken])
            var decoded = Array(bodyBytes)
            if head.framing == .chunked {
                decoded = ChunkedScanner.decode(bodyBytes)
                precondition(decoded.count == tracker.bodyBytes, "decoded \(decoded.count) bytes of \(tracker.bodyBytes)")
            }
            let headers = head.headers.map { ($0.name.string(in: rest), $0.value.string(in: rest)) }
            var settings = ExternalAuthorizer.HTTPSettings()
            settings.headersToUpstreamOnAllow = [HeaderNamePattern("x-*")]
            outcome = ExternalAuthorizer.outcome(settings, status: head.status, headers: headers, body: decoded)
        }
        switch outcome {
        case .allowed(let upstream, let downstream):
            for modifier in [upstream, downstream].compactMap({ $0 }) {
                for (name, value) in modifier.set + modifier.add {
                    precondition(safe(String(decoding: name, as: UTF8.self)) && safe(String(decoding: value, as: UTF8.self)))
                }
            }
        case .denied(let status, let headers, _):
            precondition((100...599).contains(status))
            for header in headers { precondition(safe(header.name) && safe(header.value)) }
        case .failed:
            break
        }
    }

    /// What a name server answers: a DNS answer to an A and to an AAAA query for `api.example.com` (ids 7),
    /// compression pointers and CNAME chains followed; addresses are well-formed IP text.
    static func dns(_ data: UnsafeRawBufferPointer) {
        let bytes = Array(data)
        for type in [DNSMessage.RecordType.a, .aaaa] {
            guard case .addresses(let found, _)? = try? DNSMessage.answer(bytes, id: 7, name: "api.example.com", type: type) else {
                continue
            }
            for address in found { precondition(SocketAddress(ip: address, port: 0) != nil, "not an address: \(address)") }
        }
    }

    /// What the mesh's CA answers: the protobuf fields of a CreateCertificate answer (every field read, the chain
    /// extracted), and the service-account token whose claims name the identity asked for.
    static func meshCA(_ data: UnsafeRawBufferPointer) {
        let bytes = Array(data)
        var reader = ProtobufReader(bytes[...])
        while let field = try? reader.next() {
            if case .lengthDelimited(let value) = field.value {
                precondition(value.startIndex >= bytes.startIndex && value.endIndex <= bytes.endIndex)
            }
        }
        _ = try? IstioCA.chain(from: bytes)
        _ = try? serviceAccount(ofToken: String(decoding: data, as: UTF8.self))
    }

    /// What arrives before any HTTP: PROXY v2 headers (with the identity TLV), and the CONNECT authority,
    /// `forwarded`, `baggage` and SPIFFE ID texts; and the header texts parsed per request (traceparent, grpc-timeout).
    static func proxy(_ data: UnsafeRawBufferPointer) {
        switch ProxyProtocolHeader.parse(data) {
        case .complete(let header, let length):
            precondition(length >= 16 && length <= data.count, "header length outside the input")
            if let identity = header.identity { _ = SpiffeIdentity(uri: identity) }
            _ = SocketAddress(ip: header.destinationIP, port: header.destinationPort)
        case .incomplete:
            precondition(data.count < ProxyProtocolHeader.maxLength, "incomplete past the maximum length")
        case .invalid:
            break
        }
        let text = String(decoding: data, as: UTF8.self)
        _ = SocketAddress(text)
        _ = SpiffeIdentity(uri: text)
        if let address = Forwarded.firstFor(data) { _ = SocketAddress(address) }
        // grpc-timeout: what parses formats to a header that parses to at least as long (rounded up, never 0 for > 0).
        if let timeout = GRPCTimeout.parse(text) {
            precondition(GRPCTimeout.parse(GRPCTimeout.format(timeout)).map { $0 >= timeout } ?? false, "grpc-timeout does not round-trip")
        }
        // traceparent: what parses, continued with a new span, parses back to the same trace with that span.
        if let parsed = TraceContext.parse(data) {
            let continued = TraceContext(traceHigh: parsed.high, traceLow: parsed.low, parent: parsed.parent, span: parsed.parent ^ 0x5A5A)
            let out = ByteBuffer(capacity: 64)
            continued.writeTraceparent(into: out)
            let again = TraceContext.parse(out.readable)
            precondition(
                again.map { $0.high == parsed.high && $0.low == parsed.low && $0.parent == continued.span && $0.sampled }
                    ?? (continued.span == 0),
                "traceparent does not round-trip")
        }
        // The tunnel's baggage, which names the caller's workload in Istio's metrics.
        _ = WorkloadLabels(baggage: String(decoding: data, as: UTF8.self), identityNamespace: nil)
    }

    private static func check(_ range: ByteRange, in bytes: UnsafeRawBufferPointer) {
        precondition(range.start >= 0 && range.count >= 0 && Int(range.start + range.count) <= bytes.count, "range out of bounds")
    }

    /// Every kind of path match the index treats differently, with method and header conditions.
    static let mixedRules: [RouteRule<Int>] = {
        let matches: [RequestMatch] = [
            RequestMatch(path: .exact(Array("/a/b".utf8))), RequestMatch(path: .exact(Array("/a/b".utf8)), method: "POST"),
            RequestMatch(path: .elementPrefix("/a")),
            RequestMatch(path: .elementPrefix("/a/b/"), headers: [HeaderMatch(name: "x", value: .present)]),
            RequestMatch(path: .stringPrefix(Array("/a/b".utf8))), RequestMatch(path: .stringPrefix(Array("/A".utf8)), ignoreCase: true),
            RequestMatch(path: .exact(Array("/Q".utf8)), ignoreCase: true), RequestMatch(path: .regex(try! Regex("/a/[0-9]+"))),
            RequestMatch(path: .regex(try! Regex(".*z"))), RequestMatch(path: .regex(try! Regex("/ab?c"))),
            RequestMatch(headers: [HeaderMatch(name: "y", value: .prefix(Array("1".utf8)), negated: true)]),
            RequestMatch(queryParams: [QueryMatch(name: "q", value: .exact(Array("1".utf8)))]),
        ]
        return matches.enumerated().map { RouteRule(match: $1, action: $0, origin: RuleOrigin(route: "f/r", ruleIndex: $0)) }
    }()
    static let mixed = RuleSet(rules: mixedRules, fallback: -1)
    static let mixedDeclared = RuleSet(orderedRules: mixedRules, fallback: -1)

    static let table: RouteTable<Int> = RouteTable(
        virtualHosts: [
            VirtualHost(
                ports: [
                    (
                        UInt16(80),
                        RuleSet(
                            rules: [
                                RouteRule(
                                    match: RequestMatch(path: .elementPrefix("/api")), action: 1,
                                    origin: RuleOrigin(route: "f/r", ruleIndex: 0))
                            ], fallback: 0)
                    )
                ], defaultPort: 80)
        ],
        names: [("web", 0), ("*.example.com", 0)])
}
