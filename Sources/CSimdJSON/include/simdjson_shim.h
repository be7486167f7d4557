// simdjson (a C++ library, Debian's libsimdjson-dev) behind a C interface, so that Swift imports it without C++
// interop: a parser that keeps its buffers, and a walk of each parsed document, value by value, through callbacks.
#ifndef WAYPOINT_SIMDJSON_SHIM_H
#define WAYPOINT_SIMDJSON_SHIM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// A simdjson parser and a padded copy of its input; both grow to the largest text parsed and are reused.
typedef struct wp_json_parser wp_json_parser;

/// What a walk tells, in document order: containers begin and end; an object's values each follow their key.
typedef struct wp_json_visitor {
    void (*null_value)(void *context);
    void (*bool_value)(void *context, bool value);
    void (*int_value)(void *context, int64_t value);
    void (*uint_value)(void *context, uint64_t value);
    void (*double_value)(void *context, double value);
    void (*string_value)(void *context, const char *bytes, size_t length);
    void (*key)(void *context, const char *bytes, size_t length);
    void (*begin)(void *context, bool object);
    void (*end)(void *context);
} wp_json_visitor;

/// A parser refusing nesting deeper than `max_depth`; NULL when out of memory.
wp_json_parser *wp_json_parser_new(size_t max_depth);
void wp_json_parser_free(wp_json_parser *parser);

/// Parses one complete JSON text (UTF-8 checked; whitespace around it only) and walks it through `visitor`.
/// Returns NULL when it did, else why not (a static string; nothing was walked).
const char *wp_json_parse(
    wp_json_parser *parser, const char *bytes, size_t length, const wp_json_visitor *visitor, void *context);

#ifdef __cplusplus
}
#endif

#endif
