import JSON
import Testing

@testable import Kubernetes

private let kind = WatchedKind(group: "", version: "v1", resource: "services", kind: "Service", namespace: "default")

private func json(_ text: String) -> JSON { try! JSON.parse(text) }

private func item(_ name: String, _ version: String, port: Int = 80) -> String {
    #"{"metadata":{"name":"\#(name)","namespace":"default","resourceVersion":"\#(version)"},"spec":{"ports":[{"port":\#(port)}]}}"#
}

@Suite struct WatchCacheTests {
    @Test func aPagedListIsSwappedInWholeAndStampedWithItsKind() throws {
        var cache = WatchCache(kind: kind)
        let first = json(#"{"metadata":{"resourceVersion":"10","continue":"tok"},"items":[\#(item("a", "5"))]}"#)
        #expect(try cache.receivedPage(first, first: true) == .listPage("tok"))
        #expect(cache.objects.isEmpty && !cache.synced)  // nothing half-listed is served
        let last = json(#"{"metadata":{"resourceVersion":"10"},"items":[\#(item("b", "7"))]}"#)
        #expect(try cache.receivedPage(last, first: false) == .watch)
        #expect(cache.synced && cache.resourceVersion == "10")
        #expect(cache.objects.keys.sorted() == ["default/a", "default/b"])
        #expect(cache.objects["default/a"]?["kind"] == .string("Service"))
        #expect(cache.objects["default/a"]?["apiVersion"] == .string("v1"))
    }

    @Test func eventsAddModifyDeleteAndMoveTheResourceVersion() throws {
        var cache = WatchCache(kind: kind)
        _ = try cache.receivedPage(json(#"{"metadata":{"resourceVersion":"10"},"items":[]}"#), first: true)
        #expect(try cache.receivedEvent(json(#"{"type":"ADDED","object":\#(item("a", "11"))}"#)) == (true, .watch))
        #expect(try cache.receivedEvent(json(#"{"type":"MODIFIED","object":\#(item("a", "12", port: 81))}"#)) == (true, .watch))
        #expect(cache.objects["default/a"]?["spec"]?["ports"] == .array([.object([("port", .number("81"))])]))
        #expect(try cache.receivedEvent(json(#"{"type":"BOOKMARK","object":{"metadata":{"resourceVersion":"20"}}}"#)) == (false, .watch))
        #expect(cache.resourceVersion == "20")
        #expect(try cache.receivedEvent(json(#"{"type":"DELETED","object":\#(item("a", "21"))}"#)) == (true, .watch))
        #expect(cache.objects.isEmpty && cache.resourceVersion == "21")
        #expect(try cache.receivedEvent(json(#"{"type":"DELETED","object":\#(item("a", "22"))}"#)) == (false, .watch))
    }

    @Test func aListWithNullItemsIsEmpty() throws {
        var cache = WatchCache(kind: kind)
        #expect(try cache.receivedPage(json(#"{"metadata":{"resourceVersion":"3"},"items":null}"#), first: true) == .watch)
        #expect(cache.synced && cache.objects.isEmpty)
    }

    @Test func goneRelistsAndKeepsServingUntilTheNewList() throws {
        var cache = WatchCache(kind: kind)
        _ = try cache.receivedPage(json(#"{"metadata":{"resourceVersion":"10"},"items":[\#(item("a", "5"))]}"#), first: true)
        let event = json(#"{"type":"ERROR","object":{"kind":"Status","code":410,"message":"too old resource version"}}"#)
        #expect(try cache.receivedEvent(event) == (false, .relist))
        cache.gone()
        #expect(cache.resourceVersion.isEmpty && cache.objects.count == 1)
        _ = try cache.receivedPage(json(#"{"metadata":{"resourceVersion":"30"},"items":[\#(item("b", "29"))]}"#), first: true)
        #expect(cache.objects.keys.sorted() == ["default/b"] && cache.resourceVersion == "30")
    }

    @Test func podsAreKeptAsTheirMetadataAndIPsOnly() throws {
        let pods = WatchedKind(group: "", version: "v1", resource: "pods", kind: "Pod", namespace: "default")
        var cache = WatchCache(kind: pods)
        let pod =
            #"{"metadata":{"name":"p","namespace":"default","labels":{"v":"1"},"managedFields":[{"manager":"x"}]},"spec":{"containers":[]},"status":{"podIP":"10.0.0.1","phase":"Running"}}"#
        _ = try cache.receivedPage(json(#"{"metadata":{"resourceVersion":"1"},"items":[\#(pod)]}"#), first: true)
        #expect(
            cache.objects["default/p"]
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
            cache.objects["default/r"]
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
        #expect(WatchedKind.rootPolicies(in: "istio-system").map(\.kind) == ["AuthorizationPolicy", "PeerAuthentication"])
        #expect(KindWatcher.escape("a+b/c=") == "a%2Bb%2Fc%3D")
    }
}

@Suite struct JSONTests {
    @Test func valuesAsWritten() throws {
        let value = try JSON.parse(#"{"a":[1,2.5,-3e2,true,false,null],"s":"x\u00e9\n\"","n":{}}"#)
        #expect(value["a"] == .array([.number("1"), .number("2.5"), .number("-3e2"), .bool(true), .bool(false), .null]))
        #expect(value["s"]?.string == "x\u{e9}\n\"")
        #expect(value["n"] == .object([]))
        #expect(value["missing"] == nil)
    }

    @Test func keysKeepTheirOrder() throws {
        guard case .object(let entries) = try JSON.parse(#"{"z":1,"a":2,"m":3}"#) else { Issue.record("not an object"); return }
        #expect(entries.map(\.0) == ["z", "a", "m"])
    }

    @Test(arguments: [#"{"a":"#, #"{"a":1}}"#, #"{"a":1} x"#, "nul", #"["unterminated"#, ""])
    func malformedTextIsRefused(_ text: String) {
        #expect(throws: JSONError.self) { try JSON.parse(text) }
    }

    @Test func deepNestingIsRefused() {
        let deep = String(repeating: "[", count: 100) + String(repeating: "]", count: 100)
        #expect(throws: JSONError.self) { try JSON.parse(deep) }
        let fine = String(repeating: "[", count: 30) + String(repeating: "]", count: 30)
        #expect((try? JSON.parse(fine)) != nil)
    }
}
