// Unit tests of the header-only replay core, without Python: compiled and run by
// tests/test_replay_cpp.py (g++ -std=c++17 -O1 -Icsrc). Prints each failure; exit code = failures.
#include <cmath>
#include <cstdio>
#include <functional>
#include <map>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "balanced_sampler.hpp"
#include "replay_core.hpp"

static int failures = 0;

#define CHECK(cond)                                                     \
  do {                                                                  \
    if (!(cond)) {                                                      \
      std::printf("%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      ++failures;                                                       \
    }                                                                   \
  } while (0)

// True if fn throws std::invalid_argument whose message contains `needle`.
static bool throws_with(const std::function<void()>& fn, const std::string& needle) {
  try {
    fn();
  } catch (const std::invalid_argument& e) {
    if (std::string(e.what()).find(needle) != std::string::npos) return true;
    std::printf("  unexpected message: %s\n", e.what());
    return false;
  }
  return false;
}

static void test_rng() {
  twm::Rng a(7), b(7), c(8);
  bool all_same = true, any_diff = false;
  for (int i = 0; i < 100; ++i) {
    const uint64_t x = a.next();
    all_same &= x == b.next();
    any_diff |= x != c.next();
  }
  CHECK(all_same);
  CHECK(any_diff);
  for (int i = 0; i < 10000; ++i) {
    const double u = a.uniform01();
    CHECK(u >= 0.0 && u < 1.0);
    CHECK(a.below(7) < 7);
  }
  twm::Rng d(1);
  d.set_state(a.state());
  CHECK(d.next() == a.next());
  CHECK(throws_with([&] { d.set_state({0, 0, 0, 0}); }, "all zeros"));
}

static void test_sum_tree() {
  twm::SumTree tree(5);  // padded to 8 leaves
  const double w[5] = {1.0, 0.0, 2.0, 0.5, 0.0};
  for (int i = 0; i < 5; ++i) tree.set(i, w[i]);
  const auto find = [&tree](double u) {
    size_t leaf;
    tree.find(&u, 1, &leaf);
    return leaf;
  };
  CHECK(tree.total() == 3.5);
  CHECK(find(0.0) == 0);
  CHECK(find(0.999) == 0);
  CHECK(find(1.0) == 2);
  CHECK(find(2.999) == 2);
  CHECK(find(3.0) == 3);
  CHECK(find(3.5) == 3);  // u at the very edge still lands on a positive leaf
  CHECK(find(1e9) == 3);
  const double before = tree.total();
  tree.set(2, 0.0);
  CHECK(find(1.0) == 3);
  const double us[3] = {0.5, 2.0, 3.4};  // several descents at once
  size_t leaves[3];
  tree.find(us, 3, leaves);
  CHECK(leaves[0] == 0 && leaves[1] == 3 && leaves[2] == 3);
  tree.set(2, 2.0);
  CHECK(tree.total() == before);  // bit-identical after zero + restore
  twm::SumTree one(1);
  one.set(0, 4.0);
  const double u = 3.0;
  size_t leaf = 7;
  one.find(&u, 1, &leaf);
  CHECK(one.total() == 4.0 && leaf == 0);
}

static void test_sampler() {
  const size_t n = 10;
  twm::BalancedSampler sampler(n, 1.0);
  for (size_t k = 0; k < n; ++k) sampler.reset_slot(k);
  twm::Rng rng(3);
  // Distinct draws, excluded slots never drawn, counters +1 each.
  std::vector<size_t> out(7);
  sampler.sample({0, 9, 4}, out.size(), rng, out.data(), true);
  std::set<size_t> drawn(out.begin(), out.end());
  CHECK(drawn.size() == 7);
  CHECK(!drawn.count(0) && !drawn.count(9) && !drawn.count(4));
  for (size_t k = 0; k < n; ++k) CHECK(sampler.visits(k) == (drawn.count(k) ? 1 : 0));
  // Eq. 6 with B = 1: frequencies close to softmax(-v / tau).
  twm::BalancedSampler three(3, 2.0);
  for (size_t k = 0; k < 3; ++k) three.reset_slot(k);
  three.add_visits(1, 2);
  three.add_visits(2, 4);
  std::vector<double> p = {1.0, std::exp(-1.0), std::exp(-2.0)};
  const double z = p[0] + p[1] + p[2];
  std::vector<int> hits(3, 0);
  const int draws = 200000;
  for (int i = 0; i < draws; ++i) {
    size_t slot;
    three.sample({}, 1, rng, &slot, false);
    ++hits[slot];
  }
  for (size_t k = 0; k < 3; ++k) CHECK(std::fabs(hits[k] / double(draws) - p[k] / z) < 0.005);
  // Old entries with huge counts: the weights re-centre (rebase) instead of underflowing ...
  twm::BalancedSampler old(4, 1.0);
  std::vector<int64_t> big = {5000, 5001, 5000, 5003};
  old.load(big.data(), 4);
  CHECK(old.base() == 5000.0);
  old.sample({}, 4, rng, out.data(), true);  // all four, distinct
  CHECK(std::set<size_t>(out.begin(), out.begin() + 4).size() == 4);
  // ... and a fresh v = 0 next to them moves the base down rather than overflowing exp(base / tau).
  twm::BalancedSampler fresh(5, 1.0);
  std::vector<int64_t> high = {5000, 5000, 5000, 5000};
  fresh.load(high.data(), 4);
  fresh.reset_slot(4);
  CHECK(fresh.base() == 0.0);
  for (int i = 0; i < 100; ++i) {
    size_t slot;
    fresh.sample({}, 1, rng, &slot, false);
    CHECK(slot == 4);  // e^-5000 relative weight for the others
  }
  // Fewer weights than draws that survive underflow: the later draws re-centre on the rest.
  twm::BalancedSampler mixed(4, 0.01);
  std::vector<int64_t> gap = {0, 900, 900, 900};
  mixed.load(gap.data(), 4);
  mixed.sample({}, 4, rng, out.data(), false);
  CHECK(out[0] == 0);
  CHECK(std::set<size_t>(out.begin(), out.begin() + 4).size() == 4);
  // tau = inf: uniform, whatever the counts.
  twm::BalancedSampler uniform(2, INFINITY);
  uniform.reset_slot(0);
  uniform.reset_slot(1);
  uniform.add_visits(0, 1000);
  int zero = 0;
  for (int i = 0; i < 20000; ++i) {
    size_t slot;
    uniform.sample({}, 1, rng, &slot, true);
    zero += slot == 0;
  }
  CHECK(std::fabs(zero / 20000.0 - 0.5) < 0.02);
  CHECK(throws_with([] { twm::BalancedSampler bad(2, 0.0); }, "temperature"));
}

// A stream obeying the frame-stack contract, with every observation kept for comparison.
struct Stream {
  Stream(int64_t k, int64_t h, int64_t w) : K(k), H(h), W(w) {}
  int64_t K, H, W;
  std::vector<std::vector<uint8_t>> obs;  // o_0 .. o_T, each (K, H, W)
  std::vector<int64_t> actions;
  std::vector<float> rewards;
  std::vector<uint8_t> terminated, truncated;
  twm::Rng rng{11};

  std::vector<uint8_t> frame() {
    std::vector<uint8_t> f(H * W);
    for (auto& x : f) x = static_cast<uint8_t>(rng.below(256));
    return f;
  }
  std::vector<uint8_t> reset_obs() {
    const auto f = frame();
    std::vector<uint8_t> o;
    for (int64_t k = 0; k < K; ++k) o.insert(o.end(), f.begin(), f.end());
    return o;
  }
  std::vector<uint8_t> shifted(const std::vector<uint8_t>& prev) {
    std::vector<uint8_t> o(prev.begin() + H * W, prev.end());
    const auto f = frame();
    o.insert(o.end(), f.begin(), f.end());
    return o;
  }
  void step(twm::ReplayCore& replay) {
    const bool done = rng.below(5) == 0;
    const bool term = done && rng.below(2) == 0;
    const auto next = done ? reset_obs() : shifted(obs.back());
    actions.push_back(static_cast<int64_t>(rng.below(6)));
    rewards.push_back(static_cast<float>(rng.uniform01()) - 0.5f);
    terminated.push_back(term);
    truncated.push_back(done && !term);
    obs.push_back(next);
    replay.add(actions.back(), rewards.back(), terminated.back(), truncated.back(), next.data());
  }
};

static void test_core_reads(int64_t capacity, int64_t steps) {
  const int64_t K = 4, H = 3, W = 5, L = 3;
  twm::ReplayCore replay(capacity, K, H, W, 20.0, 0);
  Stream s(K, H, W);
  s.obs.push_back(s.reset_obs());
  replay.add_first(s.obs[0].data());
  for (int64_t i = 0; i < steps; ++i) s.step(replay);
  const int64_t T = replay.total_steps(), F = replay.first_step();
  CHECK(T == steps);
  CHECK(F == std::max<int64_t>(0, steps - capacity));
  CHECK(replay.num_steps() == T - F);
  // Every readable observation equals what the "env" produced.
  std::vector<uint8_t> stack(K * H * W);
  for (int64_t j = F; j <= T; ++j) {
    replay.read_obs(&j, 1, stack.data());
    CHECK(stack == s.obs[j]);
  }
  // Every valid window equals the stream, with the published padding at s == 0.
  const auto [lo, hi] = replay.start_range(L);
  CHECK(lo == (F == 0 ? 0 : F + 1));
  CHECK(hi == T - L);
  const size_t stack_bytes = K * H * W;
  std::vector<uint8_t> obs((L + 2) * stack_bytes), term(L + 1), trunc(L + 1);
  std::vector<int64_t> act(L + 1);
  std::vector<float> rew(L + 1);
  for (int64_t start = lo; start <= hi; ++start) {
    replay.read_windows(&start, 1, L, obs.data(), act.data(), rew.data(), term.data(), trunc.data());
    for (int64_t t = 0; t < L + 2; ++t) {
      const int64_t j = t == 0 ? std::max<int64_t>(start - 1, 0) : start + t - 1;
      CHECK(std::vector<uint8_t>(obs.begin() + t * stack_bytes, obs.begin() + (t + 1) * stack_bytes) == s.obs[j]);
    }
    for (int64_t t = 0; t < L + 1; ++t) {
      const int64_t i = start - 1 + t;
      CHECK(act[t] == (i < 0 ? 0 : s.actions[i]));
      CHECK(rew[t] == (i < 0 ? 0.0f : s.rewards[i]));
      CHECK(term[t] == s.terminated[std::max<int64_t>(i, 0)]);
      CHECK(trunc[t] == s.truncated[std::max<int64_t>(i, 0)]);
    }
  }
  // Indices outside the stored range are errors naming the valid range.
  const int64_t bad_start = F > 0 ? F : T;
  CHECK(throws_with([&] {
    replay.read_windows(&bad_start, 1, L, obs.data(), act.data(), rew.data(), term.data(), trunc.data());
  }, "valid starts are"));
  const int64_t bad_obs = T + 1;
  CHECK(throws_with([&] { replay.read_obs(&bad_obs, 1, stack.data()); }, "readable observations are"));
  if (hi < lo) return;  // capacity 1: a window needs its context step too, so none is ever valid
  std::vector<int64_t> starts(hi - lo + 2);
  CHECK(throws_with([&] { replay.sample_starts(hi - lo + 2, L, starts.data(), true); }, "need at least"));
  // A full batch of all valid starts draws each exactly once and counts it.
  replay.sample_starts(hi - lo + 1, L, starts.data(), true);
  std::set<int64_t> drawn(starts.begin(), starts.end() - 1);
  CHECK(static_cast<int64_t>(drawn.size()) == hi - lo + 1 && *drawn.begin() == lo && *drawn.rbegin() == hi);
  std::vector<int64_t> vs(hi - lo + 1), vc(hi - lo + 1);
  replay.visit_counts(L, vs.data(), vc.data());
  for (int64_t k = 0; k <= hi - lo; ++k) CHECK(vs[k] == lo + k && vc[k] == 1);
  // State export -> import into a fresh core gives identical reads and counters.
  const int64_t n_obs = replay.num_obs(), n = replay.num_steps();
  std::vector<uint8_t> frames(n_obs * H * W), is_reset(n_obs), te(n), tr(n);
  std::vector<int64_t> a(n), v(n);
  std::vector<float> r(n);
  replay.export_state(frames.data(), is_reset.data(), a.data(), r.data(), te.data(), tr.data(), v.data());
  twm::ReplayCore copy(capacity, K, H, W, 20.0, 99);
  copy.import_state(T, true, frames.data(), is_reset.data(), a.data(), r.data(), te.data(), tr.data(), v.data());
  for (int64_t j = F; j <= T; ++j) {
    std::vector<uint8_t> x(stack_bytes);
    copy.read_obs(&j, 1, x.data());
    CHECK(x == s.obs[j]);
  }
  std::vector<int64_t> cs(hi - lo + 1), cc(hi - lo + 1);
  copy.visit_counts(L, cs.data(), cc.data());
  CHECK(cs == vs && cc == vc);
  is_reset[n_obs - 1] ^= 1;  // a flag that contradicts the done flags is refused
  CHECK(throws_with([&] {
    copy.import_state(T, true, frames.data(), is_reset.data(), a.data(), r.data(), te.data(), tr.data(), v.data());
  }, "inconsistent state"));
}

static void test_core_errors() {
  const int64_t K = 4, H = 2, W = 2;
  CHECK(throws_with([] { twm::ReplayCore bad(0, 4, 2, 2, 20.0, 0); }, "capacity must be positive"));
  twm::ReplayCore replay(8, K, H, W, 20.0, 0);
  std::vector<uint8_t> reset(K * H * W, 7), mixed(K * H * W, 7);
  mixed[0] = 8;
  CHECK(throws_with([&] { replay.add(0, 0.0f, false, false, reset.data()); }, "add() before add_first()"));
  CHECK(throws_with([&] { replay.add_first(mixed.data()); }, "copies of one frame"));
  replay.add_first(reset.data());
  CHECK(throws_with([&] { replay.add_first(reset.data()); }, "already called"));
  CHECK(throws_with([&] { replay.add(0, 0.0f, true, false, mixed.data()); }, "copies of one frame"));
  std::vector<uint8_t> not_shifted(K * H * W, 9);
  CHECK(throws_with([&] { replay.add(0, 0.0f, false, false, not_shifted.data()); }, "shift in"));
  CHECK(replay.total_steps() == 0);  // failed adds change nothing
  // restart_episode: the last step becomes truncated, o_T the new reset observation.
  std::vector<uint8_t> next(reset);
  for (int64_t i = (K - 1) * H * W; i < K * H * W; ++i) next[i] = 1;
  replay.add(2, 0.5f, false, false, next.data());
  std::vector<uint8_t> fresh(K * H * W, 42);
  replay.restart_episode(fresh.data());
  std::vector<uint8_t> stack(K * H * W), obs(3 * K * H * W), te(2), tr(2);
  const int64_t one = 1, zero = 0;
  replay.read_obs(&one, 1, stack.data());
  CHECK(stack == fresh);
  std::vector<int64_t> a(2);
  std::vector<float> r(2);
  replay.read_windows(&zero, 1, 1, obs.data(), a.data(), r.data(), te.data(), tr.data());
  CHECK(tr[1] == 1 && te[1] == 0 && a[1] == 2);
}

int main() {
  test_rng();
  test_sum_tree();
  test_sampler();
  test_core_reads(1000, 60);  // no wrap
  test_core_reads(13, 60);    // wrapped several times
  test_core_reads(1, 9);      // capacity 1
  test_core_errors();
  std::printf("%s: %d failure(s)\n", failures ? "FAILED" : "OK", failures);
  return failures;
}
