// The replay ring buffer of TWM (SPEC 6), torch-free and header-only; python twin:
// twm_fast/replay/reference.py, which is the specification this core is held to.
//
// A stream of env steps i = 0, 1, ...: o_i (the frame stack at which a_i was taken), a_i, r_i,
// terminated_i, truncated_i, and after the last step its next observation, so n steps carry n + 1
// observations. Observation i + 1 is the env's next observation, or the one reset() returned when
// step i was done. Our envs' frame-stack contract: a reset observation is K copies of one frame
// and every step shifts in exactly one new frame, so each observation stores only its newest
// frame plus an is_reset flag, and the stack of observation j is rebuilt on read from the frames
// of j-K+1 .. j, clamped to the last reset observation <= j.
//
// Indices are logical (monotone, never wrapping). With T steps appended and capacity C:
//   stored steps        [F, T-1], F = max(0, T - C)           (step slot: i % C)
//   stored frames       [max(0, F-K+1), T]                    (frame slot: j % (C + K))
//   readable obs        [F, T]   (their whole stacks are stored)
//   valid window starts [lo, T - L] for length L, lo = 0 if F == 0 else F + 1: a window reads the
//                       context step s-1 (padded when s == 0), steps s..s+L-1 and obs s+L.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "balanced_sampler.hpp"

namespace twm {

class ReplayCore {
 public:
  ReplayCore(int64_t capacity, int64_t frame_stack, int64_t height, int64_t width, double temperature,
             uint64_t seed)
      : capacity_(check_positive(capacity, "capacity")),
        frame_stack_(check_positive(frame_stack, "frame_stack")),
        frame_bytes_(static_cast<size_t>(check_positive(height, "frame height")) *
                     static_cast<size_t>(check_positive(width, "frame width"))),
        frame_slots_(capacity + frame_stack),
        frames_(static_cast<size_t>(frame_slots_) * frame_bytes_),
        is_reset_(frame_slots_, 0),
        actions_(capacity, 0),
        rewards_(capacity, 0.0f),
        terminated_(capacity, 0),
        truncated_(capacity, 0),
        sampler_(static_cast<size_t>(capacity), temperature),
        rng_(seed) {}

  int64_t capacity() const { return capacity_; }
  int64_t frame_stack() const { return frame_stack_; }
  size_t frame_bytes() const { return frame_bytes_; }
  double temperature() const { return sampler_.temperature(); }
  bool started() const { return started_; }
  int64_t total_steps() const { return total_steps_; }
  int64_t num_steps() const { return std::min(total_steps_, capacity_); }
  int64_t first_step() const { return total_steps_ - num_steps(); }
  // Oldest observation whose frame is still stored (state export); obs [first_obs, T] exist.
  int64_t first_obs() const { return std::max<int64_t>(0, first_step() - frame_stack_ + 1); }
  int64_t num_obs() const { return started_ ? total_steps_ - first_obs() + 1 : 0; }
  Rng& rng() { return rng_; }

  // Valid window starts for length L: [lo, hi], empty when hi < lo (see the file comment).
  std::pair<int64_t, int64_t> start_range(int64_t length) const {
    const int64_t lo = first_step() == 0 ? 0 : first_step() + 1;
    const int64_t hi = started_ ? total_steps_ - length : -1;
    return {lo, hi};
  }
  int64_t num_valid_starts(int64_t length) const {
    const auto [lo, hi] = start_range(length);
    return std::max<int64_t>(0, hi - lo + 1);
  }

  // ---- Appending ------------------------------------------------------------------------------
  // obs: (K, H, W) uint8, the observation returned by the very first env.reset().
  void add_first(const uint8_t* obs) {
    if (started_) throw std::invalid_argument("add_first() was already called; use add() for later steps");
    check_reset_obs(obs, "add_first(obs)");
    write_obs(0, obs, true);
    started_ = true;
  }

  // One env step: a_T, r_T, the flags, and next_obs = o_{T+1} (the reset observation if done).
  void add(int64_t action, float reward, bool terminated, bool truncated, const uint8_t* next_obs) {
    if (!started_) throw std::invalid_argument("add() before add_first(): store the first reset observation first");
    const bool done = terminated || truncated;
    if (done) {
      check_reset_obs(next_obs, "add(next_obs) after a done step");
    } else {
      check_shifted(next_obs);
    }
    const size_t slot = static_cast<size_t>(total_steps_ % capacity_);
    actions_[slot] = action;
    rewards_[slot] = reward;
    terminated_[slot] = terminated;
    truncated_[slot] = truncated;
    sampler_.reset_slot(slot);
    write_obs(total_steps_ + 1, next_obs, done);
    ++total_steps_;
  }

  // Ends the current episode at the newest observation and continues from `obs`, a fresh reset
  // observation (after a resume, when the env could not be saved): the last step becomes
  // truncated unless it was already done, and o_T is replaced by obs.
  void restart_episode(const uint8_t* obs) {
    if (!started_) throw std::invalid_argument("restart_episode() before add_first()");
    check_reset_obs(obs, "restart_episode(obs)");
    if (total_steps_ > 0) {
      const size_t slot = static_cast<size_t>((total_steps_ - 1) % capacity_);
      if (!terminated_[slot]) truncated_[slot] = 1;
    }
    write_obs(total_steps_, obs, true);
  }

  // ---- Sampling (Eq. 6) -----------------------------------------------------------------------
  // Draws `batch` distinct valid starts for windows of `length`; out: (batch,) logical indices.
  void sample_starts(int64_t batch, int64_t length, int64_t* out, bool update_visits) {
    check_length(length);
    if (batch < 0) throw std::invalid_argument("batch_size must be >= 0");
    const int64_t n = num_valid_starts(length);
    if (batch > n)
      throw std::invalid_argument("need at least " + std::to_string(batch) + " valid window starts, have " +
                                  std::to_string(n) + " (length " + std::to_string(length) + ", " +
                                  describe_steps() + ")");
    if (batch == 0) return;
    const auto [lo, hi] = start_range(length);
    // Stored steps that are no valid start for this length: the oldest when the ring has
    // overwritten data (its context step is gone), and the newest L-1 (no room for the window).
    std::vector<size_t> excluded;
    for (int64_t s = first_step(); s < lo; ++s) excluded.push_back(step_slot(s));
    for (int64_t s = std::max(hi + 1, first_step()); s < total_steps_; ++s) excluded.push_back(step_slot(s));
    std::vector<size_t> slots(static_cast<size_t>(batch));
    sampler_.sample(excluded, slots.size(), rng_, slots.data(), update_visits);
    for (int64_t b = 0; b < batch; ++b) out[b] = step_of_slot(slots[b]);
  }

  // Every valid start with stride `length` from a random offset in [0, length), shuffled
  // (published generate_uniform_indices); visit counters untouched.
  std::vector<int64_t> uniform_starts(int64_t length) {
    check_length(length);
    const auto [lo, hi] = start_range(length);
    const int64_t offset = static_cast<int64_t>(rng_.below(static_cast<uint64_t>(length)));
    std::vector<int64_t> starts;
    for (int64_t s = lo + offset; s <= hi; s += length) starts.push_back(s);
    for (size_t i = starts.size(); i > 1; --i) std::swap(starts[i - 1], starts[rng_.below(i)]);  // Fisher-Yates
    return starts;
  }

  // Uniform observation indices in [F, T] (imagination restarts, obs-model pretraining).
  void random_obs_indices(int64_t n, int64_t* out) {
    if (!started_) throw std::invalid_argument("no observations stored yet: call add_first() first");
    if (n < 0) throw std::invalid_argument("n must be >= 0");
    const uint64_t count = static_cast<uint64_t>(total_steps_ - first_step() + 1);
    for (int64_t i = 0; i < n; ++i) out[i] = first_step() + static_cast<int64_t>(rng_.below(count));
  }

  // Adds one visit per occurrence of each start (stored steps only); tests replay a reference's
  // draws through this.
  void mark_visited(const int64_t* starts, int64_t n) {
    for (int64_t i = 0; i < n; ++i)
      if (starts[i] < first_step() || starts[i] >= total_steps_)
        throw std::invalid_argument("step " + std::to_string(starts[i]) + " is not stored: " + describe_steps());
    for (int64_t i = 0; i < n; ++i) sampler_.add_visits(step_slot(starts[i]), 1);
  }

  // starts_out, visits_out: (num_valid_starts(length),).
  void visit_counts(int64_t length, int64_t* starts_out, int64_t* visits_out) const {
    check_length(length);
    const auto [lo, hi] = start_range(length);
    for (int64_t s = lo; s <= hi; ++s) {
      starts_out[s - lo] = s;
      visits_out[s - lo] = sampler_.visits(step_slot(s));
    }
  }

  // ---- Reading ----------------------------------------------------------------------------------
  // For each start s (valid for `length` L), rows of the caller's arrays:
  //   obs (B, L+2, K, H, W) uint8: stacks of o_{s-1} (context), o_s .. o_{s+L-1}, o_{s+L} (next)
  //   actions (B, L+1) int64, rewards (B, L+1) float32, terminated/truncated (B, L+1) 0/1 bytes:
  //   steps s-1 .. s+L-1. s == 0 pads the context as the published code: o_0, action 0,
  //   reward 0, and the flags of step 0.
  void read_windows(const int64_t* starts, int64_t batch, int64_t length, uint8_t* obs, int64_t* actions,
                    float* rewards, uint8_t* terminated, uint8_t* truncated) const {
    check_length(length);
    const auto [lo, hi] = start_range(length);
    for (int64_t b = 0; b < batch; ++b)
      if (starts[b] < lo || starts[b] > hi)
        throw std::invalid_argument("start " + std::to_string(starts[b]) + " is not a valid window start for length " +
                                    std::to_string(length) + ": valid starts are " + describe_range(lo, hi) +
                                    " (" + describe_steps() + ")");
    const int64_t steps = length + 1;
    const size_t stack_bytes = frame_bytes_ * static_cast<size_t>(frame_stack_);
    for (int64_t b = 0; b < batch; ++b) {
      const int64_t s = starts[b];
      uint8_t* obs_row = obs + static_cast<size_t>(b) * static_cast<size_t>(length + 2) * stack_bytes;
      write_stack(s == 0 ? 0 : s - 1, obs_row);
      for (int64_t t = 0; t <= length; ++t) write_stack(s + t, obs_row + static_cast<size_t>(t + 1) * stack_bytes);
      for (int64_t t = 0; t < steps; ++t) {
        const int64_t i = s - 1 + t;
        const size_t k = b * steps + t;
        const size_t slot = step_slot(i < 0 ? 0 : i);
        actions[k] = i < 0 ? 0 : actions_[slot];
        rewards[k] = i < 0 ? 0.0f : rewards_[slot];
        terminated[k] = terminated_[slot];
        truncated[k] = truncated_[slot];
      }
    }
  }

  // out: (n, K, H, W) stacks of observations at indices in [F, T].
  void read_obs(const int64_t* indices, int64_t n, uint8_t* out) const {
    for (int64_t i = 0; i < n; ++i)
      if (!started_ || indices[i] < first_step() || indices[i] > total_steps_)
        throw std::invalid_argument("observation " + std::to_string(indices[i]) + " is not stored: readable observations are " +
                                    (started_ ? describe_range(first_step(), total_steps_) : std::string("none")) +
                                    " (" + describe_steps() + ")");
    const size_t stack_bytes = frame_bytes_ * static_cast<size_t>(frame_stack_);
    for (int64_t i = 0; i < n; ++i) write_stack(indices[i], out + static_cast<size_t>(i) * stack_bytes);
  }

  // ---- State in logical order (checkpoints; the same layout as the reference's state_dict) -----
  // frames (num_obs, H, W), is_reset (num_obs,) for obs [first_obs, T];
  // actions, rewards, terminated, truncated, visits (num_steps,) for steps [F, T-1].
  void export_state(uint8_t* frames, uint8_t* is_reset, int64_t* actions, float* rewards, uint8_t* terminated,
                    uint8_t* truncated, int64_t* visits) const {
    for (int64_t j = 0; j < num_obs(); ++j) {
      const size_t slot = obs_slot(first_obs() + j);
      std::memcpy(frames + j * frame_bytes_, frame(slot), frame_bytes_);
      is_reset[j] = is_reset_[slot];
    }
    for (int64_t i = 0; i < num_steps(); ++i) {
      const size_t slot = step_slot(first_step() + i);
      actions[i] = actions_[slot];
      rewards[i] = rewards_[slot];
      terminated[i] = terminated_[slot];
      truncated[i] = truncated_[slot];
      visits[i] = sampler_.visits(slot);
    }
  }

  // Inverse of export_state for a replay with total_steps steps (started: add_first was called),
  // arrays sized as export_state's for that total_steps. Checks the stream's consistency first and
  // leaves this replay unchanged when it throws; the RNG state is set separately.
  void import_state(int64_t total_steps, bool started, const uint8_t* frames, const uint8_t* is_reset,
                    const int64_t* actions, const float* rewards, const uint8_t* terminated,
                    const uint8_t* truncated, const int64_t* visits) {
    if (total_steps < 0 || (!started && total_steps > 0))
      throw std::invalid_argument("inconsistent state: total_steps " + std::to_string(total_steps) +
                                  (started ? "" : " without a first observation"));
    const int64_t stored = std::min(total_steps, capacity_);
    const int64_t first = total_steps - stored;
    const int64_t first_o = std::max<int64_t>(0, first - frame_stack_ + 1);
    const int64_t obs_count = started ? total_steps - first_o + 1 : 0;
    for (int64_t j = 0; j < obs_count; ++j) {
      const int64_t o = first_o + j;
      const bool after_done = o > first && (terminated[o - 1 - first] || truncated[o - 1 - first]);
      if ((o == 0 && !is_reset[j]) || (o > first && (is_reset[j] != 0) != after_done))
        throw std::invalid_argument("inconsistent state: observation " + std::to_string(o) + " has is_reset=" +
                                    std::to_string(is_reset[j] != 0) +
                                    ", but exactly observation 0 and those after a done step are resets");
    }
    for (int64_t i = 0; i < stored; ++i)
      if (visits[i] < 0) throw std::invalid_argument("inconsistent state: negative visit count");
    total_steps_ = total_steps;
    started_ = started;
    for (int64_t j = 0; j < obs_count; ++j) {
      const size_t slot = obs_slot(first_o + j);
      std::memcpy(frame(slot), frames + j * frame_bytes_, frame_bytes_);
      is_reset_[slot] = is_reset[j] != 0;
    }
    std::vector<int64_t> slot_visits(static_cast<size_t>(stored));
    for (int64_t i = 0; i < stored; ++i) {
      const size_t slot = step_slot(first + i);
      actions_[slot] = actions[i];
      rewards_[slot] = rewards[i];
      terminated_[slot] = terminated[i] != 0;
      truncated_[slot] = truncated[i] != 0;
      slot_visits[slot] = visits[i];
    }
    sampler_.load(slot_visits.data(), slot_visits.size());
  }

 private:
  static int64_t check_positive(int64_t x, const char* name) {
    if (x <= 0) throw std::invalid_argument(std::string(name) + " must be positive, got " + std::to_string(x));
    return x;
  }
  static void check_length(int64_t length) {
    if (length < 1) throw std::invalid_argument("length must be >= 1, got " + std::to_string(length));
  }
  static std::string describe_range(int64_t lo, int64_t hi) {
    return hi < lo ? std::string("none") : "[" + std::to_string(lo) + ", " + std::to_string(hi) + "]";
  }
  std::string describe_steps() const {
    return "stored steps " + describe_range(first_step(), total_steps_ - 1) + ", total_steps " +
           std::to_string(total_steps_);
  }

  size_t step_slot(int64_t i) const { return static_cast<size_t>(i % capacity_); }
  size_t obs_slot(int64_t j) const { return static_cast<size_t>(j % frame_slots_); }
  // The stored step whose slot is `slot`.
  int64_t step_of_slot(size_t slot) const {
    const int64_t f = first_step();
    return f + ((static_cast<int64_t>(slot) - f % capacity_) + capacity_) % capacity_;
  }
  uint8_t* frame(size_t slot) { return frames_.data() + slot * frame_bytes_; }
  const uint8_t* frame(size_t slot) const { return frames_.data() + slot * frame_bytes_; }

  // Calls fn(k, frame slot) for the K positions of the stack of obs j, newest first: walk back
  // from j, staying on a reset observation once reached (its K frames are copies of one frame).
  template <class Fn>
  void for_each_stack_frame(int64_t j, Fn&& fn) const {
    for (int64_t k = frame_stack_ - 1; k >= 0; --k) {
      const size_t slot = obs_slot(j);
      fn(k, slot);
      if (!is_reset_[slot]) --j;
    }
  }
  void write_stack(int64_t j, uint8_t* out) const {
    for_each_stack_frame(j, [&](int64_t k, size_t slot) {
      std::memcpy(out + static_cast<size_t>(k) * frame_bytes_, frame(slot), frame_bytes_);
    });
  }

  void write_obs(int64_t j, const uint8_t* obs, bool reset) {
    const size_t slot = obs_slot(j);
    std::memcpy(frame(slot), obs + static_cast<size_t>(frame_stack_ - 1) * frame_bytes_, frame_bytes_);
    is_reset_[slot] = reset;
  }

  // The frame-stack contract (SPEC 6): checked on insert so that reads equal what the env returned.
  void check_reset_obs(const uint8_t* obs, const char* what) const {
    const uint8_t* newest = obs + static_cast<size_t>(frame_stack_ - 1) * frame_bytes_;
    for (int64_t k = 0; k + 1 < frame_stack_; ++k)
      if (std::memcmp(obs + static_cast<size_t>(k) * frame_bytes_, newest, frame_bytes_) != 0)
        throw std::invalid_argument(std::string(what) + ": a reset observation must be " +
                                    std::to_string(frame_stack_) + " copies of one frame, but frame " +
                                    std::to_string(k) + " differs from the last (frame-stack contract, SPEC 6)");
  }
  void check_shifted(const uint8_t* next_obs) const {
    for_each_stack_frame(total_steps_, [&](int64_t k, size_t slot) {
      if (k > 0 && std::memcmp(next_obs + static_cast<size_t>(k - 1) * frame_bytes_, frame(slot), frame_bytes_) != 0)
        throw std::invalid_argument("add(next_obs): frame " + std::to_string(k - 1) +
                                    " of next_obs differs from frame " + std::to_string(k) +
                                    " of the previous observation; a step that is not done must shift in "
                                    "exactly one new frame (frame-stack contract, SPEC 6). Was terminated or "
                                    "truncated meant to be set?");
    });
  }

  int64_t capacity_;
  int64_t frame_stack_;
  size_t frame_bytes_;
  int64_t frame_slots_;
  std::vector<uint8_t> frames_;    // (C + K, H, W): newest frame of obs j at slot j % (C + K)
  std::vector<uint8_t> is_reset_;  // (C + K,)
  std::vector<int64_t> actions_;   // (C,): step i at slot i % C
  std::vector<float> rewards_;
  std::vector<uint8_t> terminated_;
  std::vector<uint8_t> truncated_;
  BalancedSampler sampler_;
  Rng rng_;
  int64_t total_steps_ = 0;
  bool started_ = false;
};

}  // namespace twm
