// Thin pybind11 binding of twm::ReplayCore (replay_core.hpp) for twm_fast/replay/fast.py.
//
// Arrays come in as numpy buffers and are written in place (outputs are preallocated by the
// caller); the Python wrapper checks shapes and dtypes with friendly messages, this layer checks
// them again because a wrong buffer here would be memory corruption, not a wrong number.
// Every call takes the core's mutex; the long ones (sampling, gathers, state import) release the
// GIL first, so a prefetch thread can read the next batch while Python does other work. The
// mutex is always released before the GIL is taken back (release guard declared first), so a
// thread holding the GIL and waiting for the mutex cannot deadlock with one holding the mutex.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <mutex>
#include <string>
#include <vector>

#include "replay_core.hpp"

namespace py = pybind11;

namespace {

template <class T>
T* buffer(py::array& a, const std::vector<py::ssize_t>& shape, const char* name, bool writable) {
  if (!py::isinstance<py::array_t<T>>(a))
    throw std::invalid_argument(std::string(name) + ": wrong dtype " + std::string(py::str(a.dtype())));
  if (!(a.flags() & py::array::c_style)) throw std::invalid_argument(std::string(name) + " must be C-contiguous");
  if (writable && !a.writeable()) throw std::invalid_argument(std::string(name) + " must be writeable");
  bool same = a.ndim() == static_cast<py::ssize_t>(shape.size());
  for (size_t d = 0; same && d < shape.size(); ++d) same = a.shape(d) == shape[d];
  if (!same) throw std::invalid_argument(std::string(name) + " has the wrong shape");
  return static_cast<T*>(writable ? a.mutable_data() : const_cast<void*>(a.data()));
}

// numpy bool arrays are 1-byte 0/1 values: the core reads and writes them as uint8_t.
uint8_t* bool_buffer(py::array& a, const std::vector<py::ssize_t>& shape, const char* name, bool writable) {
  return reinterpret_cast<uint8_t*>(buffer<bool>(a, shape, name, writable));
}

class Replay {
 public:
  Replay(int64_t capacity, int64_t frame_stack, int64_t height, int64_t width, double temperature, uint64_t seed)
      : core_(capacity, frame_stack, height, width, temperature, seed), height_(height), width_(width) {}

  std::vector<py::ssize_t> obs_shape(py::ssize_t n) const { return {n, core_.frame_stack(), height_, width_}; }

  const uint8_t* obs_buffer(py::array& obs) {
    return buffer<uint8_t>(obs, {core_.frame_stack(), height_, width_}, "obs", false);
  }

  twm::ReplayCore core_;
  std::mutex mutex_;
  int64_t height_, width_;
};

using Lock = std::lock_guard<std::mutex>;

}  // namespace

PYBIND11_MODULE(_replay, m) {
  m.doc() = "twm-fast replay core: ring buffer of single frames + Eq. 6 balanced sampler (C++17, torch-free)";

  py::class_<Replay>(m, "ReplayCore")
      .def(py::init<int64_t, int64_t, int64_t, int64_t, double, uint64_t>(), py::arg("capacity"),
           py::arg("frame_stack"), py::arg("height"), py::arg("width"), py::arg("temperature"), py::arg("seed"))
      .def_property_readonly("capacity", [](Replay& r) { return r.core_.capacity(); })
      .def_property_readonly("frame_stack", [](Replay& r) { return r.core_.frame_stack(); })
      .def_property_readonly("temperature", [](Replay& r) { return r.core_.temperature(); })
      .def_property_readonly("started", [](Replay& r) { Lock l(r.mutex_); return r.core_.started(); })
      .def_property_readonly("total_steps", [](Replay& r) { Lock l(r.mutex_); return r.core_.total_steps(); })
      .def_property_readonly("num_steps", [](Replay& r) { Lock l(r.mutex_); return r.core_.num_steps(); })
      .def_property_readonly("first_step", [](Replay& r) { Lock l(r.mutex_); return r.core_.first_step(); })
      .def_property_readonly("num_obs", [](Replay& r) { Lock l(r.mutex_); return r.core_.num_obs(); })
      .def("num_valid_starts", [](Replay& r, int64_t length) { Lock l(r.mutex_); return r.core_.num_valid_starts(length); })
      .def("add_first", [](Replay& r, py::array obs) {
        const uint8_t* p = r.obs_buffer(obs);
        Lock l(r.mutex_);
        r.core_.add_first(p);
      })
      .def("add", [](Replay& r, int64_t action, float reward, bool terminated, bool truncated, py::array next_obs) {
        const uint8_t* p = r.obs_buffer(next_obs);
        Lock l(r.mutex_);
        r.core_.add(action, reward, terminated, truncated, p);
      })
      .def("restart_episode", [](Replay& r, py::array obs) {
        const uint8_t* p = r.obs_buffer(obs);
        Lock l(r.mutex_);
        r.core_.restart_episode(p);
      })
      .def("sample_starts", [](Replay& r, int64_t batch, int64_t length, py::array out, bool update_visits) {
        int64_t* o = buffer<int64_t>(out, {batch}, "out", true);
        py::gil_scoped_release release;
        Lock l(r.mutex_);
        r.core_.sample_starts(batch, length, o, update_visits);
      })
      .def("uniform_starts", [](Replay& r, int64_t length) {
        std::vector<int64_t> starts;
        {
          Lock l(r.mutex_);
          starts = r.core_.uniform_starts(length);
        }
        py::array_t<int64_t> out(static_cast<py::ssize_t>(starts.size()));
        std::copy(starts.begin(), starts.end(), out.mutable_data());
        return out;
      })
      .def("random_obs_indices", [](Replay& r, int64_t n, py::array out) {
        int64_t* o = buffer<int64_t>(out, {n}, "out", true);
        Lock l(r.mutex_);
        r.core_.random_obs_indices(n, o);
      })
      .def("mark_visited", [](Replay& r, py::array starts) {
        const int64_t* s = buffer<int64_t>(starts, {starts.size()}, "starts", false);
        Lock l(r.mutex_);
        r.core_.mark_visited(s, starts.size());
      })
      .def("visit_counts", [](Replay& r, int64_t length) {
        Lock l(r.mutex_);
        const int64_t n = r.core_.num_valid_starts(length);
        py::array_t<int64_t> starts(n), visits(n);
        r.core_.visit_counts(length, starts.mutable_data(), visits.mutable_data());
        return py::make_tuple(starts, visits);
      })
      .def("read_windows", [](Replay& r, py::array starts, int64_t length, py::array obs, py::array actions,
                              py::array rewards, py::array terminated, py::array truncated) {
        const py::ssize_t b = starts.size();
        const int64_t* s = buffer<int64_t>(starts, {b}, "starts", false);
        std::vector<py::ssize_t> obs_shape = r.obs_shape(length + 2);
        obs_shape.insert(obs_shape.begin(), b);
        uint8_t* o = buffer<uint8_t>(obs, obs_shape, "obs", true);
        int64_t* a = buffer<int64_t>(actions, {b, length + 1}, "actions", true);
        float* rw = buffer<float>(rewards, {b, length + 1}, "rewards", true);
        uint8_t* te = bool_buffer(terminated, {b, length + 1}, "terminated", true);
        uint8_t* tr = bool_buffer(truncated, {b, length + 1}, "truncated", true);
        py::gil_scoped_release release;
        Lock l(r.mutex_);
        r.core_.read_windows(s, b, length, o, a, rw, te, tr);
      })
      .def("read_obs", [](Replay& r, py::array indices, py::array out) {
        const py::ssize_t n = indices.size();
        const int64_t* idx = buffer<int64_t>(indices, {n}, "indices", false);
        uint8_t* o = buffer<uint8_t>(out, r.obs_shape(n), "out", true);
        py::gil_scoped_release release;
        Lock l(r.mutex_);
        r.core_.read_obs(idx, n, o);
      })
      .def("export_state", [](Replay& r, py::array frames, py::array is_reset, py::array actions, py::array rewards,
                              py::array terminated, py::array truncated, py::array visits) {
        // Keeps the GIL: the sizes checked here must not change before the copy (checkpoints only).
        Lock l(r.mutex_);
        const py::ssize_t n_obs = r.core_.num_obs(), n = r.core_.num_steps();
        uint8_t* f = buffer<uint8_t>(frames, {n_obs, r.height_, r.width_}, "frames", true);
        uint8_t* ir = bool_buffer(is_reset, {n_obs}, "is_reset", true);
        int64_t* a = buffer<int64_t>(actions, {n}, "actions", true);
        float* rw = buffer<float>(rewards, {n}, "rewards", true);
        uint8_t* te = bool_buffer(terminated, {n}, "terminated", true);
        uint8_t* tr = bool_buffer(truncated, {n}, "truncated", true);
        int64_t* v = buffer<int64_t>(visits, {n}, "visits", true);
        r.core_.export_state(f, ir, a, rw, te, tr, v);
      })
      .def("import_state", [](Replay& r, int64_t total_steps, bool started, py::array frames, py::array is_reset,
                              py::array actions, py::array rewards, py::array terminated, py::array truncated,
                              py::array visits) {
        // Sizes follow from total_steps exactly as in export_state.
        const int64_t n = std::min(total_steps, r.core_.capacity());
        const int64_t first_obs = std::max<int64_t>(0, total_steps - n - r.core_.frame_stack() + 1);
        const int64_t n_obs = started ? total_steps - first_obs + 1 : 0;
        const uint8_t* f = buffer<uint8_t>(frames, {n_obs, r.height_, r.width_}, "frames", false);
        const uint8_t* ir = bool_buffer(is_reset, {n_obs}, "is_reset", false);
        const int64_t* a = buffer<int64_t>(actions, {n}, "actions", false);
        const float* rw = buffer<float>(rewards, {n}, "rewards", false);
        const uint8_t* te = bool_buffer(terminated, {n}, "terminated", false);
        const uint8_t* tr = bool_buffer(truncated, {n}, "truncated", false);
        const int64_t* v = buffer<int64_t>(visits, {n}, "visits", false);
        py::gil_scoped_release release;
        Lock l(r.mutex_);
        r.core_.import_state(total_steps, started, f, ir, a, rw, te, tr, v);
      })
      .def("rng_state", [](Replay& r) {
        Lock l(r.mutex_);
        const auto& s = r.core_.rng().state();
        py::array_t<uint64_t> out(4);
        std::copy(s.begin(), s.end(), out.mutable_data());
        return out;
      })
      .def("set_rng_state", [](Replay& r, py::array state) {
        const uint64_t* s = buffer<uint64_t>(state, {4}, "rng_state", false);
        Lock l(r.mutex_);
        r.core_.rng().set_state({s[0], s[1], s[2], s[3]});
      });
}
