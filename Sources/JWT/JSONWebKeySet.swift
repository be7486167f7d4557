import JSON
import TLS
import WaypointCore

/// A JSON Web Key Set (RFC 7517): the public keys an issuer signs its tokens with.
///
/// Thread: any (immutable). Ownership: the compiled RequestAuthentication rules that name it.
public struct JSONWebKeySet: Sendable {
    public struct Key: Sendable {
        /// `kid`, which a token's header may name.
        public let id: String?
        /// `alg`, when the set pins the key to one algorithm.
        public let algorithm: SignatureKey.Algorithm?
        public let key: SignatureKey
    }

    public let keys: [Key]

    /// No keys: every token fails (a `jwksUri` not fetched yet).
    public static let none = JSONWebKeySet(keys: [])

    private init(keys: [Key]) { self.keys = keys }

    /// Reads `{"keys": [...]}`: RSA (`n`, `e`) and EC P-256/P-384 (`crv`, `x`, `y`) keys; keys of other types or
    /// uses (`use: enc`) are skipped, as Envoy does. Throws when the text is not a key set or holds no usable key.
    public init(json text: String) throws(JWTError) {
        let value: JSON
        do { value = try JSON.parse(text) } catch { throw JWTError("the JWKS is not valid JSON: \(error)") }
        guard case .array(let entries)? = value["keys"] else { throw JWTError("the JWKS has no \"keys\" array") }
        var keys: [Key] = []
        for entry in entries {
            if let use = entry["use"]?.string, use != "sig" { continue }
            let algorithm = entry["alg"]?.string.flatMap(SignatureKey.Algorithm.init(rawValue:))
            if entry["alg"] != nil && algorithm == nil { continue }  // an algorithm we do not check (HS256, EdDSA...)
            let key: SignatureKey?
            switch entry["kty"]?.string {
            case "RSA":
                guard let n = Self.bytes(entry["n"]), let e = Self.bytes(entry["e"]) else { continue }
                key = SignatureKey(rsaModulus: n, exponent: e)
            case "EC":
                guard let curve = entry["crv"]?.string, let x = Self.bytes(entry["x"]), let y = Self.bytes(entry["y"]) else { continue }
                key = SignatureKey(curve: curve, x: x, y: y)
            default:
                continue
            }
            guard let key else { continue }
            keys.append(Key(id: entry["kid"]?.string, algorithm: algorithm, key: key))
        }
        guard !keys.isEmpty else { throw JWTError("the JWKS holds no RSA or EC (P-256, P-384) signing key") }
        self.keys = keys
    }

    private static func bytes(_ value: JSON?) -> [UInt8]? {
        guard let text = value?.string, !text.isEmpty else { return nil }
        return base64Decoded(text)
    }

    /// The keys that may have signed a token with this header: by `kid` when the token names one (all keys
    /// when none does), and fitting `algorithm`.
    func candidates(id: String?, algorithm: SignatureKey.Algorithm) -> [SignatureKey] {
        keys.filter { key in
            (id == nil || key.id == nil || key.id == id) && (key.algorithm == nil || key.algorithm == algorithm) && key.key.fits(algorithm)
        }.map(\.key)
    }
}

/// Why a key set or rule could not be read.
public struct JWTError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}
