/// A JSON document built in code and rendered as indented text: what `/config_dump` serves.
///
/// Written here rather than with Foundation's JSONSerialization, which costs ~3 MiB of resident memory in a
/// static binary for one rarely used endpoint. Keys keep their insertion order.
public indirect enum JSONValue: Sendable, Equatable {
    case string(String)
    case int(Int)
    case array([JSONValue])
    case object([(String, JSONValue)])

    public static func == (a: JSONValue, b: JSONValue) -> Bool { a.rendered() == b.rendered() }

    /// Two-space indented JSON.
    public func rendered() -> String {
        var out = ""
        render(into: &out, indent: "")
        return out
    }

    private func render(into out: inout String, indent: String) {
        switch self {
        case .string(let s): Self.quote(s, into: &out)
        case .int(let n): out += String(n)
        case .array(let items):
            guard !items.isEmpty else { out += "[]"; return }
            out += "[\n"
            for (i, item) in items.enumerated() {
                out += indent + "  "
                item.render(into: &out, indent: indent + "  ")
                out += i + 1 < items.count ? ",\n" : "\n"
            }
            out += indent + "]"
        case .object(let fields):
            guard !fields.isEmpty else { out += "{}"; return }
            out += "{\n"
            for (i, (key, value)) in fields.enumerated() {
                out += indent + "  "
                Self.quote(key, into: &out)
                out += ": "
                value.render(into: &out, indent: indent + "  ")
                out += i + 1 < fields.count ? ",\n" : "\n"
            }
            out += indent + "}"
        }
    }

    private static func quote(_ s: String, into out: inout String) {
        out += "\""
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if scalar.value < 0x20 {
                    let hex = String(scalar.value, radix: 16)
                    out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        out += "\""
    }
}
