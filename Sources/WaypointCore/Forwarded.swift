/// The `Forwarded` header (RFC 7239) as HBONE uses it: ztunnel sends `for="<client ip:port>";host=<fqdn>` on
/// each CONNECT, which is the only place the original client address survives the tunnel.
public enum Forwarded {
    /// The `for=` value of the first element (quotes and IPv6 brackets kept as in `[v6]:port`), nil when absent
    /// or obfuscated (`unknown`, `_hidden`).
    public static func firstFor(_ value: UnsafeRawBufferPointer) -> String? {
        let text = String(decoding: value, as: UTF8.self)
        guard let first = text.split(separator: ",", omittingEmptySubsequences: false).first else { return nil }
        for pair in first.split(separator: ";") {
            let trimmed = pair.drop { $0 == " " || $0 == "\t" }
            guard trimmed.count > 4, trimmed.prefix(4).lowercased() == "for=" else { continue }
            var address = trimmed.dropFirst(4)
            while address.last == " " || address.last == "\t" { address = address.dropLast() }
            if address.count >= 2, address.first == "\"", address.last == "\"" { address = address.dropFirst().dropLast() }
            guard !address.isEmpty, address != "unknown", address.first != "_" else { return nil }
            return String(address)
        }
        return nil
    }
}
