// nodemeta: run the pass pipeline on a graph, or inspect a graph's node metadata.
//
//   nodemeta run [GRAPH] [-t N] [-p LIST] [-r R] [--json FILE] [-o FILE] [-m eval|training]
//   nodemeta inspect GRAPH [-n NAME]
//
// Options are parsed by CLI11 (GNU forms: --threads=2, -t 2, -t2; generated --help). Exit
// status: 0 success (and --help, --version), 1 a failure (unreadable or invalid graph,
// verification found problems), 2 bad command-line arguments.
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

#include <CLI/CLI.hpp>
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
constexpr long kMaxThreads = 1024;
constexpr long kMaxRepeat = 1000000;

// A bad command line: reported on one line plus a pointer to --help, exit 2.
struct UsageError : std::runtime_error {
  UsageError(const std::string& message, std::string cmd) : std::runtime_error(message), command(std::move(cmd)) {}
  std::string command;
};

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

// ---- command line ------------------------------------------------------------------------
// Values are checked by CLI11 validators that name what they expected and what they got; a
// failed check reaches the user as "nodemeta run: error: --threads: expects ..." (exit 2).

// A whole number in [lo, max] (strtol's syntax), rewritten to plain digits for CLI11's
// conversion; `why_lo` explains a lower bound other than 1.
CLI::Validator whole_number(long lo, long max, std::string why_lo = {}) {
  return CLI::Validator(
      [lo, max, why_lo](std::string& text) -> std::string {
        char* end = nullptr;
        errno = 0;
        const long v = std::strtol(text.c_str(), &end, 10);
        if (text.empty() || *end != '\0' || errno != 0 || v < 1 || v > max) {
          return "expects a whole number from " + std::to_string(lo) + " to " + std::to_string(max) + ", got '" +
                 text + "'";
        }
        if (v < lo) return "must be at least " + std::to_string(lo) + why_lo + ", got '" + text + "'";
        text = std::to_string(v);
        return {};
      },
      "");
}

// A byte count: digits, then optionally K, M or G (KiB, MiB, GiB; "KiB", "MB" ... accepted),
// rewritten to the number of bytes.
CLI::Validator byte_size(std::uint64_t max) {
  return CLI::Validator(
      [max](std::string& text) -> std::string {
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
          return "expects a size from 1 to " + std::to_string(max) +
                 " bytes (a number, optionally with K, M or G), got '" + text + "'";
        }
        text = std::to_string(v * scale);
        return {};
      },
      "");
}

// One of `words` (spelled out in the message: "expects eval or training, got 'train'").
CLI::Validator one_of(std::vector<std::string> words) {
  std::string list;
  for (std::size_t i = 0; i < words.size(); ++i) {
    list += (i == 0 ? "" : i + 1 == words.size() ? " or " : ", ") + words[i];
  }
  return CLI::Validator(
      [words, list](std::string& text) -> std::string {
        if (std::find(words.begin(), words.end(), text) != words.end()) return {};
        return "expects " + list + ", got '" + text + "'";
      },
      "");
}

// A comma-separated list of known pass names (the message lists the valid ones).
CLI::Validator pass_list() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        try {
          nodemeta::passes::parse_pass_list(text);
          return {};
        } catch (const std::invalid_argument& e) {
          return e.what();
        }
      },
      "");
}

// CLI11's help with a blank line between the description and the usage line.
class HelpFormatter : public CLI::Formatter {
 public:
  std::string make_description(const CLI::App* app) const override {
    std::string d = CLI::Formatter::make_description(app);
    return d.empty() ? d : d + "\n";
  }
};

// --max-input-bytes and --max-depth, which both commands take.
void add_load_options(CLI::App& cmd, nodemeta::graph::LoadOptions& load) {
  using nodemeta::graph::LoadOptions;
  cmd.add_option("--max-input-bytes", load.max_input_bytes,
                 "refuse a graph file whose JSON text (after inflating a .gz) is\n"
                 "longer than N bytes (suffixes K, M, G: KiB, MiB, GiB; default 1G)")
      ->type_name("N")
      ->transform(byte_size(LoadOptions::kMaxInputBytesCeiling));
  cmd.add_option("--max-depth", load.max_depth,
                 "refuse a graph file that nests arrays/objects deeper than D\n(default 256)")
      ->type_name("D")
      ->transform(whole_number(5, static_cast<long>(LoadOptions::kMaxDepthCeiling),
                               " (a node's metadata value sits at depth 5)"));
}

// The option part of a CLI11 error, reworded where CLI11's own words are unclear.
std::string usage_message(const CLI::ParseError& e) {
  std::string m = e.what();
  // ArgumentMismatch::TypedAtLeast: "--threads: 1 required N missing".
  if (const std::size_t colon = m.find(": 1 required "); colon != std::string::npos && m.ends_with(" missing")) {
    return m.substr(0, colon) + " needs a value";
  }
  return m;
}

// What CLI11 left over for command `cmd` (told to allow extras, so that these get our
// wording): an unknown option, or a second GRAPH.
void reject_extras(const std::vector<std::string>& extras, const std::string& graph_path, const std::string& cmd) {
  for (const std::string& a : extras) {
    if (a.size() > 1 && a[0] == '-') throw UsageError("unknown option '" + a.substr(0, a.find('=')) + "'", cmd);
  }
  if (!extras.empty()) {
    throw UsageError("more than one GRAPH given ('" + graph_path + "' and '" + extras.front() + "')", cmd);
  }
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

// `nodemeta run`'s options, as CLI11 leaves them (already checked).
struct RunOptions {
  std::string graph;  // empty: the bundled graph
  long threads = static_cast<long>(tbb::info::default_concurrency());
  long repeat = 1;
  std::string passes;  // comma-separated; empty: all of them
  std::string json;    // with --json: the results file, '-' for stdout
  std::string output;  // with --output: where the graph goes after the passes
  std::string mode;    // eval, training, or empty
  nodemeta::graph::LoadOptions load;
  const CLI::Option* json_opt = nullptr;
  const CLI::Option* output_opt = nullptr;
};

CLI::App* add_run_command(CLI::App& app, RunOptions& o) {
  CLI::App* cmd = app.add_subcommand("run", "load GRAPH, run the pass pipeline, verify, print a table per pass");
  cmd->group("commands");
  cmd->add_option("GRAPH", o.graph,
                  "a graph file, .json or .json.gz (default: the bundled\nmlp_mixer_s16 graph)")
      ->type_name("");
  cmd->add_option("-t,--threads", o.threads, "worker threads (default: all cores)")
      ->type_name("N")
      ->transform(whole_number(1, kMaxThreads));
  std::string all;
  for (const std::string& n : nodemeta::passes::pass_names()) all += (all.empty() ? "" : ",") + n;
  cmd->add_option("-p,--passes", o.passes,
                  "comma-separated, from: " + all +
                      "\n(default: all of them, in that order; verify is always run last)")
      ->type_name("LIST")
      ->check(pass_list());
  cmd->add_option("-r,--repeat", o.repeat,
                  "run the pipeline R times, each on a fresh copy of the loaded\n"
                  "graph (default 1); times are medians")
      ->type_name("R")
      ->transform(whole_number(1, kMaxRepeat));
  o.json_opt = cmd->add_option("--json", o.json,
                               "write the results as JSON to FILE ('-' for stdout) and print\nnothing else")
                   ->type_name("FILE");
  o.output_opt = cmd->add_option("-o,--output", o.output,
                                 "save the graph after the passes (of the last repeat) to FILE,\n"
                                 "a graph file (.json, or gzip for .json.gz) that nodemeta run\nreads again")
                     ->type_name("FILE");
  cmd->add_option("-m,--mode", o.mode,
                  "the mode the graph was traced in, eval or training, where the\n"
                  "file does not say (its \"training\" attribute): batch norm and\n"
                  "dropout costs and conv+bn folding depend on it; unknown if\nneither says")
      ->type_name("M")
      ->check(one_of({"eval", "training"}));
  add_load_options(*cmd, o.load);
  cmd->footer(
      "Loads GRAPH, runs the passes in order, verifies, and prints per pass the nodes touched,\n"
      "the time (median over repeats), the throughput and the protected writes refused; then\n"
      "totals and peak memory.\n"
      "\n"
      "exit status: 0 verified clean, 1 load failure or verification problems, 2 bad arguments");
  cmd->allow_extras();  // reject_extras() words them
  return cmd;
}

int cmd_run(const RunOptions& o) {
  const long threads = o.threads;
  const long repeat = o.repeat;
  std::vector<std::string> passes =
      o.passes.empty() ? nodemeta::passes::pass_names() : nodemeta::passes::parse_pass_list(o.passes);
  std::optional<std::string> json_path, output_path;
  if (o.json_opt->count() > 0) json_path = o.json;
  if (o.output_opt->count() > 0) output_path = o.output;
  std::optional<bool> training;
  if (!o.mode.empty()) training = o.mode == "training";
  if (std::find(passes.begin(), passes.end(), "verify") == passes.end() || passes.back() != "verify") {
    passes.push_back("verify");
  }
  const std::string path = o.graph.empty() ? default_graph() : o.graph;
  const bool quiet = json_path.has_value();

  tbb::global_control limit(tbb::global_control::max_allowed_parallelism, static_cast<std::size_t>(threads));
  tbb::task_arena arena(static_cast<int>(threads));

  const auto t0 = std::chrono::steady_clock::now();
  Graph loaded = load_for_command(path, o.load);
  if (training) declare_mode(loaded, *training, path);
  const double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::optional<nodemeta::passes::Baseline> baseline;
  arena.execute([&] { baseline.emplace(loaded); });

  std::vector<std::vector<PassStats>> runs;  // [repeat][pass]
  Progress progress(!quiet, static_cast<std::size_t>(repeat) * passes.size());
  for (long r = 0; r < repeat; ++r) {
    Graph g = loaded.clone();
    const std::size_t before = static_cast<std::size_t>(r) * passes.size();
    const auto step = [&](std::size_t i, std::string_view next) {
      if (i < passes.size()) progress.step(before + i, "repeat " + std::to_string(r + 1) + ": " + std::string(next));
    };
    arena.execute([&] { runs.push_back(nodemeta::passes::run_pipeline(g, passes, *baseline, step)); });
    if (output_path && r + 1 == repeat) nodemeta::graph::save_graph(g, *output_path);
  }
  progress.step(static_cast<std::size_t>(repeat) * passes.size(), "done");
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

// `nodemeta inspect`'s options, as CLI11 leaves them.
struct InspectOptions {
  std::string graph;
  std::string node;  // empty: list the nodes
  nodemeta::graph::LoadOptions load;
  const CLI::Option* node_opt = nullptr;
};

CLI::App* add_inspect_command(CLI::App& app, InspectOptions& o) {
  CLI::App* cmd = app.add_subcommand("inspect", "print a graph's nodes, or one node's metadata");
  cmd->group("commands");
  cmd->add_option("GRAPH", o.graph, "a graph file, .json or .json.gz")->type_name("")->required();
  o.node_opt = cmd->add_option("-n,--node", o.node, "the node to show")->type_name("NAME");
  add_load_options(*cmd, o.load);
  cmd->footer(
      "Without --node: the graph's attributes and one line per node (index, name, op, target,\n"
      "inputs, number of metadata keys). With --node: every metadata key of node NAME, values\n"
      "shown as Python-like repr (stack traces as indented text).\n"
      "\n"
      "exit status: 0 success, 1 load failure or no such node, 2 bad arguments");
  cmd->allow_extras();  // reject_extras() words them
  return cmd;
}

// One line per node: index, name, op, target, (inputs), number of keys. A column is as wide
// as its longest value, up to a cap; a longer value is printed whole (names are what --node
// takes) and pushes the rest of its own line right. Columns are always two spaces apart.
void print_node_table(const Graph& g) {
  constexpr std::size_t kNameCap = 48, kOpCap = 16, kTargetCap = 48;
  std::size_t name_w = 0, op_w = 0, target_w = 0;
  for (std::size_t i = 0; i < g.size(); ++i) {
    const auto& n = g.node(i);
    name_w = std::max(name_w, std::min(n.name.size(), kNameCap));
    op_w = std::max(op_w, std::min(n.op.size(), kOpCap));
    target_w = std::max(target_w, std::min(n.target.size(), kTargetCap));
  }
  const std::size_t index_w = std::max<std::size_t>(5, std::to_string(g.size()).size());
  for (std::size_t i = 0; i < g.size(); ++i) {
    const auto& n = g.node(i);
    std::string ins;
    for (std::size_t j : n.inputs) ins += (ins.empty() ? "" : ", ") + g.node(j).name;
    std::cout << pad(std::to_string(i), index_w, true) << "  " << pad(n.name, name_w) << "  " << pad(n.op, op_w)
              << "  " << pad(n.target, target_w) << "  (" << ins << ")  " << n.meta.size() << " keys\n";
  }
}

int cmd_inspect(const InspectOptions& o) {
  const std::string& graph_path = o.graph;
  std::optional<std::string> node_name;
  if (o.node_opt->count() > 0) node_name = o.node;
  const Graph g = load_for_command(graph_path, o.load);
  if (!node_name) {
    std::cout << graph_path << ": " << g.size() << " nodes\n";
    for (const auto& [k, v] : g.attrs()) std::cout << "  " << k << ": " << v.repr() << "\n";
    std::cout << "\n";
    print_node_table(g);
    return 0;
  }
  const auto idx = g.find(*node_name);
  if (!idx) throw std::runtime_error(graph_path + ": no node named '" + *node_name + "'");
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
  CLI::App app(
      "Thread-safe node metadata for compiler graphs: load a torch.fx graph, run parallel passes\n"
      "over its node metadata, verify that protected metadata survived.",
      "nodemeta");
  // Before the commands are added: they copy the formatter, the option defaults and the help flag.
  app.formatter(std::make_shared<HelpFormatter>());
  app.get_formatter()->label("Usage", "usage");
  app.get_formatter()->label("SUBCOMMAND", "<command>");
  app.get_formatter()->label("OPTIONS", "options");
  app.get_formatter()->label("Positionals", "arguments");
  app.get_formatter()->label("REQUIRED", "(required)");
  app.get_formatter()->column_width(24);
  app.option_defaults()->group("options");
  app.set_help_flag("-h,--help", "show this help");
  app.set_version_flag("--version", std::string("nodemeta ") + NODEMETA_VERSION_STRING, "show the version");
  app.footer("Run 'nodemeta <command> --help' for a command's options.");
  app.require_subcommand(0, 1);
  app.allow_extras();  // an unknown command is worded below
  RunOptions run_options;
  InspectOptions inspect_options;
  CLI::App* run = add_run_command(app, run_options);
  CLI::App* inspect = add_inspect_command(app, inspect_options);

  std::string cmd;
  try {
    try {
      app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
      if (e.get_exit_code() == static_cast<int>(CLI::ExitCodes::Success)) return app.exit(e);  // --help, --version
      const auto used = app.get_subcommands();
      throw UsageError(usage_message(e), used.empty() ? "" : used.front()->get_name());
    }
    if (run->parsed()) {
      cmd = "run";
      reject_extras(run->remaining(), run_options.graph, cmd);
      reject_extras(app.remaining(), run_options.graph, cmd);
      return cmd_run(run_options);
    }
    if (inspect->parsed()) {
      cmd = "inspect";
      reject_extras(inspect->remaining(), inspect_options.graph, cmd);
      reject_extras(app.remaining(), inspect_options.graph, cmd);
      return cmd_inspect(inspect_options);
    }
    const std::vector<std::string> rest = app.remaining();
    if (rest.empty()) throw UsageError("missing command (run or inspect)", "");
    if (rest.front() == "help") {
      std::cout << app.help();
      return 0;
    }
    if (rest.front().size() > 1 && rest.front()[0] == '-') {
      throw UsageError("unknown option '" + rest.front().substr(0, rest.front().find('=')) + "'", "");
    }
    throw UsageError("unknown command '" + rest.front() + "' (expected run or inspect)", "");
  } catch (const UsageError& e) {
    std::cerr << "nodemeta" << (e.command.empty() ? "" : " " + e.command) << ": error: " << e.what() << "\n"
              << "Try 'nodemeta" << (e.command.empty() ? "" : " " + e.command) << " --help'.\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "nodemeta" << (cmd.empty() ? "" : " " + cmd) << ": error: " << e.what() << "\n";
    return 1;
  }
}
