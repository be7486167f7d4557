/// How an endpoint of a cluster is picked: DestinationRule `trafficPolicy.loadBalancer`.
public enum LoadBalancer: Sendable, Equatable {
    case roundRobin
    /// Power of two choices: the one of two random endpoints with fewer requests in flight (Istio's default).
    case leastRequest
    case random
    /// The same key goes to the same endpoint while the endpoint set stays the same (a ring hash).
    case consistentHash(HashKey)

    /// What a consistent hash is computed over.
    public enum HashKey: Sendable, Equatable {
        /// A request header (lower-case name bytes); requests without it are balanced round-robin.
        case header([UInt8])
        /// A query parameter (name bytes, case-sensitive).
        case queryParameter([UInt8])
        case sourceIP
    }
}

/// A ring hash over a cluster's endpoints: each endpoint at many points of a 64-bit ring, so that removing
/// one endpoint moves only the keys that were on it. Built once per config load.
///
/// Thread: any (immutable). Ownership: the cluster.
public struct HashRing: Sendable {
    /// Sorted ring points and the endpoint (an index into the cluster's members) at each.
    private let points: [UInt64]
    private let owners: [Int32]

    /// At least `minimumSize` points in all (Envoy's default ring size is 1024), evenly shared.
    public init(memberKeys: [String], minimumSize: Int = 1024) {
        guard !memberKeys.isEmpty else { points = []; owners = []; return }
        let perMember = (minimumSize + memberKeys.count - 1) / memberKeys.count
        var entries: [(UInt64, Int32)] = []
        entries.reserveCapacity(perMember * memberKeys.count)
        for (member, key) in memberKeys.enumerated() {
            for replica in 0..<perMember { entries.append((Self.hash(Array("\(key)_\(replica)".utf8)), Int32(member))) }
        }
        entries.sort { $0.0 < $1.0 }
        points = entries.map(\.0)
        owners = entries.map(\.1)
    }

    public var isEmpty: Bool { points.isEmpty }

    /// The member owning `hash` (the first ring point at or after it, wrapping), then the next distinct
    /// owners clockwise for `skip` > 0 (used to pass over ejected endpoints).
    public func member(for hash: UInt64, skip: Int = 0) -> Int32 {
        var low = 0, high = points.count
        while low < high {
            let mid = (low + high) / 2
            if points[mid] < hash { low = mid + 1 } else { high = mid }
        }
        var index = low == points.count ? 0 : low
        var owner = owners[index]
        var skipped = 0
        var steps = 0
        while skipped < skip && steps < points.count {
            index = (index + 1) % points.count
            steps += 1
            if owners[index] != owner { owner = owners[index]; skipped += 1 }
        }
        return owner
    }

    /// 64-bit FNV-1a followed by a finalizer (so nearby keys land far apart on the ring).
    @inline(__always)
    public static func hash(_ bytes: some Sequence<UInt8>) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in bytes { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
        h ^= h >> 33
        h = h &* 0xff51_afd7_ed55_8ccd
        h ^= h >> 33
        h = h &* 0xc4ce_b9fe_1a85_ec53
        return h ^ (h >> 33)
    }
}
