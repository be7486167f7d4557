import Testing
import WaypointCore

@Suite struct WorkloadLabelsTests {
    @Test func ztunnelsBaggageNamesTheSourceWorkload() {
        let labels = WorkloadLabels(
            baggage: "k8s.cluster.name=east, k8s.namespace.name=shop,k8s.pod.name=frontend-0,k8s.deployment.name=frontend,"
                + "service.name=front%20end,service.version=v1;meta=x",
            identityNamespace: "other")
        #expect(labels.cluster == "east" && labels.namespace == "shop" && labels.workload == "frontend")
        #expect(labels.canonicalService == "front end" && labels.app == "front end")
        #expect(labels.canonicalRevision == "v1" && labels.version == "v1")
    }

    @Test func withoutBaggageOnlyTheIdentitysNamespaceIsKnown() {
        let labels = WorkloadLabels(baggage: nil, identityNamespace: "shop")
        #expect(labels.namespace == "shop" && labels.workload == "unknown" && labels.cluster == "unknown")
        #expect(WorkloadLabels(baggage: "garbage,=x,k8s.pod.name=,a=b", identityNamespace: nil) == WorkloadLabels())
        // What the fuzzer found (fuzz/crashes/proxy-crash-2d14…): a member that is only properties.
        for hostile in [";", ",;,", ";k8s.pod.name=x", "k8s.pod.name=;"] {
            #expect(WorkloadLabels(baggage: hostile, identityNamespace: nil) == WorkloadLabels())
        }
    }

    @Test func aPodsControllerIsItsWorkloadAndItsLabelsItsCanonicalNames() {
        let deployment = WorkloadLabels(
            pod: "web-v2-5b8d9f7c6-x7k2p", namespace: "shop", labels: ["app": "web", "version": "v2", "pod-template-hash": "5b8d9f7c6"],
            owner: ("ReplicaSet", "web-v2-5b8d9f7c6"))
        #expect(deployment.workload == "web-v2" && deployment.canonicalService == "web" && deployment.canonicalRevision == "v2")
        let canonical = WorkloadLabels(
            pod: "db-0", namespace: "shop",
            labels: ["service.istio.io/canonical-name": "db", "app.kubernetes.io/name": "postgres"], owner: ("StatefulSet", "db"))
        #expect(canonical.workload == "db" && canonical.canonicalService == "db" && canonical.app == "postgres")
        #expect(canonical.canonicalRevision == "latest" && canonical.version == "unknown")
        let bare = WorkloadLabels(pod: "debug", namespace: "shop", labels: [:], owner: nil)
        #expect(bare.workload == "debug" && bare.canonicalService == "debug")
    }

    @Test func percentDecodingKeepsWhatIsNotAnEscape() {
        #expect(percentDecoded("a%2Eb%zz%4") == "a.b%zz%4")
    }
}
