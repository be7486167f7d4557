/// The workload side of Istio's standard metric labels: who called (from the tunnel's `baggage`, which ztunnel
/// fills from the source Pod) or who answered (from the chosen endpoint's Pod). Unknown parts are `unknown`,
/// as Istio reports them.
///
/// Thread: any (a value).
public struct WorkloadLabels: Sendable, Hashable {
    /// The Deployment (or other controller, else the Pod) name.
    public var workload = "unknown"
    public var namespace = "unknown"
    /// Istio's canonical service and revision (`service.istio.io/canonical-name`/`-revision`, else
    /// `app.kubernetes.io/name`/`version`, else `app`/`version`).
    public var canonicalService = "unknown"
    public var canonicalRevision = "unknown"
    public var app = "unknown"
    public var version = "unknown"
    public var cluster = "unknown"

    public init() {}

    /// The caller as ztunnel's W3C `baggage` describes it (`k8s.cluster.name`, `k8s.namespace.name`,
    /// `k8s.<deployment|statefulset|daemonset|job|cronjob|pod>.name`, `service.name`, `service.version`), with
    /// the namespace of its authenticated identity when the baggage has none. Members past the 64th, and
    /// values over 253 bytes, are ignored.
    public init(baggage: String?, identityNamespace: String?) {
        namespace = identityNamespace ?? "unknown"
        guard let baggage else { return }
        for member in baggage.split(separator: ",").prefix(64) {
            let pair = member.prefix { $0 != ";" }  // properties after `;` are not read
            guard let equals = pair.firstIndex(of: "=") else { continue }
            let key = pair[..<equals].trimmingWhitespace()
            let value = percentDecoded(pair[pair.index(after: equals)...].trimmingWhitespace()[...])
            guard !value.isEmpty, value.utf8.count <= 253 else { continue }
            switch key {
            case "k8s.cluster.name": cluster = value
            case "k8s.namespace.name": namespace = value
            case "service.name": canonicalService = value; app = value
            case "service.version": canonicalRevision = value; version = value
            case "k8s.deployment.name", "k8s.statefulset.name", "k8s.daemonset.name", "k8s.job.name", "k8s.cronjob.name",
                "k8s.replicaset.name", "k8s.pod.name":
                // The controller wins over the Pod, whichever comes first.
                if workload == "unknown" || key != "k8s.pod.name" { workload = value }
            default: continue
            }
        }
    }

    /// The Pod behind an endpoint: its controller (a ReplicaSet's Deployment: the name without the
    /// `pod-template-hash`), namespace and labels.
    public init(pod name: String, namespace: String, labels: [String: String], owner: (kind: String, name: String)?) {
        self.namespace = namespace
        workload = owner?.name ?? name
        if owner?.kind == "ReplicaSet", let hash = labels["pod-template-hash"], workload.hasSuffix("-" + hash) {
            workload = String(workload.dropLast(hash.count + 1))
        }
        app = labels["app.kubernetes.io/name"] ?? labels["app"] ?? "unknown"
        version = labels["app.kubernetes.io/version"] ?? labels["version"] ?? "unknown"
        canonicalService = labels["service.istio.io/canonical-name"] ?? labels["app.kubernetes.io/name"] ?? labels["app"] ?? workload
        canonicalRevision =
            labels["service.istio.io/canonical-revision"] ?? labels["app.kubernetes.io/version"] ?? labels["version"] ?? "latest"
    }
}
