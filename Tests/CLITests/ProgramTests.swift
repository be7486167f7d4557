import Testing

@testable import CLI

/// A command with one flag of each kind.
struct Serve: Command {
    static let name = "serve"
    static let abstract = "Serve."

    @Option(help: "Listen address.")
    var listen = "0.0.0.0:80"

    @Option(help: "Files (repeatable).")
    var config: [String] = []

    @Option(help: "Worker threads.")
    var workers: Int?

    @Option(help: "Source IP.")
    var sourceIP = "10.0.0.1"

    @Option(name: .short, help: "Connections.")
    var connections = 4

    @Option(help: "Log level.")
    var level = Level.info

    @Switch(help: "Churn.")
    var churn = false

    func validate() throws {
        if let workers, workers < 1 { throw UsageError("--workers must be at least 1") }
    }

    func run() throws {}
}

enum Level: String, FlagChoice {
    case info, debug
}

struct Other: Command {
    static let name = "other"
    static let abstract = "Other."
    @Option(help: "Required.")
    var target: String
    func run() throws {}
}

var program: Program {
    Program(
        name: "tool", abstract: "A tool.", commands: [Serve.self, Other.self], defaultCommand: Serve.self, environmentPrefix: "TOOL_")
}

func parsed<T: Command>(_ arguments: [String], environment: [String: String] = [:], as type: T.Type = Serve.self) -> T? {
    guard case .run(let command) = program.parse(arguments, environment: environment) else { return nil }
    return command as? T
}

func failure(_ arguments: [String], environment: [String: String] = [:]) -> String? {
    guard case .exit(let text, let status) = program.parse(arguments, environment: environment), status == 64 else { return nil }
    return text
}

@Test func defaultsWithoutArguments() throws {
    let serve = try #require(parsed([]))
    #expect(serve.listen == "0.0.0.0:80" && serve.config == [] && serve.workers == nil && serve.connections == 4)
    #expect(serve.level == .info && !serve.churn && serve.sourceIP == "10.0.0.1")
}

@Test func everySpelling() throws {
    let serve = try #require(
        parsed([
            "serve", "--listen", "127.0.0.1:1", "--config", "a", "--config=b", "--workers", "3", "--source-ip", "10.1.1.1", "-c", "9",
            "--level", "debug", "--churn",
        ]))
    #expect(serve.listen == "127.0.0.1:1" && serve.config == ["a", "b"] && serve.workers == 3 && serve.sourceIP == "10.1.1.1")
    #expect(serve.connections == 9 && serve.level == .debug && serve.churn)
}

@Test func theDefaultSubcommandTakesFlagsDirectly() throws {
    #expect(try #require(parsed(["--workers", "2"])).workers == 2)
}

@Test func theEnvironmentFillsFlagsTheCommandLineLeftOut() throws {
    let environment = ["TOOL_LISTEN": "1.2.3.4:5", "TOOL_CONFIG": "x,y", "TOOL_WORKERS": "7", "TOOL_SOURCE_IP": "10.9.9.9"]
    let serve = try #require(parsed(["--workers", "2"], environment: environment))
    #expect(serve.listen == "1.2.3.4:5" && serve.config == ["x", "y"] && serve.workers == 2 && serve.sourceIP == "10.9.9.9")
    #expect(
        failure([], environment: ["TOOL_WORKERS": "many"])?.contains("'many' is invalid for '--workers <workers>' (from TOOL_WORKERS)")
            == true)
}

@Test func mistakesAreUsageErrorsNamingTheFlag() {
    #expect(failure(["--nope"])?.hasPrefix("Error: unknown option '--nope'\nSee 'tool serve --help'.") == true)
    #expect(failure(["--workers"])?.contains("missing value for '--workers'") == true)
    #expect(failure(["--workers", "x"])?.contains("the value 'x' is invalid for '--workers <workers>'") == true)
    #expect(failure(["--level", "loud"])?.contains("invalid for '--level <level>' (one of: info, debug)") == true)
    #expect(failure(["--workers", "0"])?.contains("Error: --workers must be at least 1") == true)
    #expect(failure(["stray"])?.contains("unexpected argument 'stray'") == true)
    #expect(failure(["other"])?.contains("missing '--target <target>'") == true)
    #expect(parsed(["other", "--target", "t"], as: Other.self)?.target == "t")
}

@Test func helpListsEveryFlagWithItsDefault() throws {
    guard case .exit(let text, 0) = program.parse(["serve", "--help"], environment: [:]) else {
        Issue.record("no help")
        return
    }
    #expect(text.contains(row("--listen <listen>", "Listen address. (default: 0.0.0.0:80)")))
    #expect(text.contains(row("--level <level>", "Log level. (values: info, debug) (default: info)")))
    #expect(text.contains(row("-c <c>", "Connections. (default: 4)")))
    #expect(text.contains(row("--churn", "Churn.")))
    #expect(text.contains(row("--config <config>", "Files (repeatable).")))
    guard case .exit(let top, 0) = program.parse(["help"], environment: [:]) else {
        Issue.record("no help")
        return
    }
    #expect(top.contains(row("serve (default)", "Serve.")) && top.contains(row("other", "Other.")))
}

/// A help line: the label indented by two, the help at column 28.
func row(_ label: String, _ help: String) -> String {
    "  " + label + String(repeating: " ", count: 26 - label.count) + help + "\n"
}

@Test func kebabCaseKeepsAcronymsTogether() {
    #expect(kebabCase("sourceIP") == "source-ip" && kebabCase("httpListen") == "http-listen")
    #expect(kebabCase("upstreamHbonePort") == "upstream-hbone-port" && kebabCase("ca") == "ca")
}
