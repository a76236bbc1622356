// Placeholder: the replay core lands with the C++ replay issue.
#include <pybind11/pybind11.h>
PYBIND11_MODULE(_replay, m) { m.doc() = "twm-fast replay core (placeholder)"; }
