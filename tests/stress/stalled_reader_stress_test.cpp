// Retired memory stays bounded whatever a stalled reader does (issue 21, item 1; reproducer
// core/05). A reader of a 2,000-key node is pinned for nearly all of its loop; a reader at
// SCHED_IDLE is descheduled while pinned for as long as normal threads keep the cores busy,
// and that used to stop the epoch: two writers replacing boxed values on their own nodes
// retired 1.5-4.1 GiB in 4 s. Now a writer that finds more than the bound retired waits
// (sleeping) for the reader to finish its read, so the live count below stays under
// kRetiredBound (src/reclaim.h: 16,384 objects) + each writer's collection slack.
// Kind: regression (issue 21)
#include <gtest/gtest.h>

#include <pthread.h>
#include <sched.h>

#include <atomic>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "nodemeta/nodemeta.h"
#include "support/stress.h"

namespace nodemeta {
namespace {

std::atomic<long> g_live{0};
struct Blob {
  std::string data;
  Blob() : data(256, 'x') { g_live.fetch_add(1, std::memory_order_relaxed); }
  Blob(const Blob&) = delete;
  ~Blob() { g_live.fetch_sub(1, std::memory_order_relaxed); }
};

constexpr long kWriters = 2;
// src/reclaim.h: kRetiredBound, plus per writing thread kCollectThreshold (128) and one
// write's retirements (1), plus the values the writers' nodes hold.
constexpr long kBound = 16384 + kWriters * (128 + 1) + kWriters;
// Writers stop here, so that a regression fails fast instead of exhausting memory.
constexpr long kCap = 8 * kBound;

// Runs the reader and the writers for a little over a second; returns the peak live count.
long peak_with_reader(bool idle) {
  MetadataStore store;
  NodeMetadata big = store.create();
  for (int i = 0; i < 2000; ++i) big.set("k" + std::to_string(i), i);
  const Key last("k1999");
  std::atomic<bool> stop{false};
  std::atomic<bool> reader_ready{false};
  std::atomic<long> reads{0};
  std::atomic<long> peak{0};
  std::thread reader([&] {
    if (idle) {
      sched_param p{};
      // SCHED_IDLE needs no privilege (a thread may always lower its own policy).
      EXPECT_EQ(pthread_setschedparam(pthread_self(), SCHED_IDLE, &p), 0);
    }
    reader_ready.store(true);
    while (!stop.load(std::memory_order_relaxed)) {
      EXPECT_EQ(big.get(last)->as<std::int64_t>(), 1999);
      reads.fetch_add(1, std::memory_order_relaxed);
    }
  });
  // The writers start once the reader is reading (a SCHED_IDLE thread may otherwise not
  // have run at all yet).
  while (!reader_ready.load() || reads.load() < 16) std::this_thread::yield();
  const auto seconds = std::chrono::milliseconds(
      1000 * static_cast<long>(std::max<std::uint64_t>(1, test::env_u64("NODEMETA_STRESS_SECONDS", 1))));
  std::vector<std::thread> writers;
  for (long w = 0; w < kWriters; ++w) {
    writers.emplace_back([&] {
      NodeMetadata mine = store.create();
      const auto end = std::chrono::steady_clock::now() + seconds;
      while (std::chrono::steady_clock::now() < end && g_live.load(std::memory_order_relaxed) < kCap) {
        mine.set("blob", Value::make<Blob>());
        const long l = g_live.load(std::memory_order_relaxed);
        long p = peak.load(std::memory_order_relaxed);
        while (l > p && !peak.compare_exchange_weak(p, l, std::memory_order_relaxed)) {
        }
      }
    });
  }
  for (auto& t : writers) t.join();
  stop.store(true);
  reader.join();
  EXPECT_GT(reads.load(), 0);
  release_retired_values();
  return peak.load();
}

TEST(StalledReaderStress, RetiredValuesStayBoundedWithASchedIdleReader) {
  const long peak = peak_with_reader(/*idle=*/true);
  std::printf("SCHED_IDLE reader: peak live values %ld (bound %ld)\n", peak, kBound);
  EXPECT_LE(peak, kBound);
  release_retired_values();
  EXPECT_EQ(g_live.load(), 0);
}

TEST(StalledReaderStress, RetiredValuesStayBoundedWithANormalPriorityReader) {
  const long peak = peak_with_reader(/*idle=*/false);
  std::printf("normal-priority reader: peak live values %ld (bound %ld)\n", peak, kBound);
  EXPECT_LE(peak, kBound);
  release_retired_values();
  EXPECT_EQ(g_live.load(), 0);
}

}  // namespace
}  // namespace nodemeta
