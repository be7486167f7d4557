internal import COpenSSL

/// A public key that checks signatures (a JSON Web Key's), built from its raw parts.
///
/// Thread: any (immutable after `init`). Ownership: shared; the last reference frees it.
public final class SignatureKey: @unchecked Sendable {
    // SAFETY: the EVP_PKEY is never changed after init; OpenSSL's key objects are safe to share for reading.
    private let raw: OpaquePointer
    public let kind: Kind

    public enum Kind: Sendable, Equatable {
        case rsa
        /// With the byte length of each of a signature's r and s (32 for P-256, 48 for P-384).
        case ec(curve: String, half: Int)
    }

    /// The signature schemes of JWS (RFC 7518 §3) this checks.
    public enum Algorithm: String, Sendable, CaseIterable {
        case rs256 = "RS256", rs384 = "RS384", rs512 = "RS512", ps256 = "PS256", ps384 = "PS384", ps512 = "PS512"
        case es256 = "ES256", es384 = "ES384"

        var digest: String {
            switch self {
            case .rs256, .ps256, .es256: return "SHA256"
            case .rs384, .ps384, .es384: return "SHA384"
            case .rs512, .ps512: return "SHA512"
            }
        }
    }

    /// An RSA key from its modulus and exponent (big-endian); nil when OpenSSL refuses them or the modulus is
    /// under 2048 bits (RFC 7518 §3.3).
    public init?(rsaModulus n: [UInt8], exponent e: [UInt8]) {
        defer { ERR_clear_error() }
        guard let key = wp_rsa_public_key(n, n.count, e, e.count) else { return nil }
        guard wp_pkey_bits(key) >= 2048 else {
            EVP_PKEY_free(key)
            return nil
        }
        raw = key
        kind = .rsa
    }

    /// An EC key on `curve` (`P-256`, `P-384`) from its coordinates; nil when they are not a point on it.
    public init?(curve: String, x: [UInt8], y: [UInt8]) {
        defer { ERR_clear_error() }
        let half: Int
        switch curve {
        case "P-256": half = 32
        case "P-384": half = 48
        default: return nil
        }
        guard x.count == half, y.count == half, let key = wp_ec_public_key(curve, [0x04] + x + y, 1 + 2 * half) else { return nil }
        raw = key
        kind = .ec(curve: curve, half: half)
    }

    deinit { EVP_PKEY_free(raw) }

    /// Whether this key can check `algorithm` at all (RSA for RS/PS, P-256 for ES256, P-384 for ES384).
    public func fits(_ algorithm: Algorithm) -> Bool {
        switch (algorithm, kind) {
        case (.rs256, .rsa), (.rs384, .rsa), (.rs512, .rsa), (.ps256, .rsa), (.ps384, .rsa), (.ps512, .rsa): return true
        case (.es256, .ec(let curve, _)): return curve == "P-256"
        case (.es384, .ec(let curve, _)): return curve == "P-384"
        default: return false
        }
    }

    /// Whether `signature` is this key's over `data` with `algorithm` (false when the key does not fit it).
    public func verifies(_ signature: UnsafeRawBufferPointer, of data: UnsafeRawBufferPointer, with algorithm: Algorithm) -> Bool {
        guard fits(algorithm) else { return false }
        defer { ERR_clear_error() }
        let pss: Int32 = algorithm.rawValue.hasPrefix("PS") ? 1 : 0
        var half = 0
        if case .ec(_, let h) = kind { half = h }
        return wp_verify_signature(
            raw, algorithm.digest, pss, half, signature.baseAddress?.assumingMemoryBound(to: UInt8.self), signature.count,
            data.baseAddress?.assumingMemoryBound(to: UInt8.self), data.count) == 1
    }
}
