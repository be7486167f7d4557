import Testing
import WaypointConfig

@Suite struct JSONValueTests {
    @Test func rendersIndentedAndEscaped() {
        let value = JSONValue.object([
            ("name", .string("a \"quoted\" \\ line\nnext\u{01}")),
            ("list", .array([.int(1), .int(-2)])),
            ("empty", .array([])),
            ("nested", .object([])),
        ])
        #expect(
            value.rendered() == """
                {
                  "name": "a \\"quoted\\" \\\\ line\\nnext\\u0001",
                  "list": [
                    1,
                    -2
                  ],
                  "empty": [],
                  "nested": {}
                }
                """)
    }
}
