import JSON
import TLS
import WaypointCore

/// Why a certificate could not be had from the mesh's CA; the text says which step failed.
public struct CAError: Error, CustomStringConvertible, Sendable {
    public let description: String
    init(_ description: String) { self.description = description }
}

/// istiod's certificate service (`istio.v1.auth.IstioCertificateService/CreateCertificate`, istio/api
/// `security/v1alpha1/ca.proto`), the way ztunnel calls it: a CSR and the wanted lifetime, authenticated by a
/// projected service-account token (audience `istio-ca`) re-read on every call, over TLS trusting the mesh
/// root and checking istiod's name.
public struct IstioCA: Sendable {
    public var host: String
    public var port: UInt16
    /// The name istiod's certificate must carry (the host of the address unless given).
    public var serverName: String
    /// PEM file of the mesh root that istiod's serving certificate chains to (the `istio-ca-root-cert` ConfigMap).
    public var rootFile: String
    /// The projected token file; its `sub` claim names the identity asked for.
    public var tokenFile: String
    /// Sent as the `clusterid` metadata (istiod picks the cluster whose API validates the token).
    public var clusterID = "Kubernetes"
    /// The lifetime asked for (istiod may shorten it).
    public var validitySeconds: Int64 = 86_400
    /// Each read and write of a call waits at most this long.
    public var timeout: Duration = .seconds(10)

    public static let method = "/istio.v1.auth.IstioCertificateService/CreateCertificate"

    public init(host: String, port: UInt16, serverName: String? = nil, rootFile: String, tokenFile: String) {
        self.host = host
        self.port = port
        self.serverName = serverName ?? host
        self.rootFile = rootFile
        self.tokenFile = tokenFile
    }

    /// The token as it is now (projected tokens rotate; read on every call).
    public func token() throws(CAError) -> String {
        guard let token = readTextFile(tokenFile)?.trimmingWhitespace(), !token.isEmpty else {
            throw CAError("cannot read the CA token \(tokenFile)")
        }
        return token
    }

    /// Sends `csr` (PEM) and returns the chain istiod issued: leaf first, the last entry the root(s).
    public func createCertificate(csr: String, token: String) throws(CAError) -> [String] {
        guard let root = readTextFile(rootFile), !root.trimmingWhitespace().isEmpty else {
            throw CAError("cannot read the mesh root \(rootFile)")
        }
        let context: TLSContext
        do {
            context = try TLSContext(httpsClientTrusting: root, http2: true, source: rootFile)
        } catch {
            throw CAError("\(error)")
        }
        let answer = try UnaryCall.perform(
            host: host, port: port, serverName: serverName, context: context, path: Self.method,
            metadata: [("authorization", "Bearer " + token), ("clusterid", clusterID)],
            message: Self.request(csr: csr, validitySeconds: validitySeconds), timeout: timeout)
        return try Self.chain(from: answer)
    }

    /// `IstioCertificateRequest`: `csr` = 1, `validity_duration` = 3 (`metadata` = 4 is not needed).
    static func request(csr: String, validitySeconds: Int64) -> [UInt8] {
        var message = ProtobufWriter()
        message.string(1, csr)
        message.int64(3, validitySeconds)
        return message.bytes
    }

    /// `IstioCertificateResponse.cert_chain` (= 1, repeated string); other fields are skipped.
    public static func chain(from answer: [UInt8]) throws(CAError) -> [String] {
        let chain: [String]
        do {
            chain = try certChain(answer)
        } catch {
            throw CAError("malformed answer: \(error)")
        }
        guard chain.count >= 2 else { throw CAError("the answer holds \(chain.count) certificate(s), not a leaf and a root") }
        return chain
    }

    private static func certChain(_ answer: [UInt8]) throws(ProtobufReader.Malformed) -> [String] {
        var reader = ProtobufReader(answer[...])
        var chain: [String] = []
        while let (field, value) = try reader.next() {
            guard field == 1 else { continue }
            guard case .lengthDelimited(let bytes) = value else {
                throw ProtobufReader.Malformed(description: "cert_chain is not a string")
            }
            chain.append(String(decoding: bytes, as: UTF8.self))
        }
        return chain
    }
}

/// The namespace and service account a Kubernetes service-account token was issued to, from its `sub` claim
/// (`system:serviceaccount:NS:SA`). The signature is not checked here: istiod checks it with a TokenReview.
public func serviceAccount(ofToken token: String) throws(CAError) -> (namespace: String, name: String) {
    let parts = token.split(separator: ".", omittingEmptySubsequences: false)
    guard parts.count == 3, let payload = base64Decoded(parts[1]) else { throw CAError("the CA token is not a JWT") }
    let claims: JSON
    do {
        claims = try payload.withUnsafeBytes { (bytes) throws(JSONError) in try JSON.parse(bytes) }
    } catch {
        throw CAError("the CA token's claims are not JSON: \(error)")
    }
    let subject = claims["sub"]?.string ?? ""
    let fields = subject.split(separator: ":", omittingEmptySubsequences: false)
    guard fields.count == 4, fields[0] == "system", fields[1] == "serviceaccount", !fields[2].isEmpty, !fields[3].isEmpty else {
        throw CAError("the CA token's subject \"\(subject)\" is not system:serviceaccount:NAMESPACE:NAME")
    }
    return (String(fields[2]), String(fields[3]))
}
