import JSON
import Synchronization
import Testing

@testable import Kubernetes

private let services = WatchedKind(group: "", version: "v1", resource: "services", kind: "Service", namespace: "default")
private let slices = WatchedKind(
    group: "discovery.k8s.io", version: "v1", resource: "endpointslices", kind: "EndpointSlice", namespace: "default")

private func object(_ name: String) -> JSONDocument { JSONDocument(.object([("metadata", .object([("name", .string(name))]))])) }

/// What `takeChanges` gave, as text: `path all [keys]` or `path some [key=name|deleted]`.
private func taken(_ store: APIObjectStore) -> [String] {
    store.takeChanges().sorted { $0.kind.path < $1.kind.path }.map { kind, changes in
        switch changes {
        case .all(let objects): return "\(kind.path) all \(objects.keys.sorted())"
        case .some(let objects):
            return "\(kind.path) some "
                + objects.map { "\($0.key)=\($0.value?.root["metadata"]?["name"]?.string ?? "deleted")" }.sorted().joined(separator: ",")
        }
    }
}

@Suite struct APIObjectStoreTests {
    @Test func theReaderTakesAListWholeThenOnlyTheObjectsEventsTouched() {
        let rings = Atomic<Int>(0)
        let store = APIObjectStore { rings.add(1, ordering: .relaxed) }
        let token = store.register(services)
        store.replace(services, token: token, with: ["default/a": object("a"), "default/b": object("b")])
        store.update(services, token: token, key: "default/c", to: object("c"), count: 3)  // joins the pending list
        #expect(taken(store) == ["/api/v1/namespaces/default/services all [\"default/a\", \"default/b\", \"default/c\"]"])
        #expect(taken(store).isEmpty)
        store.update(services, token: token, key: "default/a", to: object("a2"), count: 3)
        store.update(services, token: token, key: "default/b", to: nil, count: 2)
        store.update(services, token: token, key: "default/a", to: object("a3"), count: 2)  // the latest version only
        #expect(taken(store) == ["/api/v1/namespaces/default/services some default/a=a3,default/b=deleted"])
        #expect(rings.load(ordering: .relaxed) == 5)
        #expect(store.counts().map { "\($0.kind) \($0.namespace) \($0.count)" } == ["Service default 2"])
    }

    @Test func aForgottenKindIsTakenEmptyAndItsOldWatcherWritesNothing() {
        let store = APIObjectStore {}
        let old = store.register(slices)
        store.replace(slices, token: old, with: ["default/s": object("s")])
        _ = store.takeChanges()
        store.forget(slices)
        #expect(taken(store) == ["/apis/discovery.k8s.io/v1/namespaces/default/endpointslices all []"])
        store.update(slices, token: old, key: "default/s", to: object("s"), count: 1)
        store.replace(slices, token: old, with: ["default/s": object("s")])
        #expect(taken(store).isEmpty && store.counts().isEmpty)
        let new = store.register(slices)  // followed again: a new watcher
        store.update(slices, token: new, key: "default/t", to: object("t"), count: 1)
        #expect(taken(store) == ["/apis/discovery.k8s.io/v1/namespaces/default/endpointslices some default/t=t"])
    }
}
