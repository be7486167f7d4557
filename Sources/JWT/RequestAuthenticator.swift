import Filters
import JSON
import TLS
import WaypointCore

/// One `jwtRules` entry of a RequestAuthentication: which issuer, its keys, where its tokens travel and what the
/// upstream gets of them.
public struct JWTRule: Sendable {
    /// Where a token is found: a header (name lower-case, with the prefix before the token), a query parameter,
    /// or a cookie.
    public enum Location: Sendable, Equatable {
        case header(name: [UInt8], prefix: [UInt8])
        case parameter(String)
        case cookie(String)
    }

    public var issuer: String
    /// The token's `aud` must name one of these; empty: not checked.
    public var audiences: [String]
    public var keys: JSONWebKeySet
    /// Istio's default when none is given: `Authorization: Bearer <token>` and the `access_token` parameter.
    public var locations: [Location]
    /// Keep the token's header on the request forwarded (Istio's default removes it).
    public var forwardOriginalToken = false
    /// A header set to the token's payload (base64url, as sent).
    public var outputPayloadToHeader: String?
    /// Headers set to a claim's value (a string, number or boolean claim).
    public var outputClaimToHeaders: [(header: String, claim: String)] = []

    public static let defaultLocations: [Location] = [
        .header(name: Array("authorization".utf8), prefix: Array("Bearer ".utf8)), .parameter("access_token"),
    ]

    public init(issuer: String, audiences: [String], keys: JSONWebKeySet, locations: [Location]) {
        self.issuer = issuer
        self.audiences = audiences
        self.keys = keys
        self.locations = locations.isEmpty ? Self.defaultLocations : locations
    }
}

/// The RequestAuthentication rules that apply to one destination, as Envoy's jwt_authn runs them for Istio: a
/// request without a token passes unauthenticated; one with a token that is not valid for a rule of its issuer is
/// refused (401); a valid one names the request's principal (`iss/sub`) and claims for authorization.
///
/// Pure and immutable. Thread: any. Ownership: the config snapshot.
public struct RequestAuthenticator: Sendable {
    public let rules: [JWTRule]
    /// Clock skew allowed on `exp` and `nbf` (Envoy's default).
    public static let clockSkew = 60.0

    public init(rules: [JWTRule]) { self.rules = rules }

    /// What a request presents: a header's value by lower-case name (repeated lines joined), and its query.
    public struct Request {
        public var header: ([UInt8]) -> [UInt8]?
        public var query: [UInt8]

        public init(header: @escaping ([UInt8]) -> [UInt8]?, query: [UInt8]) {
            self.header = header
            self.query = query
        }
    }

    /// A token found, and the rules that look where it was found.
    public struct Presented: Equatable {
        public let token: [UInt8]
        let rules: [Int]
        let location: JWTRule.Location
        /// Where it was found, as an index among the locations of the rules in order (a cache key).
        public let locationIndex: Int
    }

    /// The tokens in `request`, at most one per location, in rule order.
    public func tokens(in request: Request) -> [Presented] {
        var found: [Presented] = []
        var index = 0
        for (i, rule) in rules.enumerated() {
            for location in rule.locations {
                defer { index += 1 }
                if let at = found.firstIndex(where: { $0.location == location }) {
                    let seen = found[at]
                    if !seen.rules.contains(i) {
                        found[at] = Presented(
                            token: seen.token, rules: seen.rules + [i], location: location, locationIndex: seen.locationIndex)
                    }
                    continue
                }
                if let token = Self.token(at: location, in: request) {
                    found.append(Presented(token: token, rules: [i], location: location, locationIndex: index))
                }
            }
        }
        return found
    }

    /// Verifies a token found at `presented`'s location against the rule of its issuer, at `now` (Unix seconds).
    public func verify(_ presented: Presented, now: Double) -> Result<JWTIdentity, JWTRejection> {
        let token: JSONWebToken
        do { token = try JSONWebToken(presented.token) } catch { return .failure(error) }
        guard let index = presented.rules.first(where: { rules[$0].issuer == token.issuer }) else { return .failure(.unknownIssuer) }
        let rule = rules[index]
        let candidates = rule.keys.candidates(id: token.keyID, algorithm: token.algorithm)
        guard !candidates.isEmpty else { return .failure(.noMatchingKey) }
        let signed = token.signingInput.withUnsafeBytes { input in
            token.signature.withUnsafeBytes { signature in candidates.contains { $0.verifies(signature, of: input, with: token.algorithm) }
            }
        }
        guard signed else { return .failure(.badSignature) }
        if let expiry = token.time("exp") {
            guard !expiry.isNaN else { return .failure(.badPayload) }
            if now > expiry + Self.clockSkew { return .failure(.expired) }
        }
        if let notBefore = token.time("nbf") {
            guard !notBefore.isNaN else { return .failure(.badPayload) }
            if now + Self.clockSkew < notBefore { return .failure(.notYetValid) }
        }
        if !rule.audiences.isEmpty && !token.audiences.contains(where: rule.audiences.contains) { return .failure(.audienceNotAllowed) }
        let principal = token.issuer.flatMap { issuer in token.subject.map { "\(issuer)/\($0)" } }
        return .success(
            JWTIdentity(
                principal: principal, audiences: token.audiences, presenter: token.claims["azp"]?.string, claims: token.claims,
                expiry: token.time("exp"), requestHeaders: Self.edits(rule, token, at: presented.location)))
    }

    /// What the upstream gets instead: the token's header removed unless forwarded, and the configured outputs.
    private static func edits(_ rule: JWTRule, _ token: JSONWebToken, at location: JWTRule.Location) -> HeaderModifier? {
        var set: [(String, String)] = []
        var remove: [String] = []
        if !rule.forwardOriginalToken, case .header(let name, _) = location { remove.append(String(decoding: name, as: UTF8.self)) }
        if let header = rule.outputPayloadToHeader { set.append((header, String(decoding: token.payloadSegment, as: UTF8.self))) }
        for (header, claim) in rule.outputClaimToHeaders {
            switch token.claims[claim] {
            case .string(let text)?, .number(let text)?: set.append((header, text))
            case .bool(let value)?: set.append((header, value ? "true" : "false"))
            default: continue
            }
        }
        guard !set.isEmpty || !remove.isEmpty else { return nil }
        return HeaderModifier(set: set, add: [], remove: remove)
    }

    static func token(at location: JWTRule.Location, in request: Request) -> [UInt8]? {
        switch location {
        case .header(let name, let prefix):
            guard let value = request.header(name), value.count > prefix.count, value.starts(with: prefix) else { return nil }
            let token = value.dropFirst(prefix.count).drop { $0 == 0x20 }
            return token.isEmpty ? nil : Array(token)
        case .parameter(let name):
            return field(named: name, in: request.query[...], separator: 0x26)
        case .cookie(let name):
            return request.header(Array("cookie".utf8)).flatMap { field(named: name, in: $0[...], separator: 0x3B) }
        }
    }

    /// The value of `name=value` among `separator`-separated fields (spaces around a field trimmed).
    private static func field(named name: String, in text: ArraySlice<UInt8>, separator: UInt8) -> [UInt8]? {
        let key = Array(name.utf8) + [0x3D]
        for part in text.split(separator: separator) {
            let field = part.drop { $0 == 0x20 }
            if field.starts(with: key) {
                let value = field.dropFirst(key.count)
                return value.isEmpty ? nil : Array(value)
            }
        }
        return nil
    }
}
