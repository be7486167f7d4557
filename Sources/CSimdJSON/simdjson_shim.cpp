// See include/simdjson_shim.h. Only simdjson's public DOM API is used.
#include "simdjson_shim.h"

#include <cstring>
#include <memory>
#include <new>
#include <simdjson.h>

struct wp_json_parser {
    simdjson::dom::parser parser;
    /// The input copied with SIMDJSON_PADDING bytes after it, which simdjson may read.
    std::unique_ptr<char[]> input;
    size_t input_capacity = 0;
};

namespace {

void walk(simdjson::dom::element value, const wp_json_visitor *visitor, void *context) {
    using simdjson::dom::element_type;
    switch (value.type()) {
    case element_type::ARRAY: {
        simdjson::dom::array array = value.get_array().value_unsafe();
        visitor->begin(context, false);
        for (simdjson::dom::element element : array) walk(element, visitor, context);
        visitor->end(context);
        break;
    }
    case element_type::OBJECT: {
        simdjson::dom::object object = value.get_object().value_unsafe();
        visitor->begin(context, true);
        for (simdjson::dom::key_value_pair field : object) {
            visitor->key(context, field.key.data(), field.key.size());
            walk(field.value, visitor, context);
        }
        visitor->end(context);
        break;
    }
    case element_type::STRING: {
        std::string_view text = value.get_string().value_unsafe();
        visitor->string_value(context, text.data(), text.size());
        break;
    }
    case element_type::INT64: visitor->int_value(context, value.get_int64().value_unsafe()); break;
    case element_type::UINT64: visitor->uint_value(context, value.get_uint64().value_unsafe()); break;
    case element_type::DOUBLE: visitor->double_value(context, value.get_double().value_unsafe()); break;
    case element_type::BOOL: visitor->bool_value(context, value.get_bool().value_unsafe()); break;
    case element_type::NULL_VALUE: visitor->null_value(context); break;
    }
}

}  // namespace

extern "C" wp_json_parser *wp_json_parser_new(size_t max_depth) {
    wp_json_parser *parser = new (std::nothrow) wp_json_parser();
    if (parser == nullptr) return nullptr;
    // The depth set here stays as the buffers grow (simdjson reallocates with the parser's max_depth).
    if (parser->parser.allocate(4096, max_depth) != simdjson::SUCCESS) {
        delete parser;
        return nullptr;
    }
    return parser;
}

extern "C" void wp_json_parser_free(wp_json_parser *parser) { delete parser; }

extern "C" const char *wp_json_parse(
    wp_json_parser *parser, const char *bytes, size_t length, const wp_json_visitor *visitor, void *context) {
    if (length + simdjson::SIMDJSON_PADDING > parser->input_capacity) {
        size_t capacity = length + simdjson::SIMDJSON_PADDING;
        std::unique_ptr<char[]> input(new (std::nothrow) char[capacity]);
        if (!input) return "out of memory";
        parser->input = std::move(input);
        parser->input_capacity = capacity;
    }
    if (length > 0) std::memcpy(parser->input.get(), bytes, length);
    std::memset(parser->input.get() + length, 0, simdjson::SIMDJSON_PADDING);
    simdjson::dom::element root;
    simdjson::error_code error = parser->parser.parse(parser->input.get(), length, false).get(root);
    if (error != simdjson::SUCCESS) return simdjson::error_message(error);
    walk(root, visitor, context);
    return nullptr;
}
