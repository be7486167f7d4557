import JSON
import Testing

@testable import Kubernetes

private let kind = WatchedKind(group: "", version: "v1", resource: "services", kind: "Service", namespace: "default")

private func json(_ text: String) -> JSONDocument { try! JSONDocument.parse(text) }

private func item(_ name: String, _ version: String, port: Int = 80) -> String {
    #"{"metadata":{"name":"\#(name)","namespace":"default","resourceVersion":"\#(version)"},"spec":{"ports":[{"port":\#(port)}]}}"#
}

@Suite struct WatchCacheTests {
    @Test func aPagedListIsHandedOverWholeAndStampedWithItsKind() throws {
        var cache = WatchCache(kind: kind)
        let first = json(#"{"metadata":{"resourceVersion":"10","continue":"tok"},"items":[\#(item("a", "5"))]}"#)
        #expect(try cache.receivedPage(first, first: true) == .listPage("tok"))
        #expect(cache.count == 0 && !cache.synced && cache.takeList().isEmpty)  // nothing half-listed is served
        let last = json(#"{"metadata":{"resourceVersion":"10"},"items":[\#(item("b", "7"))]}"#)
        #expect(try cache.receivedPage(last, first: false) == .watch)
        #expect(cache.synced && cache.resourceVersion == "10")
        let list = cache.takeList()
        #expect(list.keys.sorted() == ["default/a", "default/b"] && cache.keys.sorted() == ["default/a", "default/b"])
        #expect(list["default/a"]?.root["kind"]?.json == .string("Service"))
        #expect(list["default/a"]?.root["apiVersion"]?.json == .string("v1"))
        #expect(cache.takeList().isEmpty)  // handed over once
    }

    @Test func eventsAddModifyDeleteAndMoveTheResourceVersion() throws {
        var cache = WatchCache(kind: kind)
        _ = try cache.receivedPage(json(#"{"metadata":{"resourceVersion":"10"},"items":[]}"#), first: true)
        let added = try cache.receivedEvent(json(#"{"type":"ADDED","object":\#(item("a", "11"))}"#))
        #expect(added.change?.key == "default/a" && added.change?.object?.root["kind"]?.json == .string("Service") && added.next == .watch)
        let modified = try cache.receivedEvent(json(#"{"type":"MODIFIED","object":\#(item("a", "12", port: 81))}"#))
        #expect(modified.change?.object?.root["spec"]?["ports"]?.json == .array([.object([("port", .number("81"))])]))
        #expect(try cache.receivedEvent(json(#"{"type":"BOOKMARK","object":{"metadata":{"resourceVersion":"20"}}}"#)) == (nil, .watch))
        #expect(cache.resourceVersion == "20")
        let deleted = try cache.receivedEvent(json(#"{"type":"DELETED","object":\#(item("a", "21"))}"#))
        #expect(deleted == (WatchCache.Change(key: "default/a", object: nil), .watch))
        #expect(cache.count == 0 && cache.resourceVersion == "21")
        #expect(try cache.receivedEvent(json(#"{"type":"DELETED","object":\#(item("a", "22"))}"#)) == (nil, .watch))
    }

    /// A status update moves the resourceVersion and nothing the waypoint keeps: not a change.
    @Test func aVersionThatDiffersOnlyInWhatIsDroppedIsNoChange() throws {
        var cache = WatchCache(kind: kind)
        _ = try cache.receivedPage(json(#"{"metadata":{"resourceVersion":"10"},"items":[\#(item("a", "5"))]}"#), first: true)
        let status =
            #"{"metadata":{"name":"a","namespace":"default","resourceVersion":"11"},"spec":{"ports":[{"port":80}]},"status":{"x":1}}"#
        #expect(try cache.receivedEvent(json(#"{"type":"MODIFIED","object":\#(status)}"#)) == (nil, .watch))
        #expect(cache.resourceVersion == "11")
        #expect(try cache.receivedEvent(json(#"{"type":"MODIFIED","object":\#(item("a", "12", port: 81))}"#)).change != nil)
    }

    /// The digest tells apart what a plain concatenation would not, and leaves out only the object's own
    /// resourceVersion.
    @Test func fingerprintsTellApartWhatDiffers() {
        let pairs = [
            (#"{"a":["ab","c"]}"#, #"{"a":["a","bc"]}"#), (#"{"ab":"c"}"#, #"{"a":"bc"}"#), (#"{"a":1}"#, #"{"a":"1"}"#),
            (#"[[],[1]]"#, #"[[1],[]]"#), (#"{"a":null}"#, #"{"a":false}"#), (#"{"a":{}}"#, #"{"a":[]}"#),
            (#"{"spec":{"resourceVersion":"1"}}"#, #"{"spec":{"resourceVersion":"2"}}"#),
        ]
        for (a, b) in pairs { #expect(WatchCache.fingerprint(json(a)) != WatchCache.fingerprint(json(b)), "\(a) \(b)") }
        #expect(
            WatchCache.fingerprint(json(#"{"metadata":{"name":"a","resourceVersion":"1"},"spec":{}}"#))
                == WatchCache.fingerprint(json(#"{"metadata":{"name":"a","resourceVersion":"2"},"spec":{}}"#)))
    }

    @Test func aListWithNullItemsIsEmpty() throws {
        var cache = WatchCache(kind: kind)
        #expect(try cache.receivedPage(json(#"{"metadata":{"resourceVersion":"3"},"items":null}"#), first: true) == .watch)
        #expect(cache.synced && cache.count == 0)
    }

    @Test func goneRelistsAndKeepsServingUntilTheNewList() throws {
        var cache = WatchCache(kind: kind)
        _ = try cache.receivedPage(json(#"{"metadata":{"resourceVersion":"10"},"items":[\#(item("a", "5"))]}"#), first: true)
        _ = cache.takeList()
        let event = json(#"{"type":"ERROR","object":{"kind":"Status","code":410,"message":"too old resource version"}}"#)
        #expect(try cache.receivedEvent(event) == (nil, .relist))
        cache.gone()
        #expect(cache.resourceVersion.isEmpty && cache.count == 1)
        _ = try cache.receivedPage(json(#"{"metadata":{"resourceVersion":"30"},"items":[\#(item("b", "29"))]}"#), first: true)
        #expect(cache.takeList().keys.sorted() == ["default/b"] && cache.keys.sorted() == ["default/b"] && cache.resourceVersion == "30")
    }

    @Test func podsAreKeptAsTheirMetadataAndIPsOnly() throws {
        let pods = WatchedKind(group: "", version: "v1", resource: "pods", kind: "Pod", namespace: "default")
        var cache = WatchCache(kind: pods)
        let pod =
            #"{"metadata":{"name":"p","namespace":"default","labels":{"v":"1"},"managedFields":[{"manager":"x"}]},"spec":{"containers":[]},"status":{"podIP":"10.0.0.1","phase":"Running"}}"#
        _ = try cache.receivedPage(json(#"{"metadata":{"resourceVersion":"1"},"items":[\#(pod)]}"#), first: true)
        #expect(
            cache.takeList()["default/p"]
                == json(
                    #"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","namespace":"default","labels":{"v":"1"}},"status":{"podIP":"10.0.0.1","podIPs":[]}}"#
                ))
    }

    /// What no parser reads is not kept: `managedFields`, kubectl's last-applied copy of the object, and the status
    /// of anything but a Pod.
    @Test func objectsAreKeptWithoutWhatNoParserReads() throws {
        let routes = WatchedKind(
            group: "gateway.networking.k8s.io", version: "v1", resource: "httproutes", kind: "HTTPRoute", namespace: "default")
        var cache = WatchCache(kind: routes)
        let route =
            #"{"metadata":{"name":"r","namespace":"default","annotations":{"kubectl.kubernetes.io/last-applied-configuration":"{\"big\":1}","team":"a"},"managedFields":[]},"spec":{"rules":[]},"status":{"parents":[{"conditions":[]}]}}"#
        _ = try cache.receivedPage(json(#"{"metadata":{"resourceVersion":"1"},"items":[\#(route)]}"#), first: true)
        #expect(
            cache.takeList()["default/r"]
                == json(
                    #"{"apiVersion":"gateway.networking.k8s.io/v1","kind":"HTTPRoute","metadata":{"name":"r","namespace":"default","annotations":{"team":"a"}},"spec":{"rules":[]}}"#
                ))
    }

    @Test func malformedEventsAreErrors() {
        var cache = WatchCache(kind: kind)
        #expect(throws: APIError.self) { try cache.receivedEvent(json(#"{"type":"ADDED"}"#)) }
        #expect(throws: APIError.self) { try cache.receivedEvent(json(#"{"type":"ADDED","object":{"metadata":{}}}"#)) }
        #expect(throws: APIError.self) { try cache.receivedEvent(json(#"{"type":"EXPLODED","object":{}}"#)) }
        #expect(throws: APIError.self) { try cache.receivedEvent(json(#"{"type":"ERROR","object":{"code":500,"message":"boom"}}"#)) }
        #expect(throws: APIError.self) { try cache.receivedPage(json(#"{"metadata":{}}"#), first: true) }
    }

    @Test func collectionPaths() {
        #expect(kind.path == "/api/v1/namespaces/default/services")
        let routes = WatchedKind.all(in: "shop").first { $0.kind == "HTTPRoute" }
        #expect(routes?.path == "/apis/gateway.networking.k8s.io/v1/namespaces/shop/httproutes")
        #expect(
            WatchedKind.rootPolicies(in: "istio-system").map(\.kind) == [
                "AuthorizationPolicy", "PeerAuthentication", "RequestAuthentication",
            ])
        #expect(KindWatcher.escape("a+b/c=") == "a%2Bb%2Fc%3D")
    }
}

@Suite struct JSONTests {
    /// One parser for a stream of texts (a watch's events): a refused or cut text leaves nothing behind for the next.
    @Test func oneParserParsesTextAfterText() throws {
        let parser = JSONParser()
        let parse = { (text: String) throws(JSONError) -> JSON in
            let result: Result<JSON, JSONError> = Array(text.utf8).withUnsafeBytes { bytes in
                do throws(JSONError) { return .success(try parser.parse(bytes).root.json) } catch { return .failure(error) }
            }
            return try result.get()
        }
        #expect(try parse(#"{"type":"ADDED","n":1}"#) == .object([("type", .string("ADDED")), ("n", .number("1"))]))
        #expect(throws: JSONError.self) { try parse(#"{"type":"MODI"#) }  // cut: incomplete
        #expect(try parse(#"[true]"#) == .array([.bool(true)]))
        #expect(throws: JSONError.self) { try parse(#"{"a":1} x"#) }
        #expect(throws: JSONError.self) { try parse(#"{"a":}"#) }
        #expect(try parse(#" {"b":null} "#) == .object([("b", .null)]))
    }

    @Test func valuesAsWritten() throws {
        let value = try JSON.parse(#"{"a":[1,2.5,-3e2,true,false,null],"s":"x\u00e9\n\"","n":{}}"#)
        #expect(value["a"] == .array([.number("1"), .number("2.5"), .number("-300.0"), .bool(true), .bool(false), .null]))
        #expect(value["s"]?.string == "x\u{e9}\n\"")
        #expect(value["n"] == .object([]))
        #expect(value["missing"] == nil)
    }

    /// Integers keep their value to the last digit, over the whole of Int64 and UInt64.
    @Test func integersKeepTheirValue() throws {
        let value = try JSON.parse(#"[0,-7,9223372036854775806,9223372036854775807,18446744073709551615,-9223372036854775808]"#)
        #expect(
            value
                == .array([
                    .number("0"), .number("-7"), .number("9223372036854775806"), .number("9223372036854775807"),
                    .number("18446744073709551615"), .number("-9223372036854775808"),
                ]))
    }

    /// An integer past UInt64, or a number past a double's range, is refused: no Kubernetes field holds one (they
    /// are int64), nor does a JWT time claim.
    @Test func numbersPastTheirRangeAreRefused() throws {
        #expect(throws: JSONError.self) { try JSON.parse("[18446744073709551616]") }
        #expect(throws: JSONError.self) { try JSON.parse("[1e400]") }
        #expect(try JSON.parse("[1e300]") == .array([.number("1e+300")]))
    }

    /// A key given twice in one object is refused, so that no two readers of it can disagree on its value (the
    /// API server never sends one; RFC 7519 lets a JWT parser refuse one).
    @Test func aRepeatedKeyIsRefused() throws {
        #expect(throws: JSONError.self) { try JSON.parse(#"{"a":1,"b":2,"a":{"c":3}}"#) }
        #expect(throws: JSONError.self) { try JSON.parse(#"[{"b":{"a":1,"a":1}}]"#) }
        #expect(
            try JSON.parse(#"{"a":{"a":1},"b":{"a":2}}"#)
                == .object([("a", .object([("a", .number("1"))])), ("b", .object([("a", .number("2"))]))]))
    }

    /// Past 16 keys an object's keys are looked up in a set of their own (a search through the others would make
    /// a hostile object of n keys cost n²): repeats are still refused, and each object has its own set.
    @Test func objectsWithManyKeys() throws {
        let keys = (0..<20_000).map { #""k\#($0)":0"# }
        #expect(throws: JSONError.self) { try JSON.parse("{" + keys.joined(separator: ",") + #","k19999":1}"#) }
        #expect(throws: JSONError.self) { try JSON.parse("{" + keys.joined(separator: ",") + #","k3":1}"#) }
        let seventeen = "{" + keys.prefix(17).joined(separator: ",") + "}"
        let document = try JSONDocument.parse(#"{"a":\#(seventeen),"b":\#(seventeen),"k0":[\#(seventeen)]}"#)
        #expect(document.root["b"]?.count == 17 && document.root["k0"]?.elements.first?["k16"]?.int == 0)
    }

    /// Strings and keys are checked UTF-8 and kept whole: escapes decoded, a NUL inside kept.
    @Test func textIsCheckedUTF8AndKeptWhole() throws {
        #expect(try JSON.parse(#"{"k\u0000x":"\ud83d\ude00 \u00e9"}"#) == .object([("k\u{0}x", .string("\u{1F600} \u{e9}"))]))
        let invalid: [UInt8] = Array(#"{"a":""#.utf8) + [0xC3, 0x28] + Array(#""}"#.utf8)
        #expect(throws: JSONError.self) { try invalid.withUnsafeBytes { bytes throws(JSONError) in try JSON.parse(bytes) } }
    }

    /// A document is read in place: keys, elements, texts, and the same value as the `JSON` enum gives.
    @Test func aDocumentIsReadInPlace() throws {
        let text = #"{"metadata":{"name":"a","labels":{}},"ports":[{"port":80},{"port":81}],"on":true,"off":null}"#
        let document = try JSONDocument.parse(text)
        let root = document.root
        #expect(root["metadata"]?["name"]?.string == "a" && root["metadata"]?["missing"] == nil && root["ports"]?["port"] == nil)
        #expect(root["ports"]?.elements.map { $0["port"]?.int } == [80, 81])
        #expect(root.entries.map { $0.key.text } == ["metadata", "ports", "on", "off"] && root.count == 4)
        #expect(root["on"]?.kind == .true && root["off"]?.kind == .null && root["on"]?.string == nil)
        #expect(root.json == (try JSON.parse(text)))
        #expect(JSONDocument(root.json) == document)
    }

    /// A writer keeps parts of a document with values of its own: the result is the document the same text parses to.
    @Test func aWriterCopiesPartsOfADocument() throws {
        let source = try JSONDocument.parse(#"{"a":{"b":["x",{"c":"y"}],"d":1},"e":"z"}"#)
        var writer = JSONWriter()
        writer.beginObject()
        writer.key("kind")
        writer.string("K")
        for (key, value) in source.root.entries where !key.named("e") {
            writer.copy(key)
            writer.copy(value)
        }
        writer.key("list")
        writer.beginArray()
        writer.copy(source.root["a"]!["b"]!)
        writer.copy(source.root["e"]!)
        writer.end()
        writer.end()
        #expect(writer.finish() == (try JSONDocument.parse(#"{"kind":"K","a":{"b":["x",{"c":"y"}],"d":1},"list":[["x",{"c":"y"}],"z"]}"#)))
    }

    /// The hash of a value leaves out the one key it is told to, and only it.
    @Test func aHashLeavesOutOneKey() throws {
        func hash(_ text: String) throws -> Int {
            let root = try JSONDocument.parse(text).root
            var hasher = Hasher()
            root.hash(into: &hasher, leavingOut: root["m"]?.key("v"))
            return hasher.finalize()
        }
        #expect(try hash(#"{"m":{"n":1,"v":"1"},"s":{}}"#) == hash(#"{"m":{"n":1,"v":"2"},"s":{}}"#))
        #expect(try hash(#"{"m":{"n":1,"v":"1"},"s":{}}"#) != hash(#"{"m":{"n":2,"v":"1"},"s":{}}"#))
        #expect(try hash(#"{"m":{"n":1},"s":{"v":"1"}}"#) != hash(#"{"m":{"n":1},"s":{"v":"2"}}"#))
        #expect(try hash(#"{"m":{"n":1}}"#) == hash(#"{"m":{"n":1}}"#))  // nothing to leave out
    }

    @Test func keysKeepTheirOrder() throws {
        guard case .object(let entries) = try JSON.parse(#"{"z":1,"a":2,"m":3}"#) else { Issue.record("not an object"); return }
        #expect(entries.map(\.0) == ["z", "a", "m"])
    }

    @Test(arguments: [#"{"a":"#, #"{"a":1}}"#, #"{"a":1} x"#, "nul", #"["unterminated"#, ""])
    func malformedTextIsRefused(_ text: String) {
        #expect(throws: JSONError.self) { try JSON.parse(text) }
    }

    /// A text over `JSONParser.maxText` is refused before it is read (a document's offsets are 32-bit).
    @Test func aTextOverTheLimitIsRefused() {
        let text = UnsafeMutableRawBufferPointer.allocate(byteCount: JSONParser.maxText + 1, alignment: 1)  // never touched
        defer { text.deallocate() }
        #expect(throws: JSONError.self) { try JSONDocument.parse(UnsafeRawBufferPointer(text)) }
    }

    @Test func deepNestingIsRefused() {
        let deep = String(repeating: "[", count: JSON.maxDepth + 1) + String(repeating: "]", count: JSON.maxDepth + 1)
        #expect(throws: JSONError.self) { try JSON.parse(deep) }
        let fine = String(repeating: "[", count: JSON.maxDepth) + String(repeating: "]", count: JSON.maxDepth)
        #expect((try? JSON.parse(fine)) != nil)
    }
}
