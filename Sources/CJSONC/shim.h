// json-c imports fully; this header only brings it in.
#include <json-c/json.h>
