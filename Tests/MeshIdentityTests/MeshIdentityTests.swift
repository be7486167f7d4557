import TLS
import Testing
import WaypointCore

@testable import MeshIdentity

private func hex(_ text: String) -> [UInt8] {
    var bytes: [UInt8] = []
    var index = text.startIndex
    while index < text.endIndex {
        let next = text.index(index, offsetBy: 2)
        bytes.append(UInt8(text[index..<next], radix: 16)!)
        index = next
    }
    return bytes
}

/// The expected bytes were made by protobuf's own Python codec from ca.proto (Tests/EndToEnd/proto).
@Suite struct ProtobufWireTests {
    @Test func theCertificateRequestIsEncodedAsProtobufEncodesIt() {
        let csr = "-----BEGIN CERTIFICATE REQUEST-----\n"
        #expect(
            IstioCA.request(csr: csr, validitySeconds: 86_400)
                == hex("0a242d2d2d2d2d424547494e20434552544946494341544520524551554553542d2d2d2d2d0a1880a305"))
        var negative = ProtobufWriter()
        negative.string(1, "x")
        negative.int64(3, -1)  // ten bytes, as protobuf writes negative int64s
        #expect(negative.bytes == hex("0a017818ffffffffffffffffff01"))
    }

    @Test func theChainIsReadLeafFirstAndUnknownFieldsAreSkipped() throws {
        #expect(try IstioCA.chain(from: hex("0a046c6561660a04726f6f74")) == ["leaf", "root"])
        // A varint field 2, a fixed32 field 5, a nested message field 3 between the entries.
        let withUnknown = hex("0a046c656166" + "1096" + "01" + "2d01020304" + "1a020801" + "0a04726f6f74")
        #expect(try IstioCA.chain(from: withUnknown) == ["leaf", "root"])
    }

    @Test(arguments: [
        ("0a05616263", "runs past the end"),  // length 5, 3 bytes
        ("0aff", "varint runs past the end"),
        ("0b", "wire type 3"),
        ("08ffffffffffffffffffff01", "over 10 bytes"),
        ("00", "field number 0"),
        ("0d0102", "fixed-width field runs past the end"),
    ])
    func malformedAnswersAreErrors(bytes: String, why: String) {
        #expect(throws: CAError.self) { try IstioCA.chain(from: hex(bytes)) }
        var reader = ProtobufReader(hex(bytes)[...])
        do {
            while try reader.next() != nil {}
            Issue.record("no error for \(bytes)")
        } catch {
            #expect(error.description.contains(why), "\(error)")
        }
    }

    @Test func aChainWithoutARootIsRefused() {
        #expect(throws: CAError.self) { try IstioCA.chain(from: hex("0a046c656166")) }
    }
}

@Suite struct IdentityTests {
    private let token =
        "eyJhbGciOiJSUzI1NiJ9."
        + "eyJhdWQiOlsiaXN0aW8tY2EiXSwic3ViIjoic3lzdGVtOnNlcnZpY2VhY2NvdW50OmFwcHM6d2F5cG9pbnQifQ.c2ln"

    @Test func theServiceAccountComesFromTheTokensSubject() throws {
        let account = try serviceAccount(ofToken: token)
        #expect(account.namespace == "apps" && account.name == "waypoint")
    }

    @Test(arguments: ["no-dots", "a.!!!.c", "a.eyJzdWIiOiJib2IifQ.c"])
    func otherTokensAreRefused(token: String) {
        #expect(throws: CAError.self) { try serviceAccount(ofToken: token) }
    }

    @Test func base64URLDecodesWithAndWithoutPadding() {
        #expect(base64Decoded("aGk") == Array("hi".utf8))
        #expect(base64Decoded("aGk=") == Array("hi".utf8))
        #expect(base64Decoded("-_8") == [0xFB, 0xFF] && base64Decoded("+/8") == [0xFB, 0xFF])
        #expect(base64Decoded("a!b") == nil)
    }

    @Test func aCSRCarriesTheIdentityAndIsSignedByItsKey() throws {
        let csr = try PrivateKey().certificateRequest(uri: "spiffe://cluster.local/ns/apps/sa/waypoint")
        #expect(csr.hasPrefix("-----BEGIN CERTIFICATE REQUEST-----\n") && csr.hasSuffix("-----END CERTIFICATE REQUEST-----\n"))
    }

    @Test func certificateInfoReadsValiditySerialAndURIs() throws {
        let info = try CertificateInfo(pem: Self.certificate)
        #expect(info.notBefore == 1_767_225_600 && info.notAfter == 1_767_312_000)
        #expect(info.serial == "1F2E" && info.uris == ["spiffe://t/ns/a/sa/b"])
        #expect(throws: TLSError.self) { try CertificateInfo(pem: "not a certificate") }
    }

    @Test func renewalIsAtHalfTheLifeWithJitter() throws {
        let info = try CertificateInfo(pem: Self.certificate)
        let life = info.notAfter - info.notBefore
        #expect(CertificateAgent.renewal(of: info, jitter: 0) == info.notBefore + life / 2)
        #expect(CertificateAgent.renewal(of: info, jitter: 0.01) == info.notBefore + life * 0.51)
    }

    @Test func grpcMessagesArePercentDecoded() {
        #expect(percentDecoded("no%20such%3A %E2%9C%93 100%") == "no such: ✓ 100%")
        #expect(UnaryCall.statusName(16) == "UNAUTHENTICATED" && UnaryCall.statusName(99) == "status 99")
    }

    /// A self-signed certificate (made with Python's cryptography, P-256, serial 1F2E) valid 2026-01-01 to 2026-01-02, URI SAN spiffe://t/ns/a/sa/b.
    static let certificate = """
        -----BEGIN CERTIFICATE-----
        MIIBFDCBvKADAgECAgIfLjAKBggqhkjOPQQDAjAAMB4XDTI2MDEwMTAwMDAwMFoX
        DTI2MDEwMjAwMDAwMFowADBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABDJjCrkK
        LyQcPe4rvvi+1QHDDoIMfkZ9WF9ueASR9tZAYSV0mz203WfIChCVoL5unpRwhoqa
        tuS0QqNvYaNJfYajJjAkMCIGA1UdEQEB/wQYMBaGFHNwaWZmZTovL3QvbnMvYS9z
        YS9iMAoGCCqGSM49BAMCA0cAMEQCIHALLG0x6y79z0OT1G1qP1lGetrzXWBJvYLm
        4NaomH/2AiAowQ7sDX526LmhSiBpidP/IspkimTjI7z/mSQWhwlX3Q==
        -----END CERTIFICATE-----
        """
}
