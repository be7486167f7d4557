internal import CYAML

/// A YAML node, composed from libyaml's events with anchors resolved: what Kubernetes manifests are made of.
public enum YAMLNode: Sendable {
    case scalar(YAMLScalar)
    case sequence([YAMLNode])
    /// Entries in document order (a key written twice keeps both; readers take the first).
    case mapping([(key: YAMLNode, value: YAMLNode)])
}

public struct YAMLScalar: Sendable, Equatable {
    public var text: String
    /// Written without quotes: only plain scalars are numbers, booleans or null.
    public var isPlain: Bool
    /// YAML's null: an explicit `!!null`, or a plain `~`, `null`, `Null`, `NULL` or nothing at all.
    public var isNull: Bool

    public init(text: String, isPlain: Bool, isNull: Bool = false) {
        self.text = text
        self.isPlain = isPlain
        self.isNull = isNull
    }
}

/// Why a YAML stream cannot be read, with where (1-based line and column).
public struct YAMLError: Error, CustomStringConvertible {
    public let message: String
    public let line: Int
    public let column: Int

    public var description: String { "line \(line), column \(column): \(message)" }
}

/// The documents of one YAML stream, read one at a time (`---` separated).
///
/// Bounded against hostile input: nesting deeper than `maxDepth` and alias expansions beyond `maxAliasedNodes`
/// (the "billion laughs") are errors, not memory.
///
/// Thread: any one at a time. Ownership: the caller; the parser and its copy of the input are freed with it.
public final class YAMLDocuments {
    public static let maxDepth = 512
    public static let maxAliasedNodes = 1_000_000

    private let parser = UnsafeMutablePointer<yaml_parser_t>.allocate(capacity: 1)
    private let input: UnsafeMutableBufferPointer<UInt8>
    private var anchors: [String: (node: YAMLNode, size: Int)] = [:]
    private var aliasedNodes = 0
    private var finished = false

    public init(_ text: String) {
        input = .allocate(capacity: max(text.utf8.count, 1))
        _ = input.initialize(from: text.utf8)
        yaml_parser_initialize(parser)
        yaml_parser_set_input_string(parser, input.baseAddress, text.utf8.count)
    }

    deinit {
        yaml_parser_delete(parser)
        parser.deallocate()
        input.deallocate()
    }

    /// One node being composed: a sequence or mapping waiting for its end, with its anchor.
    private enum Open {
        case sequence([YAMLNode], anchor: String?, size: Int)
        case mapping([(key: YAMLNode, value: YAMLNode)], key: YAMLNode?, anchor: String?, size: Int)
    }

    /// The next document's root node, nil after the last document.
    public func next() throws(YAMLError) -> YAMLNode? {
        guard !finished else { return nil }
        // Up to the document's start.
        while true {
            var event = try nextEvent()
            defer { yaml_event_delete(&event) }
            switch event.type {
            case YAML_STREAM_END_EVENT:
                finished = true
                return nil
            case YAML_DOCUMENT_START_EVENT:
                break
            default:
                continue
            }
            break
        }
        anchors.removeAll()
        var open: [Open] = []
        var root: YAMLNode?
        while root == nil {
            var event = try nextEvent()
            defer { yaml_event_delete(&event) }
            var done: (node: YAMLNode, anchor: String?, size: Int)?
            switch event.type {
            case YAML_SCALAR_EVENT:
                let scalar = event.data.scalar
                let text = String(decoding: UnsafeBufferPointer(start: scalar.value, count: scalar.length), as: UTF8.self)
                let tag = scalar.tag.map { String(cString: $0) }
                let plain = scalar.style == YAML_PLAIN_SCALAR_STYLE
                let isNull = tag == "tag:yaml.org,2002:null" || (tag == nil && plain && Self.nullWords.contains(text))
                done = (.scalar(YAMLScalar(text: text, isPlain: plain, isNull: isNull)), Self.string(scalar.anchor), 1)
            case YAML_ALIAS_EVENT:
                let name = Self.string(event.data.alias.anchor) ?? ""
                guard let anchored = anchors[name] else { throw error(event, "unknown alias *\(name)") }
                aliasedNodes += anchored.size
                guard aliasedNodes <= Self.maxAliasedNodes else { throw error(event, "aliases expand to too many nodes") }
                done = (anchored.node, nil, anchored.size)
            case YAML_SEQUENCE_START_EVENT, YAML_MAPPING_START_EVENT:
                guard open.count < Self.maxDepth else { throw error(event, "nested deeper than \(Self.maxDepth) levels") }
                if event.type == YAML_SEQUENCE_START_EVENT {
                    open.append(.sequence([], anchor: Self.string(event.data.sequence_start.anchor), size: 1))
                } else {
                    open.append(.mapping([], key: nil, anchor: Self.string(event.data.mapping_start.anchor), size: 1))
                }
            case YAML_SEQUENCE_END_EVENT, YAML_MAPPING_END_EVENT:
                switch open.removeLast() {
                case .sequence(let items, let anchor, let size): done = (.sequence(items), anchor, size)
                case .mapping(let entries, _, let anchor, let size): done = (.mapping(entries), anchor, size)
                }
            default:
                throw error(event, "unexpected event")
            }
            guard let (node, anchor, size) = done else { continue }
            if let anchor { anchors[anchor] = (node, size) }
            guard let parent = open.popLast() else {
                root = node
                break
            }
            switch parent {
            case .sequence(var items, let anchor, let total):
                items.append(node)
                open.append(.sequence(items, anchor: anchor, size: total + size))
            case .mapping(var entries, let key, let anchor, let total):
                if let key {
                    entries.append((key, node))
                    open.append(.mapping(entries, key: nil, anchor: anchor, size: total + size))
                } else {
                    open.append(.mapping(entries, key: node, anchor: anchor, size: total + size))
                }
            }
        }
        var end = try nextEvent()  // the document's end
        yaml_event_delete(&end)
        return root
    }

    private static let nullWords: Set<String> = ["", "~", "null", "Null", "NULL"]

    private func nextEvent() throws(YAMLError) -> yaml_event_t {
        var event = yaml_event_t()
        guard yaml_parser_parse(parser, &event) != 0 else {
            finished = true
            let mark = parser.pointee.problem_mark
            var message = parser.pointee.problem.map { String(cString: $0) } ?? "malformed YAML"
            if let context = parser.pointee.context.map({ String(cString: $0) }) { message += " \(context)" }
            throw YAMLError(message: message, line: mark.line + 1, column: mark.column + 1)
        }
        return event
    }

    private func error(_ event: yaml_event_t, _ message: String) -> YAMLError {
        finished = true
        return YAMLError(message: message, line: event.start_mark.line + 1, column: event.start_mark.column + 1)
    }

    private static func string(_ pointer: UnsafeMutablePointer<yaml_char_t>?) -> String? {
        pointer.map { String(cString: $0) }
    }
}
