import Testing
import WaypointCore

@Suite struct Base64Tests {
    /// RFC 4648 §10's vectors, and RFC 6455's example key.
    @Test(arguments: [
        ("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("fooba", "Zm9vYmE="), ("foobar", "Zm9vYmFy"),
    ])
    func encodesAsTheRFCSays(text: String, encoded: String) {
        #expect(base64Encoded(Array(text.utf8)) == encoded)
        #expect(base64Decoded(encoded) == Array(text.utf8))
    }

    @Test func aWebSocketKeyRoundTrips() {
        let nonce: [UInt8] = Array("the sample nonce".utf8)
        #expect(base64Encoded(nonce) == "dGhlIHNhbXBsZSBub25jZQ==")
        #expect(base64Decoded(base64Encoded([0xFB, 0xFF, 0xBF])) == [0xFB, 0xFF, 0xBF])  // + and / in the standard alphabet
        #expect(base64Encoded([0xFB, 0xFF, 0xBF]) == "+/+/")
    }
}
