// benchmarks/io_benchmark.cpp: graph files, read and written (issue 8). One JSON object per
// line on stdout.
//
//   nodemeta_io_benchmark --graph=PATH [--reps=N]   load, parse-only floor and save times
//   nodemeta_io_benchmark --peak=PATH                peak memory of one load (own process)
//   nodemeta_io_benchmark --parts=PATH [--reps=N]   the load and the floor whole and in parts,
//                                                    alternated rep by rep (serial, in parts,
//                                                    serial, ...), on --threads (default 2)
//   --threads=N (with any): the threads a load may use (a tbb::global_control for the
//   whole run; default 1). A graph of LoadOptions::parallel_min_bytes or more is loaded
//   (and its floor parsed) in parts on up to N threads.
//   nodemeta_io_benchmark --bomb=DIR                 a 2 MiB gzip file of 2 GiB of spaces,
//                                                    loaded with the default limit in a
//                                                    child process: time and peak RSS
//
// Times are the median of N runs (default 15) after one untimed run, on --threads threads:
// - load: load_graph (read, inflate, parse, validate, build the store);
// - floor: graph::detail::parse_only (the same read, inflate and parse, then a walk over
//   every value, building nothing);
// - save: save_graph to a file in the same directory as the output ($TMPDIR), .json.gz
//   for a .json.gz graph (so gzip is timed as Python's gzip.open + json.dump is).
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <vector>

#include <oneapi/tbb/global_control.h>

#include <nodemeta/graph/graph_io.h>

namespace {

namespace fs = std::filesystem;
using nodemeta::graph::Graph;

template <class F>
double median_ms(int reps, F&& f) {
  f();  // warm
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    t.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

std::string base_name(const std::string& path) { return fs::path(path).filename().string(); }

// Loading whole (parallel_min_bytes 0) against loading in parts (the default), both sides
// alternated repetition by repetition so that other load on the machine falls on both.
int parts(const std::string& path, int reps, int threads) {
  nodemeta::graph::LoadOptions whole;
  whole.parallel_min_bytes = 0;
  const nodemeta::graph::LoadOptions in_parts;
  std::vector<double> ls, lp, fs_, fp;
  const auto ms = [](auto&& f) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  };
  (void)nodemeta::graph::load_graph(path, {}, in_parts);  // warm
  const std::string diff = nodemeta::graph::first_difference(nodemeta::graph::load_graph(path, {}, whole),
                                                             nodemeta::graph::load_graph(path, {}, in_parts));
  for (int i = 0; i < reps; ++i) {
    ls.push_back(ms([&] { (void)nodemeta::graph::load_graph(path, {}, whole); }));
    lp.push_back(ms([&] { (void)nodemeta::graph::load_graph(path, {}, in_parts); }));
    fs_.push_back(ms([&] { (void)nodemeta::graph::detail::parse_only(path, whole); }));
    fp.push_back(ms([&] { (void)nodemeta::graph::detail::parse_only(path, in_parts); }));
  }
  const auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  std::printf(
      "{\"graph\": \"%s\", \"threads\": %d, \"load_whole_ms\": %.4f, \"load_parts_ms\": %.4f, "
      "\"speedup\": %.3f, \"floor_whole_ms\": %.4f, \"floor_parts_ms\": %.4f, \"same_graph\": %s}\n",
      base_name(path).c_str(), threads, median(ls), median(lp),
      median(ls) / median(lp), median(fs_), median(fp), diff.empty() ? "true" : "false");
  return diff.empty() ? 0 : 1;
}

int times(const std::string& path, int reps) {
  const bool gz = path.size() > 3 && path.compare(path.size() - 3, 3, ".gz") == 0;
  const std::string out = (fs::temp_directory_path() / ("nodemeta_io_bench_" + std::to_string(::getpid()) +
                                                        (gz ? ".json.gz" : ".json")))
                              .string();
  std::size_t nodes = 0;
  const double load = median_ms(reps, [&] { nodes = nodemeta::graph::load_graph(path).size(); });
  std::size_t values = 0;
  const double floor = median_ms(reps, [&] { values = nodemeta::graph::detail::parse_only(path); });
  const Graph g = nodemeta::graph::load_graph(path);
  const double save = median_ms(reps, [&] { nodemeta::graph::save_graph(g, out); });
  // The round trip stays exact.
  const std::string diff = nodemeta::graph::first_difference(g, nodemeta::graph::load_graph(out));
  fs::remove(out);
  const std::size_t inflated = nodemeta::graph::read_file_text(path).size();
  std::printf(
      "{\"graph\": \"%s\", \"nodes\": %zu, \"values\": %zu, \"file_bytes\": %llu, \"inflated_bytes\": %zu, "
      "\"load_ms\": %.4f, \"floor_ms\": %.4f, \"save_ms\": %.4f, \"round_trip\": %s}\n",
      base_name(path).c_str(), nodes, values, static_cast<unsigned long long>(fs::file_size(path)), inflated,
      load, floor, save, diff.empty() ? "true" : "false");
  return diff.empty() ? 0 : 1;
}

std::size_t status_kb(std::string_view field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field, 0) == 0) return std::strtoull(line.c_str() + field.size(), nullptr, 10);
  }
  return 0;
}

// Peak memory of one load: VmHWM after the load minus VmRSS before it (the process warmed
// by loading a tiny graph first, so the libraries' own first-use memory is not counted).
int peak(const std::string& path) {
  (void)nodemeta::graph::parse_graph(
      R"({"nodes":[{"id":0,"name":"output","op":"output","target":"output","inputs":[],"meta":{"stack_trace":null,)"
      R"("nn_module_stack":{},"tensor_meta":null,"val":1,"debug_handle":1}}]})");
  const std::size_t inflated = nodemeta::graph::read_file_text(path).size();
  std::ofstream("/proc/self/clear_refs") << "5";  // reset VmHWM to the current RSS
  const std::size_t before = status_kb("VmRSS:");
  const Graph g = nodemeta::graph::load_graph(path);
  const std::size_t hwm = status_kb("VmHWM:");
  std::printf("{\"graph\": \"%s\", \"nodes\": %zu, \"inflated_bytes\": %zu, \"peak_bytes\": %zu}\n",
              base_name(path).c_str(), g.size(), inflated, (hwm - std::min(hwm, before)) * 1024);
  return 0;
}

int bomb(const std::string& dir) {
  const std::string path = (fs::path(dir) / "bomb_2GiB_of_spaces.json.gz").string();
  {
    const std::string spaces(1 << 20, ' ');
    std::vector<unsigned char> member(compressBound(spaces.size()) + 64);
    // One gzip member of 1 MiB of spaces, written 2,048 times: 2 GiB inflated.
    z_stream zs{};
    deflateInit2(&zs, 9, Z_DEFLATED, 15 + 16, 9, Z_DEFAULT_STRATEGY);
    zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(spaces.data()));
    zs.avail_in = static_cast<uInt>(spaces.size());
    zs.next_out = member.data();
    zs.avail_out = static_cast<uInt>(member.size());
    deflate(&zs, Z_FINISH);
    member.resize(zs.total_out);
    deflateEnd(&zs);
    std::ofstream out(path, std::ios::binary);
    for (int i = 0; i < 2048; ++i) out.write(reinterpret_cast<const char*>(member.data()), static_cast<std::streamsize>(member.size()));
  }
  const auto t0 = std::chrono::steady_clock::now();
  const pid_t pid = fork();
  if (pid == 0) {
    try {
      (void)nodemeta::graph::load_graph(path);
      std::_Exit(0);
    } catch (const nodemeta::graph::GraphError& e) {
      std::fprintf(stderr, "%s\n", e.what());
      std::_Exit(3);
    }
  }
  int status = 0;
  rusage ru{};
  wait4(pid, &status, 0, &ru);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("{\"bomb_file_bytes\": %llu, \"inflates_to\": %llu, \"limit\": %llu, \"refused\": %s, "
              "\"seconds\": %.3f, \"peak_rss_bytes\": %lld}\n",
              static_cast<unsigned long long>(fs::file_size(path)), 2048ull << 20,
              static_cast<unsigned long long>(nodemeta::graph::LoadOptions::kDefaultMaxInputBytes),
              WIFEXITED(status) && WEXITSTATUS(status) == 3 ? "true" : "false", s,
              static_cast<long long>(ru.ru_maxrss) * 1024);
  fs::remove(path);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  int reps = 15;
  int threads = 1;
  for (int i = 1; i < argc; ++i) {
    if (std::string_view(argv[i]).rfind("--parts=", 0) == 0) threads = 2;  // its default
  }
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.rfind("--reps=", 0) == 0) reps = std::max(1, std::atoi(a.c_str() + 7));
    if (a.rfind("--threads=", 0) == 0) threads = std::max(1, std::atoi(a.c_str() + 10));
  }
  const tbb::global_control parallelism(tbb::global_control::max_allowed_parallelism,
                                        static_cast<std::size_t>(threads));
  try {
    for (int i = 1; i < argc; ++i) {
      const std::string a = argv[i];
      if (a.rfind("--graph=", 0) == 0) return times(a.substr(8), reps);
      if (a.rfind("--peak=", 0) == 0) return peak(a.substr(7));
      if (a.rfind("--parts=", 0) == 0) return parts(a.substr(8), reps, threads);
      if (a.rfind("--bomb=", 0) == 0) return bomb(a.substr(7));
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "nodemeta_io_benchmark: %s\n", e.what());
    return 1;
  }
  std::fprintf(stderr, "usage: nodemeta_io_benchmark --graph=PATH [--reps=N] [--threads=N] | --peak=PATH [--threads=N] | --parts=PATH [--reps=N] [--threads=N] | --bomb=DIR\n");
  return 2;
}
