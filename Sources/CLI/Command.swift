/// A subcommand: its flags (a `FlagSet`), what help says about it, and what it does.
public protocol Command: FlagSet {
    static var name: String { get }
    static var abstract: String { get }
    /// More help, printed after the flags (optional).
    static var discussion: String { get }
    /// Checks the flags together, after each was parsed; throw `UsageError`.
    func validate() throws
    func run() throws
}

extension Command {
    public static var discussion: String { "" }
    public func validate() throws {}
}

/// A command line the user got wrong: printed with a pointer to `--help`, exit status 64 (EX_USAGE).
public struct UsageError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// Ends the process with this status (the command has already said why); the program's `main` exits with it.
public struct ExitCode: Error {
    public let status: Int32
    public init(_ status: Int32) { self.status = status }
}

/// A program of subcommands: `PROGRAM [SUBCOMMAND] [FLAGS]`, the default subcommand when the first argument
/// names none. Every flag can also come from the environment as `PREFIX<FLAG>` (upper case, `-` → `_`; a
/// repeatable flag takes a comma-separated list); the command line wins.
public struct Program {
    public let name: String
    public let abstract: String
    public let commands: [any Command.Type]
    public let defaultCommand: any Command.Type
    public let environmentPrefix: String

    public init(
        name: String, abstract: String, commands: [any Command.Type], defaultCommand: any Command.Type, environmentPrefix: String
    ) {
        (self.name, self.abstract, self.commands, self.defaultCommand) = (name, abstract, commands, defaultCommand)
        self.environmentPrefix = environmentPrefix
    }

    /// What running `arguments` (without the program name) leads to.
    public enum Outcome {
        case run(any Command)
        /// Help or an error to print (on stdout or stderr), and the exit status.
        case exit(text: String, status: Int32)
    }

    /// Parses `arguments` and the environment into a command ready to run, or the text to print instead.
    public func parse(_ arguments: [String], environment: [String: String]) -> Outcome {
        var arguments = arguments
        if arguments.first == "help" || arguments == ["--help"] || arguments == ["-h"] {
            if arguments.count > 1, let command = commands.first(where: { $0.name == arguments[1] }) {
                return .exit(text: help(command), status: 0)
            }
            return .exit(text: help(), status: 0)
        }
        var type = defaultCommand
        if let first = arguments.first, let named = commands.first(where: { $0.name == first }) {
            type = named
            arguments.removeFirst()
        }
        if arguments.contains("--help") || arguments.contains("-h") { return .exit(text: help(type), status: 0) }
        do {
            let command = try parse(type, arguments, environment: environment)
            try command.validate()
            return .run(command)
        } catch {
            return .exit(text: "Error: \(error)\nSee '\(name) \(type.name) --help'.\n", status: 64)
        }
    }

    private func parse(_ type: any Command.Type, _ arguments: [String], environment: [String: String]) throws(UsageError)
        -> any Command
    {
        let command = type.init()
        let flags = command.flags()
        func flag(_ spelt: Substring) -> (String, any AnyFlag)? {
            if spelt.hasPrefix("--") { return flags.first { $0.flag.spelling == .long && $0.name == spelt.dropFirst(2) } }
            return flags.first { $0.flag.spelling == .short && $0.name == spelt.dropFirst() }
        }
        var index = 0
        while index < arguments.count {
            let argument = arguments[index]
            index += 1
            guard argument.hasPrefix("-"), argument.count > 1 else { throw UsageError("unexpected argument '\(argument)'") }
            let parts = argument.split(separator: "=", maxSplits: 1)
            guard let (name, found) = flag(parts[0]) else { throw UsageError("unknown option '\(parts[0])'") }
            let text: String
            if parts.count == 2 {
                text = String(parts[1])
            } else if !found.takesValue {
                text = "true"
            } else if index < arguments.count {
                text = arguments[index]
                index += 1
            } else {
                throw UsageError("missing value for '\(parts[0])'")
            }
            guard found.accept(text) else { throw Self.invalid(text, name, found) }
        }
        for (name, found) in flags where !found.given && found.spelling == .long {
            let variable = environmentPrefix + String(name.uppercased().map { $0 == "-" ? "_" : $0 })
            guard let value = environment[variable], !value.isEmpty else { continue }
            for text in found.repeatable ? value.split(separator: ",").map(String.init) : [value] {
                guard found.accept(text) else { throw UsageError("\(Self.invalid(text, name, found)) (from \(variable))") }
            }
        }
        if let (name, missing) = flags.first(where: { $0.flag.required && !$0.flag.given }) {
            throw UsageError("missing '\(spelt(name, missing))'")
        }
        return command
    }

    private static func invalid(_ text: String, _ name: String, _ flag: any AnyFlag) -> UsageError {
        let choices = flag.choices.isEmpty ? "" : " (one of: \(flag.choices.joined(separator: ", ")))"
        return UsageError("the value '\(text)' is invalid for '\(spelt(name, flag))'\(choices)")
    }

    // MARK: - Help

    /// The program's help: its subcommands.
    public func help() -> String {
        var text = "OVERVIEW: \(abstract)\n\nUSAGE: \(name) <subcommand>\n\nSUBCOMMANDS:\n"
        for command in commands {
            let suffix = ObjectIdentifier(command) == ObjectIdentifier(defaultCommand) ? " (default)" : ""
            text += Self.column("  " + command.name + suffix, command.abstract)
        }
        text += "\n  See '\(name) help <subcommand>' for detailed help.\n"
        return text
    }

    /// One subcommand's help: every flag with its help, choices and default.
    public func help(_ type: any Command.Type) -> String {
        var text = "OVERVIEW: \(type.abstract)\n\nUSAGE: \(name) \(type.name) [<options>]\n\nOPTIONS:\n"
        for (name, flag) in type.init().flags() {
            var help = flag.help
            if !flag.choices.isEmpty { help += " (values: \(flag.choices.joined(separator: ", ")))" }
            if let value = flag.defaultDescription { help += " (default: \(value))" }
            text += Self.column("  " + spelt(name, flag), help)
        }
        text += Self.column("  -h, --help", "Show help information.")
        if !type.discussion.isEmpty { text += "\n" + type.discussion + "\n" }
        if !environmentPrefix.isEmpty {
            text += "\nEvery flag can also be set in the environment as \(environmentPrefix)<FLAG> (e.g. \(environmentPrefix)LOG_LEVEL).\n"
        }
        return text
    }

    /// `label` padded to a column, then `help` (on the next line when the label is long).
    private static func column(_ label: String, _ help: String) -> String {
        let width = 28
        if label.count < width - 1 { return label + String(repeating: " ", count: width - label.count) + help + "\n" }
        return label + "\n" + String(repeating: " ", count: width) + help + "\n"
    }
}

/// `--name <name>`, `-c <c>`, or `--switch`.
private func spelt(_ name: String, _ flag: any AnyFlag) -> String {
    let dashes = flag.spelling == .short ? "-" : "--"
    return flag.takesValue ? "\(dashes)\(name) <\(name)>" : "\(dashes)\(name)"
}
