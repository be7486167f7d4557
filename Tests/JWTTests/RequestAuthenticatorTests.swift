import Filters
import JSON
import JWT
import Testing
import WaypointCore

/// base64url without padding, as JWS writes segments.
private func segment(_ text: String) -> String {
    var encoded = ""
    let table = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    let bytes = Array(text.utf8)
    var i = 0
    while i < bytes.count {
        let chunk = bytes[i..<min(i + 3, bytes.count)]
        var value = 0
        for (j, b) in chunk.enumerated() { value |= Int(b) << (16 - 8 * j) }
        for j in 0..<(chunk.count + 1) { encoded.append(table[(value >> (18 - 6 * j)) & 63]) }
        i += 3
    }
    return encoded
}

private func rules(_ locations: [JWTRule.Location] = [], issuer: String = "https://issuer") -> RequestAuthenticator {
    RequestAuthenticator(rules: [JWTRule(issuer: issuer, audiences: [], keys: .none, locations: locations)])
}

private func request(_ headers: [String: String], query: String = "") -> RequestAuthenticator.Request {
    RequestAuthenticator.Request(
        header: { name in headers[String(decoding: name, as: UTF8.self)].map { Array($0.utf8) } }, query: Array(query.utf8))
}

@Suite struct RequestAuthenticatorTests {
    @Test func tokensAreFoundWhereIstioLooksByDefault() {
        let defaults = rules()
        #expect(defaults.tokens(in: request(["authorization": "Bearer abc.def.ghi"])).map(\.token) == [Array("abc.def.ghi".utf8)])
        #expect(defaults.tokens(in: request(["authorization": "Basic dXNlcg=="])).isEmpty)  // not a bearer token
        #expect(defaults.tokens(in: request(["authorization": "Bearer "])).isEmpty)
        #expect(defaults.tokens(in: request([:], query: "a=1&access_token=x.y.z&b=2")).map(\.token) == [Array("x.y.z".utf8)])
        #expect(defaults.tokens(in: request([:], query: "my_access_token=x.y.z")).isEmpty)
    }

    @Test func configuredLocationsReplaceTheDefaults() {
        let custom = rules([.header(name: Array("x-jwt".utf8), prefix: []), .cookie("session")])
        #expect(custom.tokens(in: request(["authorization": "Bearer a.b.c"])).isEmpty)
        #expect(custom.tokens(in: request(["x-jwt": "a.b.c"])).map(\.token) == [Array("a.b.c".utf8)])
        #expect(custom.tokens(in: request(["cookie": "theme=dark; session=s.t.u"])).map(\.token) == [Array("s.t.u".utf8)])
        // two rules looking at the same header share one token, which each may verify
        let two = RequestAuthenticator(rules: [
            JWTRule(issuer: "a", audiences: [], keys: .none, locations: []),
            JWTRule(issuer: "b", audiences: [], keys: .none, locations: []),
        ])
        #expect(two.tokens(in: request(["authorization": "Bearer a.b.c"])).count == 1)
    }

    @Test func malformedTokensAreRefusedWithEnvoysReasons() {
        let check = rules()
        func verdict(_ token: String) -> JWTRejection? {
            guard let presented = check.tokens(in: request(["authorization": "Bearer \(token)"])).first else { return nil }
            if case .failure(let rejection) = check.verify(presented, now: 0) { return rejection }
            return nil
        }
        let header = segment(#"{"alg":"RS256","kid":"k"}"#)
        let payload = segment(#"{"iss":"https://issuer","sub":"alice"}"#)
        #expect(verdict("only.two") == .malformed)
        #expect(verdict("a.b.c.d") == .malformed)
        #expect(verdict("!!!.\(payload).sig") == .badHeader)
        #expect(verdict("\(header).\(segment("[1]")).sig") == .badPayload)  // claims must be an object
        #expect(verdict("\(segment(#"{"alg":"HS256"}"#)).\(payload).sig") == .unsupportedAlgorithm)  // no shared secrets
        #expect(verdict("\(segment(#"{"alg":"none"}"#)).\(payload).sig") == .unsupportedAlgorithm)
        #expect(verdict("\(header).\(segment(#"{"iss":"https://other"}"#)).sig") == .unknownIssuer)
        #expect(verdict("\(header).\(payload).sig") == .noMatchingKey)  // no keys fetched yet: refused
    }

    @Test func keySetsWithoutAUsableKeyAreErrors() {
        #expect(throws: JWTError.self) { try JSONWebKeySet(json: #"{"keys":[]}"#) }
        #expect(throws: JWTError.self) { try JSONWebKeySet(json: #"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#) }
        #expect(throws: JWTError.self) { try JSONWebKeySet(json: #"{"keys":[{"kty":"RSA","n":"AQAB","e":"AQAB"}]}"#) }  // 17 bits
        #expect(throws: JWTError.self) {  // not a point on P-256
            try JSONWebKeySet(
                json:
                    #"{"keys":[{"kty":"EC","crv":"P-256","x":"\#(String(repeating: "A", count: 43))","y":"\#(String(repeating: "A", count: 43))"}]}"#
            )
        }
        #expect(throws: JWTError.self) { try JSONWebKeySet(json: "not json") }
    }
}

@Suite struct JWTIdentityTests {
    @Test func claimsAreReadAsStringsAlongAPath() throws {
        let identity = JWTIdentity(
            principal: "i/s", audiences: [], presenter: nil,
            claims: try JSON.parse(#"{"groups":["a","b"],"org":{"team":"core"},"n":5,"mixed":["a",1]}"#), expiry: nil, requestHeaders: nil)
        #expect(identity.claim(["groups"]) == ["a", "b"])
        #expect(identity.claim(["org", "team"]) == ["core"])
        #expect(identity.claim(["org"]) == nil && identity.claim(["n"]) == nil && identity.claim(["mixed"]) == nil)
        #expect(identity.claim(["missing", "x"]) == nil)
    }
}
