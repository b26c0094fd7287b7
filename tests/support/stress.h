// tests/support/stress.h: what every stress test shares: the knobs (environment variables),
// the seed, and a way to start threads together.
//
// Environment variables (all optional; defaults keep a ctest run to seconds on 2 cores):
//   NODEMETA_STRESS_THREADS  threads per test (default 4, however many cores there are)
//   NODEMETA_STRESS_ROUNDS   rounds / histories / ops-per-thread of every round-based test,
//                            replacing each test's own default (see rounds())
//   NODEMETA_STRESS_SECONDS  keep repeating rounds until this many seconds have passed
//                            (the default round count still runs first)
//   NODEMETA_STRESS_NODES    nodes of the graph-scale test (default 100000)
//   NODEMETA_STRESS_SEED     the seed of every randomised test; each test prints the seed it
//                            used, so `NODEMETA_STRESS_SEED=<printed> ctest -R <test>` replays
//                            its random choices (the thread schedule is the OS's, not ours)
// Sanitizer builds (ASAN, TSAN) run a fifth of the default rounds, never zero.
#ifndef NODEMETA_TESTS_SUPPORT_STRESS_H_
#define NODEMETA_TESTS_SUPPORT_STRESS_H_

#include <algorithm>
#include <atomic>
#include <barrier>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <iostream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#if defined(__SANITIZE_THREAD__)
#define NODEMETA_TEST_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define NODEMETA_TEST_TSAN 1
#endif
#endif
#ifndef NODEMETA_TEST_TSAN
#define NODEMETA_TEST_TSAN 0
#endif

#if NODEMETA_TEST_TSAN || defined(__SANITIZE_ADDRESS__)
#define NODEMETA_TEST_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define NODEMETA_TEST_SANITIZED 1
#endif
#endif
#ifndef NODEMETA_TEST_SANITIZED
#define NODEMETA_TEST_SANITIZED 0
#endif

namespace nodemeta::test {

inline constexpr bool kSanitized = NODEMETA_TEST_SANITIZED != 0;

// The value of a non-negative integer environment variable, or `fallback`.
inline std::uint64_t env_u64(const char* name, std::uint64_t fallback) {
  const char* text = std::getenv(name);
  if (text == nullptr || *text == '\0') return fallback;
  char* end = nullptr;
  const unsigned long long v = std::strtoull(text, &end, 10);
  if (end == text || *end != '\0') {
    std::fprintf(stderr, "ignoring %s=%s (not a number)\n", name, text);
    return fallback;
  }
  return v;
}

inline int threads() {
  return static_cast<int>(std::max<std::uint64_t>(2, env_u64("NODEMETA_STRESS_THREADS", 4)));
}

// The number of rounds a test runs: NODEMETA_STRESS_ROUNDS if set, else `fallback`
// (divided by 5 in sanitizer builds).
inline std::uint64_t rounds(std::uint64_t fallback) {
  if (kSanitized) fallback = std::max<std::uint64_t>(1, fallback / 5);
  return std::max<std::uint64_t>(1, env_u64("NODEMETA_STRESS_ROUNDS", fallback));
}

// Counts rounds: at least rounds(fallback), then more until NODEMETA_STRESS_SECONDS have
// passed since construction. Call next() from one thread only.
class RoundBudget {
 public:
  explicit RoundBudget(std::uint64_t fallback)
      : min_rounds_(rounds(fallback)),
        deadline_(std::chrono::steady_clock::now() +
                  std::chrono::seconds(env_u64("NODEMETA_STRESS_SECONDS", 0))) {}
  // True while another round should run; counts it.
  bool next() {
    if (done_ < min_rounds_ || std::chrono::steady_clock::now() < deadline_) {
      ++done_;
      return true;
    }
    return false;
  }
  std::uint64_t done() const { return done_; }

 private:
  std::uint64_t min_rounds_;
  std::chrono::steady_clock::time_point deadline_;
  std::uint64_t done_ = 0;
};

// The seed of the current test: NODEMETA_STRESS_SEED or a fresh random one. Printed, and
// recorded as the test's "seed" property, so every run can be replayed.
// Any value replays, 0 included: only an unset (or empty) variable draws a fresh seed.
inline std::uint64_t test_seed() {
  const char* given = std::getenv("NODEMETA_STRESS_SEED");
  const std::uint64_t fresh = (std::uint64_t{std::random_device{}()} << 32) | std::random_device{}();
  const std::uint64_t seed = given != nullptr && *given != '\0' ? env_u64("NODEMETA_STRESS_SEED", fresh) : fresh;
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::cout << "[ seed     ] " << (info ? info->name() : "?") << ": NODEMETA_STRESS_SEED=" << seed
            << " replays this test's random choices\n"
            << std::flush;
  ::testing::Test::RecordProperty("seed", std::to_string(seed));
  return seed;
}

// splitmix64: derives independent per-thread / per-node seeds from one seed.
inline std::uint64_t mix_seed(std::uint64_t seed, std::uint64_t stream) {
  std::uint64_t z = seed + 0x9E3779B97F4A7C15ULL * (stream + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// A small, fast UniformRandomBitGenerator (splitmix64), for per-node streams where
// seeding a std::mt19937_64 would cost more than the work.
class SplitMix64 {
 public:
  using result_type = std::uint64_t;
  explicit SplitMix64(std::uint64_t seed) : state_(seed) {}
  static constexpr result_type min() { return 0; }
  static constexpr result_type max() { return ~result_type{0}; }
  result_type operator()() { return mix_seed(state_++, 0); }

 private:
  std::uint64_t state_;
};

// A reusable spinning start gate for n threads: arrive_and_wait() returns in all of them
// once the n-th has arrived, within a few hundred nanoseconds of each other when they have
// CPUs (std::barrier may put waiters to sleep and wake them one by one). Spins, then
// yields, so it stays usable when threads outnumber cores.
class SpinGate {
 public:
  explicit SpinGate(int n) : n_(n) {}
  void arrive_and_wait() {
    const std::uint64_t generation = generation_.load(std::memory_order_acquire);
    if (arrived_.fetch_add(1, std::memory_order_acq_rel) + 1 == n_) {
      arrived_.store(0, std::memory_order_relaxed);
      generation_.fetch_add(1, std::memory_order_acq_rel);
      return;
    }
    for (int spins = 0; generation_.load(std::memory_order_acquire) == generation; ++spins) {
      if (spins > 256) std::this_thread::yield();
    }
  }

 private:
  const int n_;
  std::atomic<int> arrived_{0};
  std::atomic<std::uint64_t> generation_{0};
};

// Runs body(t) for t in [0, n) on n threads that all wait on one std::barrier before
// calling body, so they start together; returns when all have finished. `body` may use
// `sync` (n participants) for its own phases. An exception escaping a body is a test bug
// that would leave the others waiting on the barrier: it is printed and the test aborts.
template <class Body>
void run_together(int n, Body body) {
  std::barrier<> sync(n);
  std::vector<std::thread> pool;
  pool.reserve(static_cast<std::size_t>(n));
  for (int t = 0; t < n; ++t) {
    pool.emplace_back([&sync, &body, t] {
      try {
        sync.arrive_and_wait();
        body(t, sync);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "stress thread %d: unexpected exception: %s\n", t, e.what());
        std::abort();
      }
    });
  }
  for (auto& th : pool) th.join();
}

}  // namespace nodemeta::test

#endif  // NODEMETA_TESTS_SUPPORT_STRESS_H_
