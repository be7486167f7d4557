// The code unit width must be defined before the header: a cSettings define does not reach the Swift importer.
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

static inline size_t wp_pcre2_zero_terminated(void) { return PCRE2_ZERO_TERMINATED; }
