import Testing
import YAML

/// Every document of `text`, or the error that stopped the reading.
private func documents(_ text: String) -> Result<[YAMLNode], YAMLError> {
    let reader = YAMLDocuments(text)
    var result: [YAMLNode] = []
    do throws(YAMLError) {
        while let node = try reader.next() { result.append(node) }
    } catch {
        return .failure(error)
    }
    return .success(result)
}

private func scalar(_ node: YAMLNode?) -> YAMLScalar? {
    if case .scalar(let s) = node { return s }
    return nil
}

private func value(_ node: YAMLNode, _ key: String) -> YAMLNode? {
    guard case .mapping(let entries) = node else { return nil }
    return entries.first { scalar($0.key)?.text == key }?.value
}

@Suite struct YAMLDocumentsTests {
    @Test func readsEveryDocumentInOrder() throws {
        let docs = try documents("a: 1\n---\nb: two\n---\n- x\n- y\n").get()
        #expect(docs.count == 3)
        #expect(scalar(value(docs[0], "a"))?.text == "1")
        #expect(scalar(value(docs[1], "b"))?.text == "two")
        guard case .sequence(let items) = docs[2] else { Issue.record("expected a list"); return }
        #expect(items.compactMap { scalar($0)?.text } == ["x", "y"])
    }

    @Test func plainQuotedAndNull() throws {
        let doc = try #require(
            try documents("port: 80\nquoted: \"80\"\nsingle: '80'\nnone:\ntilde: ~\nword: null\nbang: !!null x\nempty: ''\n").get().first)
        #expect(scalar(value(doc, "port")) == YAMLScalar(text: "80", isPlain: true))
        #expect(scalar(value(doc, "quoted")) == YAMLScalar(text: "80", isPlain: false))
        #expect(scalar(value(doc, "single"))?.isPlain == false)
        for key in ["none", "tilde", "word", "bang"] { #expect(scalar(value(doc, key))?.isNull == true, "\(key)") }
        #expect(scalar(value(doc, "empty"))?.isNull == false)  // quoted: an empty string, not null
    }

    @Test func blockAndFlowCollectionsKeepDocumentOrder() throws {
        let doc = try #require(try documents("m: {z: 1, a: 2}\nl: [3, {k: v}]\nblock: |\n  line 1\n  line 2\n").get().first)
        guard case .mapping(let m) = value(doc, "m") else { Issue.record("expected a mapping"); return }
        #expect(m.compactMap { scalar($0.key)?.text } == ["z", "a"])
        guard case .sequence(let l) = value(doc, "l") else { Issue.record("expected a list"); return }
        #expect(l.count == 2)
        #expect(scalar(value(l[1], "k"))?.text == "v")
        #expect(scalar(value(doc, "block")) == YAMLScalar(text: "line 1\nline 2\n", isPlain: false))
    }

    @Test func anchorsAndAliases() throws {
        let doc = try #require(try documents("base: &b {port: 80}\ncopy: *b\n").get().first)
        #expect(scalar(value(try #require(value(doc, "copy")), "port"))?.text == "80")
    }

    @Test func unknownAliasIsAnError() {
        guard case .failure(let error) = documents("a: *nowhere\n") else { Issue.record("expected an error"); return }
        #expect(error.message.contains("nowhere"))
    }

    @Test func syntaxErrorsSayWhere() {
        guard case .failure(let error) = documents("apiVersion: v1\nkind: [unclosed\n") else {
            Issue.record("expected an error")
            return
        }
        #expect(error.line == 3)
        #expect(error.description.hasPrefix("line 3, column"))
    }

    @Test func emptyStreamHasNoDocuments() throws {
        #expect(try documents("").get().isEmpty)
        #expect(try documents("# only a comment\n").get().isEmpty)
    }

    /// The "billion laughs": each level refers to the one before ten times.
    @Test func aliasExpansionIsBounded() {
        var text = "l0: &l0 [x, x, x, x, x, x, x, x, x, x]\n"
        for level in 1...9 {
            let previous = Array(repeating: "*l\(level - 1)", count: 10).joined(separator: ", ")
            text += "l\(level): &l\(level) [\(previous)]\n"
        }
        guard case .failure(let error) = documents(text) else { Issue.record("expected an error"); return }
        #expect(error.message.contains("too many nodes"))
    }

    @Test func nestingIsBounded() throws {
        let deep = String(repeating: "[", count: YAMLDocuments.maxDepth + 1) + String(repeating: "]", count: YAMLDocuments.maxDepth + 1)
        guard case .failure(let error) = documents(deep) else { Issue.record("expected an error"); return }
        #expect(error.message.contains("nested deeper"))
        #expect(try documents(String(repeating: "[", count: 100) + String(repeating: "]", count: 100)).get().count == 1)
    }
}
