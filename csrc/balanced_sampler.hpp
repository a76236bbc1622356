// Balanced sampling of window starts (TWM Eq. 6, SPEC 6), torch-free and header-only.
//
//   p_s = softmax(-v_s / tau) over the valid starts s, B distinct starts per batch, then v_s += 1.
//
// The published code recomputes a softmax over every stored start for each batch (O(capacity)).
// Here each stored step keeps a weight w_s = exp(-(v_s - base) / tau) in a sum tree, so one draw
// costs O(log capacity) and a batch O((B + L) log capacity): drawn starts are held at weight 0
// until the batch is complete (sampling without replacement, the successive-sampling law that
// numpy's Generator.choice(replace=False, p=...) and torch.multinomial also follow), and so are the
// stored steps that are not valid starts for this window length.
//
// `base` is a shift common to all weights; softmax does not depend on it, it only keeps the
// weights inside the double range over a whole run (see rebase()).
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <vector>

namespace twm {

// xoshiro256** (Blackman & Vigna, 2018): a fast generator whose whole state is 4 words, so the
// replay's RNG state fits in a checkpoint as a tiny array.
class Rng {
 public:
  using State = std::array<uint64_t, 4>;

  explicit Rng(uint64_t seed = 0) { reseed(seed); }

  // SplitMix64 expands the 64-bit seed into the 256-bit state (the seeding its authors recommend;
  // it never yields the all-zero state).
  void reseed(uint64_t seed) {
    for (auto& word : s_) {
      seed += 0x9e3779b97f4a7c15ULL;
      uint64_t z = seed;
      z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
      z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
      word = z ^ (z >> 31);
    }
  }

  uint64_t next() {
    const uint64_t result = rotl(s_[1] * 5, 7) * 9;
    const uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = rotl(s_[3], 45);
    return result;
  }

  // Uniform in [0, 1) with 53 random bits.
  double uniform01() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }

  // Uniform integer in [0, n), n > 0, without modulo bias (rejection of the short last block).
  uint64_t below(uint64_t n) {
    const uint64_t threshold = (0 - n) % n;  // 2^64 mod n
    uint64_t r = next();
    while (r < threshold) r = next();
    return r % n;
  }

  const State& state() const { return s_; }
  void set_state(const State& s) {
    if (s[0] == 0 && s[1] == 0 && s[2] == 0 && s[3] == 0)
      throw std::invalid_argument("RNG state is all zeros, which xoshiro256** cannot leave: not a saved state");
    s_ = s;
  }

 private:
  static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  State s_{};
};

// Binary sum tree over n leaves (padded to a power of two): set a leaf and fetch the leaf where a
// prefix sum crosses u, both O(log n). Parents are always recomputed from their children, never
// updated by differences, so zeroing a leaf and restoring it gives back bit-identical sums.
class SumTree {
 public:
  explicit SumTree(size_t n) {
    leaves_ = 1;
    while (leaves_ < n) leaves_ <<= 1;
    nodes_.assign(2 * leaves_, 0.0);
  }

  double total() const { return nodes_[1]; }
  double leaf(size_t i) const { return nodes_[leaves_ + i]; }

  void set(size_t i, double w) {
    size_t k = leaves_ + i;
    nodes_[k] = w;
    for (k >>= 1; k >= 1; k >>= 1) nodes_[k] = nodes_[2 * k] + nodes_[2 * k + 1];
  }

  // Bulk update: write leaves with set_leaf_only(), then rebuild() once (O(n)).
  void set_leaf_only(size_t i, double w) { nodes_[leaves_ + i] = w; }
  void rebuild() {
    for (size_t k = leaves_ - 1; k >= 1; --k) nodes_[k] = nodes_[2 * k] + nodes_[2 * k + 1];
  }

  // For each u[i] in [0, total()) (total() > 0), the leaf with prefix <= u[i] < prefix + w.
  // Always a leaf of positive weight: a step towards a child of zero sum (possible only through
  // rounding of u at the edges) goes to its sibling instead. The descents run level by level
  // across all queries, so their cache misses overlap instead of queueing one path at a time.
  void find(const double* u, size_t n, size_t* leaves) const {
    std::vector<double> rest(u, u + n);
    for (size_t i = 0; i < n; ++i) leaves[i] = 1;
    for (size_t width = 1; width < leaves_; width <<= 1) {
      for (size_t i = 0; i < n; ++i) {
        const size_t k = leaves[i];
        const double left = nodes_[2 * k];
        if ((rest[i] < left && left > 0.0) || nodes_[2 * k + 1] <= 0.0) {
          leaves[i] = 2 * k;
        } else {
          rest[i] -= left;
          leaves[i] = 2 * k + 1;
        }
      }
    }
    for (size_t i = 0; i < n; ++i) leaves[i] -= leaves_;
  }

 private:
  size_t leaves_;
  std::vector<double> nodes_;
};

// Visit counters v and Eq. 6 weights for the steps of a ring buffer, addressed by ring slot.
// Slots [0, stored) hold steps (the ring fills its slots in order); the others weigh 0.
class BalancedSampler {
 public:
  BalancedSampler(size_t capacity, double temperature)
      : temperature_(temperature),
        uniform_(std::isinf(temperature)),
        visits_(capacity, 0),
        held_(capacity, 0),
        tree_(capacity) {
    if (!(temperature > 0.0))
      throw std::invalid_argument("temperature must be > 0 (math.inf for uniform sampling)");
  }

  double temperature() const { return temperature_; }
  size_t stored() const { return stored_; }
  int64_t visits(size_t slot) const { return visits_[slot]; }
  double base() const { return base_; }

  // A new step enters `slot` (overwriting the step there, if any) with v = 0.
  void reset_slot(size_t slot) {
    if (slot > stored_) throw std::logic_error("ring slots must fill in order");
    if (slot == stored_) ++stored_;
    visits_[slot] = 0;
    // A fresh v = 0 far below the base (all old entries visited many times) would overflow
    // exp(base / tau): move the base down to the smallest count first.
    if (!uniform_ && base_ / temperature_ > kMaxExponent) {
      rebase();
    } else {
      tree_.set(slot, weight(0));
    }
  }

  void add_visits(size_t slot, int64_t n) {
    visits_[slot] += n;
    tree_.set(slot, weight(visits_[slot]));
  }

  // Replace all counters (checkpoint restore): visits[k] for slots [0, stored).
  void load(const int64_t* visits, size_t stored) {
    if (stored > visits_.size()) throw std::invalid_argument("more counters than slots");
    stored_ = stored;
    std::fill(visits_.begin(), visits_.end(), 0);
    std::copy(visits, visits + stored, visits_.begin());
    rebase();
  }

  // Eq. 6: draws `batch` distinct slots among the stored ones not listed in `excluded` (the
  // caller guarantees there are at least `batch` of them) with p proportional to exp(-v / tau),
  // successively without replacement; writes them in draw order to out_slots and, if
  // update_visits, adds one visit to each.
  //
  // Like numpy's Generator.choice(replace=False, p=...), each round draws the missing number with
  // replacement and keeps first occurrences in order; the next round draws with the slots found so
  // far at weight 0. The order of first occurrences of i.i.d. draws is exactly successive sampling,
  // and with B << N a batch almost always completes in one round of parallel tree descents.
  void sample(const std::vector<size_t>& excluded, size_t batch, Rng& rng, size_t* out_slots,
              bool update_visits) {
    for (size_t slot : excluded) hold(slot);
    std::vector<double> u(batch);
    std::vector<size_t> drawn(batch);
    size_t found = 0, zeroed = 0;  // out_slots[0, zeroed) are held at weight 0 in the tree
    bool rebased = false;
    while (found < batch) {
      for (; zeroed < found; ++zeroed) tree_.set(out_slots[zeroed], 0.0);
      // All candidates far above the base (v_min grew during the run) would underflow to 0:
      // re-centre the weights on the smallest count among the candidates.
      if (!(tree_.total() >= kMinTotal)) {
        rebase();
        rebased = true;
      }
      const size_t missing = batch - found;
      const double total = tree_.total();
      for (size_t i = 0; i < missing; ++i) u[i] = rng.uniform01() * total;
      tree_.find(u.data(), missing, drawn.data());
      for (size_t i = 0; i < missing; ++i) {
        if (held_[drawn[i]]) continue;  // a repeat of this round: dropped, as numpy does
        held_[drawn[i]] = 1;
        out_slots[found++] = drawn[i];
      }
    }
    if (update_visits)
      for (size_t b = 0; b < batch; ++b) ++visits_[out_slots[b]];
    for (size_t slot : excluded) held_[slot] = 0;
    for (size_t b = 0; b < batch; ++b) held_[out_slots[b]] = 0;
    if (rebased) {
      // The base may now sit above a held step's count: recentre on all steps so that no
      // weight can overflow once they are candidates again.
      rebase();
      return;
    }
    for (size_t slot : excluded) tree_.set(slot, weight(visits_[slot]));
    for (size_t b = 0; b < batch; ++b)
      if (b < zeroed || update_visits) tree_.set(out_slots[b], weight(visits_[out_slots[b]]));
  }

 private:
  // Weights stay at most e^300 (base <= every count + 300 tau), far from double overflow (e^709)
  // even summed over 2^32 leaves. A total of at least 1e-200 puts the largest candidate weight
  // above 1e-210, so a weight lost to underflow (below ~1e-308) had a relative probability under
  // 1e-98. In a real run (tau = 20, counts in the hundreds, fresh steps at 0) neither bound is ever
  // reached, so rebase() (O(capacity)) does not run.
  static constexpr double kMaxExponent = 300.0;
  static constexpr double kMinTotal = 1e-200;

  double weight(int64_t v) const {
    if (uniform_) return 1.0;  // tau = inf: Eq. 6 becomes uniform
    return std::exp(-(static_cast<double>(v) - base_) / temperature_);
  }

  void hold(size_t slot) {
    held_[slot] = 1;
    tree_.set(slot, 0.0);
  }

  // base = the smallest count among the stored steps that are not held, then all weights anew.
  void rebase() {
    int64_t v_min = std::numeric_limits<int64_t>::max();
    for (size_t k = 0; k < stored_; ++k)
      if (!held_[k]) v_min = std::min(v_min, visits_[k]);
    if (v_min != std::numeric_limits<int64_t>::max()) base_ = static_cast<double>(v_min);
    for (size_t k = 0; k < stored_; ++k) tree_.set_leaf_only(k, held_[k] ? 0.0 : weight(visits_[k]));
    tree_.rebuild();
  }

  double temperature_;
  bool uniform_;
  double base_ = 0.0;
  size_t stored_ = 0;
  std::vector<int64_t> visits_;
  std::vector<uint8_t> held_;
  SumTree tree_;
};

}  // namespace twm
