/// Base64 (RFC 4648) in both alphabets, standard (`+/`, kubeconfig data fields) and URL-safe (`-_`, JWT
/// segments), with or without padding; line breaks and spaces are skipped. Nil for any other character.
public func base64Decoded(_ text: some StringProtocol) -> [UInt8]? {
    var bytes: [UInt8] = []
    var accumulator: UInt32 = 0
    var bits = 0
    for character in text.utf8 {
        let value: UInt8
        switch character {
        case 0x41...0x5A: value = character - 0x41  // A-Z
        case 0x61...0x7A: value = character - 0x61 + 26  // a-z
        case 0x30...0x39: value = character - 0x30 + 52  // 0-9
        case 0x2B, 0x2D: value = 62  // + -
        case 0x2F, 0x5F: value = 63  // / _
        case 0x3D, 0x0A, 0x0D, 0x20: continue  // padding, line breaks
        default: return nil
        }
        accumulator = accumulator << 6 | UInt32(value)
        bits += 6
        if bits >= 8 {
            bits -= 8
            bytes.append(UInt8(truncatingIfNeeded: accumulator >> UInt32(bits)))
        }
    }
    return bytes
}

/// Base64 (RFC 4648, standard alphabet, padded): a WebSocket handshake's key.
public func base64Encoded(_ bytes: [UInt8]) -> String {
    let table = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)
    var out: [UInt8] = []
    out.reserveCapacity((bytes.count + 2) / 3 * 4)
    var i = 0
    while i < bytes.count {
        let chunk = bytes[i..<min(i + 3, bytes.count)]
        var value = 0
        for (j, byte) in chunk.enumerated() { value |= Int(byte) << (16 - 8 * j) }
        for j in 0..<4 { out.append(j <= chunk.count ? table[(value >> (18 - 6 * j)) & 63] : 0x3D) }
        i += 3
    }
    return String(decoding: out, as: UTF8.self)
}
