/// A value a flag can take: parsed from the flag's text, shown in help.
public protocol FlagValue {
    init?(flag: String)
    /// How help shows the value (a default, say).
    var flagDescription: String { get }
}

extension String: FlagValue {
    public init?(flag: String) { self = flag }
    public var flagDescription: String { self }
}

extension Int: FlagValue {
    public init?(flag: String) { self.init(flag, radix: 10) }
    public var flagDescription: String { String(self) }
}

extension UInt16: FlagValue {
    public init?(flag: String) { self.init(flag, radix: 10) }
    public var flagDescription: String { String(self) }
}

extension Double: FlagValue {
    public init?(flag: String) {
        guard let value = Double(flag), value.isFinite else { return nil }
        self = value
    }
    public var flagDescription: String { String(self) }
}

/// A flag whose values are an enum's raw values; help lists them.
public protocol FlagChoice: FlagValue, CaseIterable, RawRepresentable where RawValue == String {}

extension FlagChoice {
    public init?(flag: String) { self.init(rawValue: flag) }
    public var flagDescription: String { rawValue }
}

/// How a flag is spelt on the command line: `--kebab-case-name`, or `-x` (the name's first letter).
public enum FlagSpelling: Sendable {
    case long, short
}

/// One flag of a command, as the parser sees it.
protocol AnyFlag: AnyObject {
    var spelling: FlagSpelling { get }
    var help: String { get }
    /// False for a Boolean switch (`@Switch`), which takes no value.
    var takesValue: Bool { get }
    var repeatable: Bool { get }
    var required: Bool { get }
    /// The default as help shows it (nil: none).
    var defaultDescription: String? { get }
    /// The choices as help shows them (empty: any text).
    var choices: [String] { get }
    var given: Bool { get }
    /// Takes one occurrence's text; false when it is not a valid value.
    func accept(_ text: String) -> Bool
}

/// The parsed value of one flag and what help says about it. Storage is a class so that the parser, which finds
/// flags by reflection, can fill a command struct's flags in place.
final class FlagStorage<Value>: AnyFlag {
    var value: Value?
    let spelling: FlagSpelling
    let help: String
    let takesValue: Bool
    let repeatable: Bool
    let defaultDescription: String?
    let choices: [String]
    private(set) var given = false
    private let parse: (String, _ current: Value?, _ first: Bool) -> Value?

    init(
        value: Value?, spelling: FlagSpelling, help: String, takesValue: Bool = true, repeatable: Bool = false,
        defaultDescription: String?, choices: [String] = [], parse: @escaping (String, Value?, Bool) -> Value?
    ) {
        (self.value, self.spelling, self.help, self.takesValue, self.repeatable) = (value, spelling, help, takesValue, repeatable)
        (self.defaultDescription, self.choices, self.parse) = (defaultDescription, choices, parse)
    }

    /// Only a flag declared without a value starts out nil (an Optional one starts as `.some(nil)`).
    var required: Bool { value == nil }

    func accept(_ text: String) -> Bool {
        guard let parsed = parse(text, value, !given) else { return false }
        value = parsed
        given = true
        return true
    }
}

/// Choices of a value type, for help.
private func choices<T>(of type: T.Type) -> [String] {
    guard let choice = type as? any FlagChoice.Type else { return [] }
    return choice.allCaseNames
}

extension FlagChoice {
    fileprivate static var allCaseNames: [String] { allCases.map(\.rawValue) }
}

/// A flag with a value: `--name VALUE` (or `--name=VALUE`); repeatable when its type is an array, optional when
/// it is an Optional, required when it has neither a default nor Optional type.
@propertyWrapper
public struct Option<Value> {
    let storage: FlagStorage<Value>

    public var wrappedValue: Value { storage.value! }

    public init(wrappedValue: Value, name: FlagSpelling = .long, help: String) where Value: FlagValue {
        storage = FlagStorage(
            value: wrappedValue, spelling: name, help: help, defaultDescription: wrappedValue.flagDescription,
            choices: choices(of: Value.self)
        ) { text, _, _ in Value(flag: text) }
    }

    public init(name: FlagSpelling = .long, help: String) where Value: FlagValue {
        storage = FlagStorage(value: nil, spelling: name, help: help, defaultDescription: nil, choices: choices(of: Value.self)) {
            text, _, _ in Value(flag: text)
        }
    }

    public init<Wrapped: FlagValue>(wrappedValue: Value = nil, name: FlagSpelling = .long, help: String) where Value == Wrapped? {
        storage = FlagStorage(
            value: .some(wrappedValue), spelling: name, help: help, defaultDescription: wrappedValue?.flagDescription,
            choices: choices(of: Wrapped.self)
        ) { text, _, _ in Wrapped(flag: text).map { .some($0) } }
    }

    /// Repeatable: each occurrence adds a value; the first replaces the default.
    public init<Element: FlagValue>(wrappedValue: Value = [], name: FlagSpelling = .long, help: String) where Value == [Element] {
        storage = FlagStorage(
            value: wrappedValue, spelling: name, help: help, repeatable: true,
            defaultDescription: wrappedValue.isEmpty ? nil : wrappedValue.map(\.flagDescription).joined(separator: ","),
            choices: choices(of: Element.self)
        ) { text, current, first in
            Element(flag: text).map { (first ? [] : current ?? []) + [$0] }
        }
    }
}

/// A Boolean switch: `--name` turns it on.
@propertyWrapper
public struct Switch {
    let storage: FlagStorage<Bool>

    public var wrappedValue: Bool { storage.value! }

    public init(wrappedValue: Bool = false, name: FlagSpelling = .long, help: String) {
        storage = FlagStorage(value: wrappedValue, spelling: name, help: help, takesValue: false, defaultDescription: nil) {
            text, _, _ in text == "true" || text == "1" ? true : text == "false" || text == "0" ? false : nil
        }
    }
}

/// Flags shared by several commands, declared once in a `FlagSet` and included with `@Flags`.
@propertyWrapper
public struct Flags<Group: FlagSet> {
    public let wrappedValue: Group

    public init() { wrappedValue = Group() }
}

/// A type whose stored `@Option`, `@Switch` and `@Flags` properties are its flags.
public protocol FlagSet {
    init()
}

extension FlagSet {
    /// The flags by name (kebab case of the property name, or its first letter for `.short`), in declaration order.
    func flags() -> [(name: String, flag: any AnyFlag)] {
        var result: [(String, any AnyFlag)] = []
        for child in Mirror(reflecting: self).children {
            let label = String((child.label ?? "").drop { $0 == "_" })
            if let group = child.value as? any FlagGroup {
                result += group.members()
            } else if let flag = (child.value as? any FlagHolder)?.flag {
                let name = flag.spelling == .short ? String(label.prefix(1)) : kebabCase(label)
                result.append((name, flag))
            }
        }
        return result
    }
}

protocol FlagHolder { var flag: any AnyFlag { get } }
extension Option: FlagHolder { var flag: any AnyFlag { storage } }
extension Switch: FlagHolder { var flag: any AnyFlag { storage } }

protocol FlagGroup { func members() -> [(name: String, flag: any AnyFlag)] }
extension Flags: FlagGroup { func members() -> [(name: String, flag: any AnyFlag)] { wrappedValue.flags() } }

/// `sourceIP` → `source-ip`, `httpListen` → `http-listen`, `caServerName` → `ca-server-name`.
func kebabCase(_ name: String) -> String {
    let characters = Array(name)
    var result = ""
    for (i, c) in characters.enumerated() {
        if c.isUppercase && i > 0 {
            let previous = characters[i - 1]
            let nextIsLower = i + 1 < characters.count && characters[i + 1].isLowercase
            if previous.isLowercase || previous.isNumber || (previous.isUppercase && nextIsLower) { result.append("-") }
        }
        result.append(contentsOf: c.lowercased())
    }
    return result
}
