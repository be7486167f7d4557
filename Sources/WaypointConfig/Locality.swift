/// Where a workload runs, as Istio reads it: `region/zone/subzone` (any part may be empty).
///
/// Thread: any (a value). Ownership: the config.
public struct Locality: Sendable, Equatable, CustomStringConvertible {
    public var region: String
    public var zone: String
    public var subzone: String

    public init(region: String = "", zone: String = "", subzone: String = "") {
        self.region = region
        self.zone = zone
        self.subzone = subzone
    }

    /// `region/zone/subzone` with fewer parts allowed (ServiceEntry `locality`, `--locality`; the Pod label
    /// `istio-locality` separates with `.`); nil for more than three parts.
    public init?(_ text: String, separator: Character = "/") {
        let parts = text.split(separator: separator, omittingEmptySubsequences: false).map(String.init)
        guard parts.count <= 3 else { return nil }
        self.init(region: parts.first ?? "", zone: parts.count > 1 ? parts[1] : "", subzone: parts.count > 2 ? parts[2] : "")
    }

    /// From a Node's topology labels.
    init(nodeLabels labels: [String: String]) {
        self.init(
            region: labels["topology.kubernetes.io/region"] ?? labels["failure-domain.beta.kubernetes.io/region"] ?? "",
            zone: labels["topology.kubernetes.io/zone"] ?? labels["failure-domain.beta.kubernetes.io/zone"] ?? "",
            subzone: labels["topology.istio.io/subzone"] ?? "")
    }

    public var isEmpty: Bool { region.isEmpty && zone.isEmpty && subzone.isEmpty }

    public var description: String { [region, zone, subzone].joined(separator: "/") }

    /// The priority of an endpoint at `endpoint` for a proxy here, Istio's default failover: 0 same
    /// region, zone and subzone, 1 same zone, 2 same region, 3 elsewhere. An endpoint known only by its zone
    /// (an EndpointSlice's `zone`) is taken to be in the proxy's region when the zone names match, since
    /// zone names carry their region (`us-east1-b`).
    public func priority(of endpoint: Locality) -> Int {
        let sameRegion = endpoint.region == region || (endpoint.region.isEmpty && !zone.isEmpty && endpoint.zone == zone)
        guard sameRegion else { return 3 }
        guard endpoint.zone == zone else { return 2 }
        return endpoint.subzone == subzone ? 0 : 1
    }
}
