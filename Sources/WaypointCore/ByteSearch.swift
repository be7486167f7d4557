extension Array where Element == UInt8 {
    /// Where `needle` first occurs in these bytes, nil when it does not.
    public func offset(of needle: [UInt8]) -> Int? {
        guard !needle.isEmpty, count >= needle.count else { return nil }
        for i in 0...(count - needle.count) where self[i] == needle[0] && self[i..<(i + needle.count)].elementsEqual(needle) {
            return i
        }
        return nil
    }
}
