// libyaml imports fully; this header only brings it in.
#include <yaml.h>
