// benchmarks/memory_benchmark.cpp: bytes per node, as process RSS growth, for nodemeta and
// each baseline. One implementation per process, so every figure starts from a clean heap:
//
//   nodemeta_memory_benchmark --impl=nodemeta [--nodes=1000000]
//   nodemeta_memory_benchmark --graph=PATH      (a real graph's metadata, nodemeta only)
//   nodemeta_memory_benchmark --list
//
// Each node holds the five protected keys with distinct 8-byte integer values. The growth
// counts everything the graph needs: nodemeta's 16-byte handles and its store, or a
// baseline's array of per-node maps and locks. Before the first reading the allocator and
// the key table are warmed with a 16-node graph that is then destroyed. Prints one JSON
// object on stdout.
#include <malloc.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <string_view>

#include <absl/synchronization/mutex.h>

#if defined(NODEMETA_BENCH_HAVE_GRAPH)
#include <nodemeta/graph/graph_io.h>
#endif

#include "impls.h"

namespace nmbench {
namespace {

std::size_t rss_bytes() {
  std::ifstream statm("/proc/self/statm");
  std::size_t size = 0, resident = 0;
  statm >> size >> resident;
  return resident * static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
}

Init seeded(std::size_t node) {
  Init init;
  std::int64_t v = static_cast<std::int64_t>(node) * 8;
  for (const std::string& name : protected_names()) init.add(name, Value(v++));
  return init;
}

template <class I>
void build(std::size_t nodes, I& impl) {
  for (std::size_t i = 0; i < nodes; ++i) impl.push(seeded(i));
}

template <class I>
int measure(std::size_t nodes) {
  {
    I warm(16);
    build(16, warm);
  }
  const std::size_t before = rss_bytes();
  I impl(nodes);
  build(nodes, impl);
  const std::size_t after = rss_bytes();
  const double per_node = static_cast<double>(after - before) / static_cast<double>(nodes);
  std::printf(
      "{\"impl\": \"%s\", \"nodes\": %zu, \"keys_per_node\": 5, \"rss_before\": %zu, "
      "\"rss_after\": %zu, \"bytes_per_node\": %.1f}\n",
      std::string(I::kName).c_str(), nodes, before, after, per_node);
  return 0;
}

#if defined(NODEMETA_BENCH_HAVE_GRAPH)
// A real graph (../shared/data/graphs): RSS growth of parsing it, per node. The file is read
// (and inflated) before the first reading, and malloc_trim() returns what the parser freed
// before the second, so the growth is the graph and its metadata as held. Small graphs make
// this a coarse figure: RSS moves by whole pages and allocator slabs.
int measure_graph(const char* path) {
  {
    // Warm the key table and tbbmalloc's pools (its first slabs would otherwise be charged
    // to a graph of a few hundred nodes) with a 16-node store, as the 1M-node figure does.
    Nodemeta warm(16);
    build(16, warm);
  }
  const std::string text = nodemeta::graph::read_file_text(path);
  const std::size_t before = rss_bytes();
  nodemeta::graph::Graph graph = nodemeta::graph::parse_graph(text, path);
  malloc_trim(0);  // hand what the parser freed back to the OS: count what the graph holds
  const std::size_t after = rss_bytes();
  std::size_t keys = 0;
  for (std::size_t i = 0; i < graph.size(); ++i) keys += graph.node(i).meta.size();
  std::string name(path);
  name = name.substr(name.find_last_of('/') + 1);
  std::printf(
      "{\"graph\": \"%s\", \"nodes\": %zu, \"keys\": %zu, \"rss_before\": %zu, \"rss_after\": %zu, "
      "\"bytes_per_node\": %.1f}\n",
      name.c_str(), graph.size(), keys, before, after,
      static_cast<double>(after - before) / static_cast<double>(graph.size()));
  return 0;
}
#else
int measure_graph(const char*) {
  std::fprintf(stderr, "nodemeta_memory_benchmark: built without the graph library\n");
  return 2;
}
#endif

int run(std::string_view impl, std::size_t nodes) {
  int rc = -1;
  auto try_one = [&]<class I>() {
    if (impl == I::kName) rc = measure<I>(nodes);
  };
  for_each_impl(try_one);
  try_one.template operator()<NodemetaSized>();
  if (rc < 0) {
    std::fprintf(stderr, "nodemeta_memory_benchmark: unknown --impl=%.*s (try --list)\n",
                 static_cast<int>(impl.size()), impl.data());
    return 2;
  }
  return rc;
}

}  // namespace
}  // namespace nmbench

int main(int argc, char** argv) {
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  std::string_view impl;
  std::size_t nodes = 1'000'000;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg == "--list") {
      auto print = []<class I>() { std::printf("%s\n", std::string(I::kName).c_str()); };
      nmbench::for_each_impl(print);
      print.template operator()<nmbench::NodemetaSized>();
      return 0;
    }
    if (arg.starts_with("--graph=")) return nmbench::measure_graph(argv[i] + 8);
    if (arg.starts_with("--impl=")) {
      impl = arg.substr(7);
    } else if (arg.starts_with("--nodes=")) {
      nodes = std::strtoull(argv[i] + 8, nullptr, 10);
    } else {
      std::fprintf(stderr, "usage: %s --impl=NAME [--nodes=N] | --graph=PATH | --list\n", argv[0]);
      return 2;
    }
  }
  if (impl.empty() || nodes == 0) {
    std::fprintf(stderr, "usage: %s --impl=NAME [--nodes=N] | --list\n", argv[0]);
    return 2;
  }
  return nmbench::run(impl, nodes);
}
