// nodemeta: run the pass pipeline on a graph, or inspect a graph's node metadata.
//
//   nodemeta run [GRAPH] [--threads N] [--passes LIST] [--repeat R] [--json FILE] [--output FILE]
//                [--mode eval|training]
//   nodemeta inspect GRAPH [--node NAME]
//
// Exit status: 0 success, 1 a failure (unreadable or invalid graph, verification found
// problems), 2 bad command-line arguments.
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdint>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <oneapi/tbb/global_control.h>
#include <oneapi/tbb/info.h>
#include <oneapi/tbb/task_arena.h>

#include "nodemeta/graph/graph_io.h"
#include "nodemeta/passes/passes.h"
#include "nodemeta/version.h"

namespace {

namespace fs = std::filesystem;
using nodemeta::Value;
using nodemeta::graph::Graph;
using nodemeta::passes::PassStats;

constexpr std::string_view kBundledName = "mlp_mixer_s16.json.gz";

// A bad command line: reported on one line plus a pointer to --help, exit 2.
struct UsageError : std::runtime_error {
  UsageError(const std::string& message, std::string cmd) : std::runtime_error(message), command(std::move(cmd)) {}
  std::string command;
};

#define LOAD_OPTIONS_HELP                                                                   \
  "  --max-input-bytes N  refuse a graph file whose JSON text (after inflating a .gz) is\n"   \
  "                   longer than N bytes (suffixes K, M, G: KiB, MiB, GiB; default 1G)\n"     \
  "  --max-depth D    refuse a graph file that nests arrays/objects deeper than D\n"        \
  "                   (default 256)\n"

const char* const kMainHelp =
    "usage: nodemeta <command> [options]\n"
    "\n"
    "Thread-safe node metadata for compiler graphs: load a torch.fx graph, run parallel passes\n"
    "over its node metadata, verify that protected metadata survived.\n"
    "\n"
    "commands:\n"
    "  run [GRAPH]      load GRAPH, run the pass pipeline, verify, print a table per pass\n"
    "  inspect GRAPH    print a graph's nodes, or one node's metadata\n"
    "\n"
    "Run 'nodemeta <command> --help' for a command's options.\n";

const char* const kRunHelp =
    "usage: nodemeta run [GRAPH] [--threads N] [--passes LIST] [--repeat R] [--json FILE]\n"
    "                    [--output FILE] [--mode eval|training] [--max-input-bytes N]\n"
    "                    [--max-depth D]\n"
    "\n"
    "Loads GRAPH (a graph file, .json or .json.gz; default: the bundled mlp_mixer_s16 graph),\n"
    "runs the passes in order, verifies, and prints per pass the nodes touched, the time\n"
    "(median over repeats), the throughput and the protected writes refused; then totals and\n"
    "peak memory.\n"
    "\n"
    "options:\n"
    "  --threads N      worker threads (default: all cores)\n"
    "  --passes LIST    comma-separated, from: cost,fuse,propagate,strip_debug,verify\n"
    "                   (default: all of them, in that order; verify is always run last)\n"
    "  --repeat R       run the pipeline R times, each on a fresh copy of the loaded graph\n"
    "                   (default 1); times are medians\n"
    "  --json FILE      write the results as JSON to FILE ('-' for stdout) and print nothing else\n"
    "  --output FILE    save the graph after the passes (of the last repeat) to FILE, a graph\n"
    "                   file (.json, or gzip for .json.gz) that nodemeta run reads again\n"
    "  --mode M         the mode the graph was traced in, eval or training, where the file\n"
    "                   does not say (its \"training\" attribute): batch norm and dropout\n"
    "                   costs and conv+bn folding depend on it; unknown if neither says\n"
    LOAD_OPTIONS_HELP
    "  -h, --help       show this help\n"
    "\n"
    "exit status: 0 verified clean, 1 load failure or verification problems, 2 bad arguments\n";

const char* const kInspectHelp =
    "usage: nodemeta inspect GRAPH [--node NAME] [--max-input-bytes N] [--max-depth D]\n"
    "\n"
    "Without --node: the graph's attributes and one line per node (index, name, op, target,\n"
    "inputs, number of metadata keys). With --node: every metadata key of node NAME, values\n"
    "shown as Python-like repr (stack traces as indented text).\n"
    "\n"
    "options:\n"
    "  --node NAME      the node to show\n"
    LOAD_OPTIONS_HELP
    "  -h, --help       show this help\n";

// ---- where the bundled graph is ---------------------------------------------------------

fs::path executable_dir() {
  std::error_code ec;
  fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  return ec ? fs::path() : exe.parent_path();
}

std::string default_graph() {
  std::vector<fs::path> candidates;
  if (const fs::path dir = executable_dir(); !dir.empty()) {
    candidates.push_back(dir / NODEMETA_INSTALL_DATADIR_REL / "nodemeta" / "graphs" / kBundledName);
  }
  candidates.push_back(fs::path(NODEMETA_SOURCE_DATA_DIR) / "graphs" / kBundledName);
  candidates.push_back(fs::path(NODEMETA_INSTALL_DATADIR) / "nodemeta" / "graphs" / kBundledName);
  std::error_code ec;
  for (const fs::path& p : candidates) {
    if (fs::is_regular_file(p, ec)) return p.lexically_normal().string();
  }
  std::string tried;
  for (const fs::path& p : candidates) tried += " " + p.lexically_normal().string();
  throw std::runtime_error("the bundled graph was not found (looked at:" + tried + "); pass a GRAPH path");
}

// ---- argument helpers -------------------------------------------------------------------

long parse_count(const std::string& opt, const std::string& text, const std::string& cmd, long max) {
  char* end = nullptr;
  errno = 0;
  const long v = std::strtol(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || errno != 0 || v < 1 || v > max) {
    throw UsageError(opt + " expects a whole number from 1 to " + std::to_string(max) + ", got '" + text + "'", cmd);
  }
  return v;
}

std::string take_value(const std::vector<std::string>& args, std::size_t& i, const std::string& cmd) {
  const std::string& opt = args[i];
  if (i + 1 >= args.size()) throw UsageError(opt + " needs a value", cmd);
  return args[++i];
}

// A byte count: digits, then optionally K, M or G (KiB, MiB, GiB; "KiB", "MB" ... accepted).
std::uint64_t parse_bytes(const std::string& opt, const std::string& text, const std::string& cmd,
                          std::uint64_t max) {
  std::size_t digits = 0;
  while (digits < text.size() && std::isdigit(static_cast<unsigned char>(text[digits]))) ++digits;
  std::string unit = text.substr(digits);
  for (char& c : unit) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  const std::uint64_t scale = unit.empty() || unit == "B"                  ? 1
                              : unit == "K" || unit == "KB" || unit == "KIB" ? std::uint64_t{1} << 10
                              : unit == "M" || unit == "MB" || unit == "MIB" ? std::uint64_t{1} << 20
                              : unit == "G" || unit == "GB" || unit == "GIB" ? std::uint64_t{1} << 30
                                                                             : 0;
  errno = 0;
  char* end = nullptr;
  const unsigned long long v = digits ? std::strtoull(text.substr(0, digits).c_str(), &end, 10) : 0;
  if (digits == 0 || scale == 0 || errno != 0 || v == 0 || v > max / scale) {
    throw UsageError(opt + " expects a size from 1 to " + std::to_string(max) +
                         " bytes (a number, optionally with K, M or G), got '" + text + "'",
                     cmd);
  }
  return v * scale;
}

// --max-input-bytes and --max-depth; true if args[i] was one of them.
bool take_load_option(const std::vector<std::string>& args, std::size_t& i, const std::string& cmd,
                      nodemeta::graph::LoadOptions& load) {
  using nodemeta::graph::LoadOptions;
  const std::string& a = args[i];
  if (a == "--max-input-bytes") {
    load.max_input_bytes = parse_bytes(a, take_value(args, i, cmd), cmd, LoadOptions::kMaxInputBytesCeiling);
    return true;
  }
  if (a == "--max-depth") {
    const long d = parse_count(a, take_value(args, i, cmd), cmd, static_cast<long>(LoadOptions::kMaxDepthCeiling));
    if (d < 5) throw UsageError(a + " must be at least 5 (a node's metadata value sits at depth 5)", cmd);
    load.max_depth = static_cast<std::size_t>(d);
    return true;
  }
  return false;
}

// ---- output helpers ---------------------------------------------------------------------

double peak_rss_mib() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<double>(ru.ru_maxrss) / 1024.0;  // ru_maxrss is in KiB on Linux
}

std::string fixed(double v, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

std::string human_rate(double per_second) {
  if (per_second >= 1e6) return fixed(per_second / 1e6, 2) + " M";
  if (per_second >= 1e3) return fixed(per_second / 1e3, 1) + " k";
  return fixed(per_second, 0);
}

std::string pad(std::string s, std::size_t width, bool right = false) {
  if (s.size() >= width) return s;
  return right ? std::string(width - s.size(), ' ') + s : s + std::string(width - s.size(), ' ');
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2.0;
}

// A one-line progress bar on stderr, only when stderr is a terminal, and only once the
// run has taken more than a moment (quick runs print nothing).
class Progress {
 public:
  Progress(bool enabled, std::size_t total) : enabled_(enabled && isatty(STDERR_FILENO)), total_(total) {}
  ~Progress() { finish(); }
  void step(std::size_t done, const std::string& what) {
    if (!enabled_) return;
    if (std::chrono::steady_clock::now() - start_ < std::chrono::milliseconds(300)) return;
    constexpr std::size_t kWidth = 30;
    const std::size_t fill = total_ ? done * kWidth / total_ : kWidth;
    std::fprintf(stderr, "\r[%s%s] %zu/%zu %-24s", std::string(fill, '#').c_str(),
                 std::string(kWidth - fill, '.').c_str(), done, total_, what.c_str());
    std::fflush(stderr);
    drawn_ = true;
  }
  void finish() {
    if (drawn_) std::fprintf(stderr, "\r%s\r", std::string(72, ' ').c_str());
    drawn_ = false;
  }

 private:
  bool enabled_;
  std::size_t total_;
  bool drawn_ = false;
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
};

// Loading a file large enough to notice (over a second) shows its phase and how far it is,
// on one line of stderr, only when stderr is a terminal.
class LoadDisplay {
 public:
  explicit LoadDisplay(std::string path) : path_(std::move(path)), enabled_(isatty(STDERR_FILENO)) {}
  ~LoadDisplay() { finish(); }
  void operator()(const nodemeta::graph::LoadProgress& p) {
    using Phase = nodemeta::graph::LoadProgress::Phase;
    if (!enabled_) return;
    const auto now = std::chrono::steady_clock::now();
    if (now - start_ < std::chrono::seconds(1) || now - last_ < std::chrono::milliseconds(100)) return;
    last_ = now;
    char line[160];
    const double mib = 1024.0 * 1024.0;
    if (p.phase == Phase::kRead) {
      if (p.total != 0) {
        std::snprintf(line, sizeof line, "reading %.0f of %.0f MiB (%.0f%%)", p.done / mib, p.total / mib,
                      100.0 * static_cast<double>(p.done) / static_cast<double>(p.total));
      } else {
        std::snprintf(line, sizeof line, "reading %.0f MiB", p.done / mib);
      }
    } else if (p.phase == Phase::kParse) {
      std::snprintf(line, sizeof line, "parsed");
    } else {
      std::snprintf(line, sizeof line, "building node %llu of %llu", static_cast<unsigned long long>(p.done),
                    static_cast<unsigned long long>(p.total));
    }
    std::fprintf(stderr, "\rloading %s: %-40s", path_.c_str(), line);
    std::fflush(stderr);
    drawn_ = true;
  }
  void finish() {
    if (drawn_) std::fprintf(stderr, "\r%s\r", std::string(path_.size() + 52, ' ').c_str());
    drawn_ = false;
  }

 private:
  std::string path_;
  bool enabled_;
  bool drawn_ = false;
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
  std::chrono::steady_clock::time_point last_{};
};

Graph load_for_command(const std::string& path, nodemeta::graph::LoadOptions load) {
  LoadDisplay display(path);
  load.progress = [&display](const nodemeta::graph::LoadProgress& p) { display(p); };
  Graph g = nodemeta::graph::load_graph(path, {}, load);
  display.finish();
  return g;
}

std::string json_string(const std::string& s) { return nodemeta::graph::value_to_json(Value(s)); }

// ---- run --------------------------------------------------------------------------------

// Records --mode as the graph's "training" attribute. A file that records the other mode
// is an error (exit 1), never silently overridden.
void declare_mode(Graph& g, bool training, const std::string& path) {
  const std::string word = training ? "training" : "eval";
  for (auto& [k, v] : g.attrs()) {
    if (k != nodemeta::passes::graph_attrs::kTraining) continue;
    if (const auto* b = v.get_if<bool>(); b && *b != training) {
      throw nodemeta::graph::GraphError(path + ": the file says the graph was traced in " +
                                        (*b ? "training" : "eval") + " mode; --mode " + word + " contradicts it");
    }
    v = Value(training);
    return;
  }
  g.attrs().emplace_back(std::string(nodemeta::passes::graph_attrs::kTraining), Value(training));
}

int cmd_run(const std::vector<std::string>& args) {
  std::optional<std::string> graph_path;
  long threads = static_cast<long>(tbb::info::default_concurrency());
  long repeat = 1;
  std::vector<std::string> passes = nodemeta::passes::pass_names();
  std::optional<std::string> json_path;
  std::optional<std::string> output_path;
  std::optional<bool> training;  // --mode
  nodemeta::graph::LoadOptions load;
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "-h" || a == "--help") {
      std::cout << kRunHelp;
      return 0;
    } else if (a == "--threads") {
      threads = parse_count(a, take_value(args, i, "run"), "run", 1024);
    } else if (a == "--repeat") {
      repeat = parse_count(a, take_value(args, i, "run"), "run", 1000000);
    } else if (a == "--passes") {
      try {
        passes = nodemeta::passes::parse_pass_list(take_value(args, i, "run"));
      } catch (const std::invalid_argument& e) {
        throw UsageError(std::string("--passes: ") + e.what(), "run");
      }
    } else if (a == "--json") {
      json_path = take_value(args, i, "run");
    } else if (a == "--output") {
      output_path = take_value(args, i, "run");
    } else if (a == "--mode") {
      const std::string m = take_value(args, i, "run");
      if (m != "eval" && m != "training") throw UsageError("--mode expects eval or training, got '" + m + "'", "run");
      training = m == "training";
    } else if (take_load_option(args, i, "run", load)) {
    } else if (a.size() > 1 && a[0] == '-') {
      throw UsageError("unknown option '" + a + "'", "run");
    } else if (graph_path) {
      throw UsageError("more than one GRAPH given ('" + *graph_path + "' and '" + a + "')", "run");
    } else {
      graph_path = a;
    }
  }
  if (std::find(passes.begin(), passes.end(), "verify") == passes.end() || passes.back() != "verify") {
    passes.push_back("verify");
  }
  const std::string path = graph_path ? *graph_path : default_graph();
  const bool quiet = json_path.has_value();

  tbb::global_control limit(tbb::global_control::max_allowed_parallelism, static_cast<std::size_t>(threads));
  tbb::task_arena arena(static_cast<int>(threads));

  const auto t0 = std::chrono::steady_clock::now();
  Graph loaded = load_for_command(path, load);
  if (training) declare_mode(loaded, *training, path);
  const double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::optional<nodemeta::passes::Baseline> baseline;
  arena.execute([&] { baseline.emplace(loaded); });

  std::vector<std::vector<PassStats>> runs;  // [repeat][pass]
  Progress progress(!quiet, static_cast<std::size_t>(repeat) * passes.size());
  std::size_t done = 0;
  for (long r = 0; r < repeat; ++r) {
    Graph g = loaded.clone();
    std::vector<PassStats> stats;
    for (const std::string& name : passes) {
      progress.step(done, "repeat " + std::to_string(r + 1) + ": " + name);
      auto pass = nodemeta::passes::make_pass(name);
      arena.execute([&] { stats.push_back(nodemeta::passes::run_pass(*pass, g, &*baseline)); });
      ++done;
    }
    runs.push_back(std::move(stats));
    if (output_path && r + 1 == repeat) nodemeta::graph::save_graph(g, *output_path);
  }
  progress.step(done, "done");
  progress.finish();

  const std::vector<PassStats>& last = runs.back();
  std::vector<double> med(passes.size());
  double total_s = 0;
  std::size_t total_rejected = 0, total_touched = 0;
  for (std::size_t p = 0; p < passes.size(); ++p) {
    std::vector<double> times;
    for (const auto& run : runs) times.push_back(run[p].seconds);
    med[p] = median(times);
    total_s += med[p];
    total_rejected += last[p].rejected_protected;
    total_touched += last[p].nodes_touched;
  }
  const std::vector<std::string>& problems = last.back().problems;
  const bool clean = problems.empty();
  const double rss = peak_rss_mib();
  std::string model;
  for (const auto& [k, v] : loaded.attrs()) {
    if (k == "model" && v.get_if<std::string>()) model = v.as<std::string>();
  }
  const std::optional<bool> mode = nodemeta::passes::training_mode(loaded);
  const std::string mode_text = !mode ? "unknown" : *mode ? "training" : "eval";

  if (quiet) {
    std::ostringstream js;
    js << "{\"graph\":" << json_string(path) << ",\"nodes\":" << loaded.size() << ",\"mode\":" << json_string(mode_text)
       << ",\"threads\":" << threads
       << ",\"repeat\":" << repeat << ",\"load_seconds\":" << load_s << ",\"passes\":[";
    for (std::size_t p = 0; p < passes.size(); ++p) {
      const PassStats& s = last[p];
      double lo = runs[0][p].seconds;
      for (const auto& run : runs) lo = std::min(lo, run[p].seconds);
      js << (p ? "," : "") << "{\"name\":" << json_string(s.name) << ",\"nodes_before\":" << s.nodes_before
         << ",\"nodes_after\":" << s.nodes_after << ",\"nodes_touched\":" << s.nodes_touched
         << ",\"rejected_protected\":" << s.rejected_protected << ",\"seconds_median\":" << med[p]
         << ",\"seconds_min\":" << lo << ",\"nodes_per_second\":"
         << (med[p] > 0 ? static_cast<double>(s.nodes_touched) / med[p] : 0.0)
         << ",\"summary\":" << json_string(s.summary) << ",\"problems\":[";
      for (std::size_t k = 0; k < s.problems.size(); ++k) js << (k ? "," : "") << json_string(s.problems[k]);
      js << "]}";
    }
    js << "],\"total_seconds\":" << total_s << ",\"rejected_protected\":" << total_rejected
       << ",\"peak_rss_mib\":" << rss << ",\"verified\":" << (clean ? "true" : "false") << "}\n";
    if (*json_path == "-") {
      std::cout << js.str();
    } else {
      std::ofstream out(*json_path);
      out << js.str();
      out.close();
      if (!out) throw std::runtime_error(*json_path + ": cannot write the JSON results");
    }
    return clean ? 0 : 1;
  }

  std::cout << "nodemeta run: " << path << "\n"
            << "  graph " << (model.empty() ? "?" : model) << ", " << loaded.size() << " nodes, loaded in "
            << fixed(load_s * 1e3, 1) << " ms, traced in " << mode_text << " mode; " << threads << " thread" << (threads == 1 ? "" : "s") << ", "
            << repeat << " repeat" << (repeat == 1 ? "" : "s") << (repeat > 1 ? " (times are medians)" : "") << "\n\n";
  std::cout << pad("pass", 12) << pad("nodes", 11, true) << pad("touched", 9, true) << pad("time ms", 10, true)
            << pad("nodes/s", 11, true) << pad("rejected", 10, true) << "  result\n";
  for (std::size_t p = 0; p < passes.size(); ++p) {
    const PassStats& s = last[p];
    const std::string nodes = s.nodes_before == s.nodes_after
                                  ? std::to_string(s.nodes_after)
                                  : std::to_string(s.nodes_before) + "->" + std::to_string(s.nodes_after);
    std::cout << pad(s.name, 12) << pad(nodes, 11, true) << pad(std::to_string(s.nodes_touched), 9, true)
              << pad(fixed(med[p] * 1e3, 3), 10, true)
              << pad(med[p] > 0 ? human_rate(static_cast<double>(s.nodes_touched) / med[p]) : "-", 11, true)
              << pad(std::to_string(s.rejected_protected), 10, true) << "  " << s.summary << "\n";
  }
  std::cout << pad("total", 12) << pad("", 11) << pad(std::to_string(total_touched), 9, true)
            << pad(fixed(total_s * 1e3, 3), 10, true) << pad("", 11) << pad(std::to_string(total_rejected), 10, true)
            << "\n\npeak memory (max RSS): " << fixed(rss, 1) << " MiB\n";
  if (clean) {
    std::cout << "verify: clean (every loaded protected value intact, every rewritten node's provenance complete)\n";
    return 0;
  }
  std::cout << "verify: " << problems.size() << " problems\n";
  for (std::size_t k = 0; k < problems.size() && k < 20; ++k) std::cout << "  " << problems[k] << "\n";
  return 1;
}

// ---- inspect ----------------------------------------------------------------------------

void print_value(const std::string& key, const Value& v) {
  const auto* s = v.get_if<std::string>();
  if (s && s->find('\n') != std::string::npos) {
    std::cout << "  " << key << ":\n";
    std::istringstream lines(*s);
    std::string line;
    while (std::getline(lines, line)) std::cout << "      " << line << "\n";
    return;
  }
  if (const auto* d = v.get_if<Value::Dict>(); d && !d->empty() && v.repr().size() > 90) {
    std::cout << "  " << key << ": {\n";
    for (const auto& [k, e] : *d) std::cout << "      '" << k << "': " << e.repr() << ",\n";
    std::cout << "  }\n";
    return;
  }
  std::cout << "  " << key << ": " << v.repr() << "\n";
}

int cmd_inspect(const std::vector<std::string>& args) {
  std::optional<std::string> graph_path, node_name;
  nodemeta::graph::LoadOptions load;
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "-h" || a == "--help") {
      std::cout << kInspectHelp;
      return 0;
    } else if (a == "--node") {
      node_name = take_value(args, i, "inspect");
    } else if (take_load_option(args, i, "inspect", load)) {
    } else if (a.size() > 1 && a[0] == '-') {
      throw UsageError("unknown option '" + a + "'", "inspect");
    } else if (graph_path) {
      throw UsageError("more than one GRAPH given ('" + *graph_path + "' and '" + a + "')", "inspect");
    } else {
      graph_path = a;
    }
  }
  if (!graph_path) throw UsageError("missing GRAPH", "inspect");
  const Graph g = load_for_command(*graph_path, load);
  if (!node_name) {
    std::cout << *graph_path << ": " << g.size() << " nodes\n";
    for (const auto& [k, v] : g.attrs()) std::cout << "  " << k << ": " << v.repr() << "\n";
    std::cout << "\n";
    for (std::size_t i = 0; i < g.size(); ++i) {
      const auto& n = g.node(i);
      std::string ins;
      for (std::size_t j : n.inputs) ins += (ins.empty() ? "" : ", ") + g.node(j).name;
      std::cout << pad(std::to_string(i), 5, true) << "  " << pad(n.name, 28) << pad(n.op, 14) << pad(n.target, 40)
                << " (" << ins << ") " << n.meta.size() << " keys\n";
    }
    return 0;
  }
  const auto idx = g.find(*node_name);
  if (!idx) throw std::runtime_error(*graph_path + ": no node named '" + *node_name + "'");
  const auto& n = g.node(*idx);
  std::string ins;
  for (std::size_t j : n.inputs) ins += (ins.empty() ? "" : ", ") + g.node(j).name;
  std::cout << "node " << *idx << " '" << n.name << "'\n  op: " << n.op << "\n  target: " << n.target
            << "\n  inputs: [" << ins << "]\nmeta (" << n.meta.size() << " keys; protected: ";
  const auto prot = g.store().protected_keys();
  for (std::size_t k = 0; k < prot.size(); ++k) std::cout << (k ? ", " : "") << prot[k];
  std::cout << ")\n";
  for (const auto& [k, v] : n.meta.items()) print_value(k, v);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  std::string cmd;
  try {
    if (args.empty()) throw UsageError("missing command (run or inspect)", "");
    cmd = args[0];
    const std::vector<std::string> rest(args.begin() + 1, args.end());
    if (cmd == "-h" || cmd == "--help" || cmd == "help") {
      std::cout << kMainHelp;
      return 0;
    }
    if (cmd == "--version") {
      std::cout << "nodemeta " << NODEMETA_VERSION_STRING << "\n";
      return 0;
    }
    if (cmd == "run") return cmd_run(rest);
    if (cmd == "inspect") return cmd_inspect(rest);
    throw UsageError("unknown command '" + cmd + "' (expected run or inspect)", "");
  } catch (const UsageError& e) {
    std::cerr << "nodemeta" << (e.command.empty() ? "" : " " + e.command) << ": error: " << e.what() << "\n"
              << "Try 'nodemeta" << (e.command.empty() ? "" : " " + e.command) << " --help'.\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "nodemeta" << (cmd.empty() ? "" : " " + cmd) << ": error: " << e.what() << "\n";
    return 1;
  }
}
