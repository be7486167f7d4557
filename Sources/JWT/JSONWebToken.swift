import JSON
import TLS
import WaypointCore

/// A compact JWS token (RFC 7515, 7519) taken apart: its header, claims and signature, not yet verified.
///
/// Thread: any (a value). Ownership: the request being authenticated, then its cache entry.
struct JSONWebToken {
    let algorithm: SignatureKey.Algorithm
    let keyID: String?
    let claims: JSON
    /// `header.payload` as sent: what the signature covers.
    let signingInput: ArraySlice<UInt8>
    let signature: [UInt8]
    /// The payload segment as sent (base64url), for `outputPayloadToHeader`.
    let payloadSegment: ArraySlice<UInt8>

    init(_ token: [UInt8]) throws(JWTRejection) {
        let parts = token.split(separator: 0x2E, omittingEmptySubsequences: false)
        guard parts.count == 3, !parts[0].isEmpty, !parts[1].isEmpty else { throw .malformed }
        guard let headerBytes = Self.decode(parts[0]), let header = Self.json(headerBytes), case .object = header else {
            throw .badHeader
        }
        guard let payloadBytes = Self.decode(parts[1]), let claims = Self.json(payloadBytes), case .object = claims else {
            throw .badPayload
        }
        guard let name = header["alg"]?.string, let algorithm = SignatureKey.Algorithm(rawValue: name) else { throw .unsupportedAlgorithm }
        guard let signature = Self.decode(parts[2]), !signature.isEmpty else { throw .malformed }
        self.algorithm = algorithm
        keyID = header["kid"]?.string
        self.claims = claims
        self.signature = signature
        signingInput = token[token.startIndex..<parts[1].endIndex]
        payloadSegment = parts[1]
    }

    /// base64url without padding, as JWS writes segments; nil for anything else.
    private static func decode(_ segment: ArraySlice<UInt8>) -> [UInt8]? {
        guard
            segment.allSatisfy({
                ($0 >= 0x41 && $0 <= 0x5A) || ($0 >= 0x61 && $0 <= 0x7A) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x2D || $0 == 0x5F
            })
        else { return nil }
        return base64Decoded(String(decoding: segment, as: UTF8.self))
    }

    private static func json(_ bytes: [UInt8]) -> JSON? {
        bytes.withUnsafeBytes { bytes in try? JSON.parse(bytes) }
    }

    var issuer: String? { claims["iss"]?.string }
    var subject: String? { claims["sub"]?.string }
    /// `aud`: one string or a list of them.
    var audiences: [String] {
        switch claims["aud"] {
        case .string(let one)?: return [one]
        case .array(let list)?: return list.compactMap(\.string)
        default: return []
        }
    }
    /// A NumericDate claim (`exp`, `nbf`) in seconds; nil when absent, NaN when not a number.
    func time(_ claim: String) -> Double? {
        guard let value = claims[claim] else { return nil }
        guard case .number(let text) = value, let seconds = Double(text) else { return .nan }
        return seconds
    }
}
