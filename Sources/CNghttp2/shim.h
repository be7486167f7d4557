// nghttp2 imports fully; this header only brings it in.
#include <nghttp2/nghttp2.h>
