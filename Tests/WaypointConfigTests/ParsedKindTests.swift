import JSON
import Testing
import WaypointConfig

private func slice(_ name: String, version: String, address: String, port: Int = 8080) -> JSONDocument {
    try! JSONDocument.parse(
        #"{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice","metadata":{"name":"\#(name)","namespace":"shop","resourceVersion":"\#(version)","labels":{"kubernetes.io/service-name":"\#(name)"}},"addressType":"IPv4","ports":[{"port":\#(port)}],"endpoints":[{"addresses":["\#(address)"]}]}"#
    )
}

private func service(_ name: String, version: String) -> JSONDocument {
    try! JSONDocument.parse(
        #"{"apiVersion":"v1","kind":"Service","metadata":{"name":"\#(name)","namespace":"shop","resourceVersion":"\#(version)"},"spec":{"ports":[{"port":80}]}}"#
    )
}

@Suite struct ParsedKindTests {
    @Test func keepsObjectsInKeyOrderThroughListsAndEvents() {
        var kind = ParsedKind(source: "kubernetes", defaultNamespace: "shop")
        kind.replace(with: [
            "shop/b": slice("b", version: "1", address: "10.0.0.2"), "shop/d": slice("d", version: "1", address: "10.0.0.4"),
        ])
        kind.apply(["shop/c": slice("c", version: "2", address: "10.0.0.3"), "shop/a": slice("a", version: "3", address: "10.0.0.1")])
        #expect(kind.spec.endpointSlices.map(\.name) == ["a", "b", "c", "d"])
        kind.apply(["shop/b": nil, "shop/z": nil])  // deleting what is not there changes nothing
        #expect(kind.spec.endpointSlices.map(\.name) == ["a", "c", "d"])
        kind.replace(with: ["shop/d": slice("d", version: "5", address: "10.0.0.9")])  // a relist after 410 Gone
        #expect(kind.spec.endpointSlices.map(\.name) == ["d"])
        #expect(kind.spec.endpointSlices.first?.endpoints.first?.addresses == ["10.0.0.9"])
        kind.replace(with: [:])
        #expect(kind.isEmpty && kind.spec.endpointSlices.isEmpty)
    }

    @Test func endpointChangesCarryTheOldAndNewVersionsOfWhatChangedOnly() {
        var kind = ParsedKind(source: "kubernetes", defaultNamespace: "shop")
        kind.replace(with: [
            "shop/a": slice("a", version: "1", address: "10.0.0.1"), "shop/b": slice("b", version: "1", address: "10.0.0.2"),
        ])
        _ = kind.takeEndpointChanges()
        kind.apply(["shop/a": slice("a", version: "2", address: "10.0.0.7")])
        #expect(kind.takeEndpointChanges()?.endpointSlices.map { $0.endpoints[0].addresses[0] } == ["10.0.0.1", "10.0.0.7"])
        // the same resourceVersion again (a relist that found nothing new) is not a change, and is not parsed again
        kind.replace(with: [
            "shop/a": slice("a", version: "2", address: "10.0.0.7"), "shop/b": slice("b", version: "1", address: "10.0.0.2"),
        ])
        #expect(kind.takeEndpointChanges()?.endpointSlices.isEmpty == true)
        kind.apply(["shop/b": nil])
        #expect(kind.takeEndpointChanges()?.endpointSlices.map(\.name) == ["b"])
    }

    /// A new version of an EndpointSlice is put in place; the spec is what a rebuild from scratch would give.
    @Test func aModifiedSliceIsPatchedInPlace() {
        var kind = ParsedKind(source: "kubernetes", defaultNamespace: "shop")
        let names = ["a", "b", "c", "d"]
        kind.replace(with: Dictionary(uniqueKeysWithValues: names.map { ("shop/\($0)", slice($0, version: "1", address: "10.0.0.1")) }))
        kind.apply(["shop/c": slice("c", version: "2", address: "10.0.0.3"), "shop/a": slice("a", version: "2", address: "10.0.0.9")])
        var fresh = ParsedKind(source: "kubernetes", defaultNamespace: "shop")
        fresh.replace(with: [
            "shop/a": slice("a", version: "2", address: "10.0.0.9"), "shop/b": slice("b", version: "1", address: "10.0.0.1"),
            "shop/c": slice("c", version: "2", address: "10.0.0.3"), "shop/d": slice("d", version: "1", address: "10.0.0.1"),
        ])
        #expect(kind.spec.endpointSlices == fresh.spec.endpointSlices)
        #expect(kind.spec.endpointSlices.map { $0.endpoints[0].addresses[0] } == ["10.0.0.9", "10.0.0.1", "10.0.0.3", "10.0.0.1"])
    }

    @Test func anythingButEndpointsAsksForAFullCompile() {
        var kind = ParsedKind(source: "kubernetes", defaultNamespace: "shop")
        kind.replace(with: ["shop/web": service("web", version: "1")])
        #expect(kind.takeEndpointChanges() == nil)
        kind.apply(["shop/web": service("web", version: "1")])  // unchanged
        #expect(kind.takeEndpointChanges()?.services.isEmpty == true)
        kind.apply(["shop/web": nil])
        #expect(kind.takeEndpointChanges() == nil)
    }

    @Test func aBrokenObjectIsAnErrorUntilItIsFixedOrDeleted() {
        var kind = ParsedKind(source: "kubernetes", defaultNamespace: "shop")
        kind.replace(with: ["shop/a": slice("a", version: "1", address: "10.0.0.1")])
        kind.apply(["shop/b": slice("b", version: "2", address: "10.0.0.2", port: 70_000)])
        #expect(kind.errors.count == 1)
        #expect(kind.errors.first.map { "\($0)" }?.contains("EndpointSlice shop/b") == true)
        #expect(kind.spec.endpointSlices.map(\.name) == ["a"])
        kind.apply(["shop/a": slice("a", version: "3", address: "10.0.0.3")])  // another change: still failing
        #expect(kind.errors.count == 1)
        kind.apply(["shop/b": slice("b", version: "4", address: "10.0.0.2")])
        #expect(kind.errors.isEmpty && kind.spec.endpointSlices.map(\.name) == ["a", "b"])
        kind.apply(["shop/b": slice("b", version: "5", address: "10.0.0.2", port: 0)])
        #expect(kind.errors.count == 1)
        kind.apply(["shop/b": nil])
        #expect(kind.errors.isEmpty)
    }
}
