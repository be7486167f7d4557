import JSON

/// Who a request's verified JWT says it is (RequestAuthentication): what authorization's `requestPrincipals` and
/// `request.auth.*` conditions read, and the header changes the upstream gets with it.
///
/// Thread: any (a value). Ownership: the request being authorized, and the worker's cache of verified tokens.
public struct JWTIdentity: Sendable {
    /// `iss/sub`, when the token has both.
    public var principal: String?
    public var audiences: [String]
    /// `azp`.
    public var presenter: String?
    public var claims: JSON
    /// `exp` in Unix seconds, when the token has one (a cached verification is good until then).
    public var expiry: Double?
    /// The token's header removed (unless `forwardOriginalToken`) and the rule's output headers set.
    public var requestHeaders: HeaderModifier?

    public init(principal: String?, audiences: [String], presenter: String?, claims: JSON, expiry: Double?, requestHeaders: HeaderModifier?)
    {
        self.principal = principal
        self.audiences = audiences
        self.presenter = presenter
        self.claims = claims
        self.expiry = expiry
        self.requestHeaders = requestHeaders
    }

    /// The claim at `path` (`request.auth.claims[a][b]`: nested objects) as strings: a string claim, or the
    /// strings of a list; nil when absent or of another type.
    public func claim(_ path: [String]) -> [String]? {
        var value: JSON? = claims
        for name in path { value = value?[name] }
        switch value {
        case .string(let text)?: return [text]
        case .array(let items)?:
            let strings = items.compactMap(\.string)
            return strings.count == items.count ? strings : nil
        default: return nil
        }
    }
}
