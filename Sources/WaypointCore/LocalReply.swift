/// A response the proxy answers itself, with the status and short body users see (Envoy's wording where one
/// exists, so existing runbooks still match).
public enum LocalReply: Sendable, Equatable {
    /// No virtual host or rule matched.
    case noRoute
    /// The chosen backendRef names nothing that exists, or all weights are zero (Gateway API: 500).
    case invalidBackend
    /// The destination has no ready endpoint.
    case noHealthyUpstream
    /// Connecting to the endpoint failed or timed out.
    case upstreamConnectError
    /// The upstream closed or reset before a complete response head.
    case upstreamReset
    /// The upstream's response head could not be parsed.
    case badUpstreamResponse
    /// The request was malformed, unsupported or too slow (400, 405, 408, 417, 431, 501, 505).
    case badRequest(HTTP1Error)
    /// The route's timeout expired before a response head (Envoy's wording).
    case upstreamTimeout
    /// The backend's connection limit and pending-request queue (DestinationRule circuit breaking) are full.
    case upstreamOverflow
    /// An AuthorizationPolicy denied the request (Envoy's RBAC filter answers exactly this).
    case rbacDenied
    /// PeerAuthentication STRICT covers the destination and the request came in plaintext.
    case mtlsRequired
    /// A RequestAuthentication covers the destination and the request's JWT is not valid (Envoy's jwt_authn: 401).
    case jwtRejected(JWTRejection)

    public var status: Int {
        switch self {
        case .noRoute: return 404
        case .invalidBackend: return 500
        case .noHealthyUpstream, .upstreamConnectError, .upstreamReset, .upstreamOverflow: return 503
        case .badUpstreamResponse: return 502
        case .rbacDenied, .mtlsRequired: return 403
        case .jwtRejected: return 401
        case .upstreamTimeout: return 504
        case .badRequest(let error): return error.status
        }
    }

    /// Envoy's response flags for a request the proxy answered itself (access log, Istio's metrics); every
    /// transport takes them from here.
    public var responseFlags: StaticString {
        switch self {
        case .noRoute: return "NR"
        case .noHealthyUpstream: return "UH"
        case .rbacDenied, .mtlsRequired: return "RBAC"
        case .upstreamConnectError: return "UF"
        case .upstreamReset: return "UC"
        case .upstreamTimeout: return "UT"
        case .upstreamOverflow: return "UO"
        case .invalidBackend, .badUpstreamResponse, .badRequest, .jwtRejected: return "-"
        }
    }

    public var body: StaticString {
        switch self {
        case .noRoute: return "no route\n"
        case .invalidBackend: return "invalid backend\n"
        case .noHealthyUpstream: return "no healthy upstream\n"
        case .upstreamConnectError: return "upstream connect error\n"
        case .upstreamReset: return "upstream reset before response headers\n"
        case .badUpstreamResponse: return "malformed upstream response\n"
        case .rbacDenied: return "RBAC: access denied"
        case .upstreamTimeout: return "upstream request timeout\n"
        case .upstreamOverflow: return "upstream connect error or disconnect/reset before headers. reset reason: overflow\n"
        case .mtlsRequired: return "mTLS is required: PeerAuthentication STRICT covers this destination\n"
        case .jwtRejected(let rejection): return rejection.message
        case .badRequest(let error):
            switch error.status {
            case 405: return "method not allowed\n"
            case 408: return "request header timeout\n"
            case 417: return "expectation failed\n"
            case 431: return "request header fields too large\n"
            case 501: return "not implemented\n"
            case 505: return "http version not supported\n"
            default: return "bad request\n"
            }
        }
    }

    /// The reason phrase for a status code we send.
    public static func reasonPhrase(_ status: Int) -> StaticString {
        switch status {
        case 100: return "Continue"
        case 200: return "OK"
        case 201: return "Created"
        case 204: return "No Content"
        case 301: return "Moved Permanently"
        case 302: return "Found"
        case 303: return "See Other"
        case 307: return "Temporary Redirect"
        case 308: return "Permanent Redirect"
        case 304: return "Not Modified"
        case 400: return "Bad Request"
        case 401: return "Unauthorized"
        case 403: return "Forbidden"
        case 404: return "Not Found"
        case 405: return "Method Not Allowed"
        case 408: return "Request Timeout"
        case 413: return "Content Too Large"
        case 417: return "Expectation Failed"
        case 429: return "Too Many Requests"
        case 431: return "Request Header Fields Too Large"
        case 500: return "Internal Server Error"
        case 501: return "Not Implemented"
        case 502: return "Bad Gateway"
        case 503: return "Service Unavailable"
        case 504: return "Gateway Timeout"
        case 505: return "HTTP Version Not Supported"
        default: return "Unknown"
        }
    }
}

extension LocalReply {
    /// The `www-authenticate` value of a JWT refusal, as Envoy 1.40's jwt_authn writes it (seen side by side):
    /// `Bearer realm="http://<Host><target>", error="invalid_token"`, the Host and the target as the request
    /// gave them.
    public static func bearerChallenge(host: UnsafeRawBufferPointer, target: UnsafeRawBufferPointer) -> [UInt8] {
        Array("Bearer realm=\"http://".utf8) + host + target + Array("\", error=\"invalid_token\"".utf8)
    }
}

/// Why a request's JWT was refused, with Envoy's jwt_authn wording.
public enum JWTRejection: Error, Sendable, Equatable {
    case malformed, badHeader, badPayload, unknownIssuer, unsupportedAlgorithm, noMatchingKey, badSignature, expired, notYetValid
    case audienceNotAllowed

    public var message: StaticString {
        switch self {
        case .malformed: return "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"
        case .badHeader: return "Jwt header is an invalid JSON"
        case .badPayload: return "Jwt payload is an invalid JSON"
        case .unknownIssuer: return "Jwt issuer is not configured"
        case .unsupportedAlgorithm: return "Jwt header [alg] is not supported"
        case .noMatchingKey: return "Jwks doesn't have key to match kid or alg from Jwt"
        case .badSignature: return "Jwt verification fails"
        case .expired: return "Jwt is expired"
        case .notYetValid: return "Jwt not yet valid"
        case .audienceNotAllowed: return "Audiences in Jwt are not allowed"
        }
    }
}
