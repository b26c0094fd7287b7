// nodemeta: run the pass pipeline on a graph, or inspect a graph's node metadata.
//
//   nodemeta run [GRAPH] [-t N] [-p LIST] [-r R] [--json FILE] [-o FILE] [-m eval|training]
//   nodemeta inspect GRAPH [-n NAME]
//   nodemeta help [run | inspect]
//
// Options are parsed by CLI11 (GNU forms: --threads=2, -t 2, -t2; generated --help); where
// the command is, "--", --help and --version are decided here first (main). Exit
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
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <optional>
#include <random>
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
constexpr std::size_t kMaxPasses = 64;       // entries in --passes
constexpr std::size_t kTimeSamples = 10000;  // per pass: the repeats whose times are kept

// A bad command line: reported on one line plus a pointer to --help, exit 2.
struct UsageError : std::runtime_error {
  UsageError(const std::string& message, std::string cmd) : std::runtime_error(message), command(std::move(cmd)) {}
  std::string command;
};

// ---- text from arguments and files, as printed -------------------------------------------
// Everything the command echoes from its arguments or from a graph file goes through
// printable(), so that no argument or file can move the cursor, clear the screen, break a
// message over lines or reverse the text around it on the user's terminal.

// The UTF-8 sequence at s[i]: its length, or 0 if it is not valid UTF-8 (a stray or missing
// continuation byte, an overlong form, a surrogate, past U+10FFFF); its code point in `cp`.
std::size_t decode_utf8(std::string_view s, std::size_t i, char32_t& cp) {
  const auto byte = [&](std::size_t k) { return static_cast<unsigned char>(s[i + k]); };
  const unsigned char c = byte(0);
  std::size_t n = 0;
  char32_t min = 0;
  if (c < 0x80) {
    cp = c;
    return 1;
  }
  if ((c & 0xe0) == 0xc0) {
    n = 2, cp = c & 0x1fu, min = 0x80;
  } else if ((c & 0xf0) == 0xe0) {
    n = 3, cp = c & 0x0fu, min = 0x800;
  } else if ((c & 0xf8) == 0xf0) {
    n = 4, cp = c & 0x07u, min = 0x10000;
  } else {
    return 0;
  }
  if (i + n > s.size()) return 0;
  for (std::size_t k = 1; k < n; ++k) {
    if ((byte(k) & 0xc0) != 0x80) return 0;
    cp = (cp << 6) | (byte(k) & 0x3fu);
  }
  if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
  return n;
}

// C0 controls, DEL, C1 controls, the line and paragraph separators, and the bidirectional
// controls (marks, embeddings, overrides, isolates).
bool is_unsafe(char32_t cp) {
  return cp < 0x20 || (cp >= 0x7f && cp <= 0x9f) || cp == 0x061c || cp == 0x200e || cp == 0x200f ||
         (cp >= 0x2028 && cp <= 0x202e) || (cp >= 0x2066 && cp <= 0x2069);
}

// `s` with every unsafe character written as \uXXXX (as the library's own messages do) and
// every byte that is not valid UTF-8 as \xNN. Backslashes are kept as they are, so text that
// is already printable comes back unchanged.
std::string printable(std::string_view s) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string r;
  r.reserve(s.size());
  for (std::size_t i = 0; i < s.size();) {
    char32_t cp = 0;
    const std::size_t n = decode_utf8(s, i, cp);
    if (n == 0) {
      const auto b = static_cast<unsigned char>(s[i++]);
      r += "\\x";
      r += kHex[b >> 4];
      r += kHex[b & 15];
      continue;
    }
    if (is_unsafe(cp)) {
      r += "\\u";
      for (int shift = 12; shift >= 0; shift -= 4) r += kHex[(cp >> shift) & 15];
    } else {
      r.append(s.substr(i, n));
    }
    i += n;
  }
  return r;
}

// A value echoed in a message: printable, and past kShownBytes cut (at a character) and
// followed by its length, so that a huge argument cannot flood the terminal.
constexpr std::size_t kShownBytes = 200;
// Where to cut `s` at most `limit` bytes in: not inside a UTF-8 sequence (backing off at
// most three continuation bytes; stray ones are printed as \xNN anyway).
std::size_t cut_at(std::string_view s, std::size_t limit) {
  std::size_t cut = limit;
  for (int back = 0; back < 3 && cut > 0 && (static_cast<unsigned char>(s[cut]) & 0xc0) == 0x80; ++back) --cut;
  return (static_cast<unsigned char>(s[cut]) & 0xc0) == 0x80 ? limit : cut;
}
std::string shown(std::string_view s) {
  if (s.size() <= kShownBytes) return printable(s);
  return printable(s.substr(0, cut_at(s, kShownBytes))) + "... (" + std::to_string(s.size()) + " bytes)";
}
// A message from the library, made printable, with every run of non-blank bytes longer
// than any shown() value can be (a long path or value it echoed, escaped or not) cut to
// kShownBytes, never inside an escape, keeping a trailing ':'.
std::string shown_message(std::string_view m) {
  constexpr std::size_t kLongRun = 6 * kShownBytes + 32;  // \uXXXX for every 3 bytes, or \xNN
  const std::string p = printable(m);
  std::string out;
  for (std::size_t i = 0; i < p.size();) {
    const std::size_t end = std::min(p.find(' ', i), p.size());
    std::string_view run = std::string_view(p).substr(i, end - i);
    const bool colon = !run.empty() && run.back() == ':';
    if (colon) run.remove_suffix(1);
    if (run.size() > kLongRun) {
      std::size_t cut = cut_at(run, kShownBytes);
      const std::size_t escape = run.substr(0, cut).rfind('\\');
      if (escape != std::string_view::npos && cut - escape < 6) cut = escape;  // not inside \uXXXX
      out.append(run.substr(0, cut)).append("... (" + std::to_string(run.size()) + " bytes)");
    } else {
      out.append(run);
    }
    if (colon) out += ':';
    if (end < p.size()) out += ' ';
    i = end + 1;
  }
  return out;
}

// The columns a character takes on a terminal, approximately as wcwidth() says in a UTF-8
// locale but without depending on the user's locale: 0 for the common combining marks and
// zero-width characters, 2 for the main blocks of East Asian Wide and Fullwidth characters
// and of emoji, 1 otherwise. Not a full Unicode width table: a rare character may be off
// by a column, which shifts only its own row.
int char_columns(char32_t cp) {
  struct Range {
    char32_t lo, hi;
  };
  static constexpr Range kZero[] = {
      {0x0300, 0x036f}, {0x0483, 0x0489}, {0x0591, 0x05bd}, {0x05bf, 0x05bf}, {0x05c1, 0x05c2},
      {0x05c4, 0x05c5}, {0x05c7, 0x05c7}, {0x0610, 0x061a}, {0x064b, 0x065f}, {0x0670, 0x0670},
      {0x06d6, 0x06dc}, {0x06df, 0x06e4}, {0x06e7, 0x06e8}, {0x06ea, 0x06ed}, {0x0900, 0x0902},
      {0x093a, 0x093a}, {0x093c, 0x093c}, {0x0941, 0x0948}, {0x094d, 0x094d}, {0x0951, 0x0957},
      {0x0e31, 0x0e31}, {0x0e34, 0x0e3a}, {0x0e47, 0x0e4e}, {0x1ab0, 0x1aff}, {0x1dc0, 0x1dff},
      {0x200b, 0x200d}, {0x20d0, 0x20ff}, {0x302a, 0x302d}, {0x3099, 0x309a}, {0xfe00, 0xfe0f},
      {0xfe20, 0xfe2f}, {0xfeff, 0xfeff}, {0x1160, 0x11ff}, {0x2060, 0x2064}, {0xe0001, 0xe0001},
      {0xe0020, 0xe007f}, {0xe0100, 0xe01ef}};
  static constexpr Range kWide[] = {
      {0x1100, 0x115f}, {0x231a, 0x231b}, {0x2329, 0x232a}, {0x23e9, 0x23ec}, {0x23f0, 0x23f0},
      {0x23f3, 0x23f3}, {0x25fd, 0x25fe}, {0x2614, 0x2615}, {0x2e80, 0x303e}, {0x3041, 0x33ff},
      {0x3400, 0x4dbf}, {0x4e00, 0x9fff}, {0xa000, 0xa4cf}, {0xa960, 0xa97f}, {0xac00, 0xd7a3},
      {0xf900, 0xfaff}, {0xfe10, 0xfe19}, {0xfe30, 0xfe6f}, {0xff00, 0xff60}, {0xffe0, 0xffe6},
      {0x2648, 0x2653}, {0x26a1, 0x26a1}, {0x26aa, 0x26ab}, {0x26bd, 0x26be}, {0x26c4, 0x26c5},
      {0x26ce, 0x26ce}, {0x26d4, 0x26d4}, {0x26ea, 0x26ea}, {0x26f2, 0x26f5}, {0x26fa, 0x26fa},
      {0x26fd, 0x26fd}, {0x2705, 0x2705}, {0x270a, 0x270b}, {0x2728, 0x2728}, {0x274c, 0x274c},
      {0x2753, 0x2755}, {0x2757, 0x2757}, {0x2795, 0x2797}, {0x27b0, 0x27b0}, {0x27bf, 0x27bf},
      {0x2b1b, 0x2b1c}, {0x2b50, 0x2b50}, {0x2b55, 0x2b55}, {0x1f004, 0x1f004}, {0x1f0cf, 0x1f0cf},
      {0x1f18e, 0x1f18e}, {0x1f191, 0x1f19a}, {0x1f200, 0x1f202}, {0x1f210, 0x1f23b},
      {0x1f300, 0x1f320}, {0x1f32d, 0x1f335}, {0x1f337, 0x1f37c}, {0x1f37e, 0x1f393},
      {0x1f3a0, 0x1f3ca}, {0x1f3cf, 0x1f3d3}, {0x1f3e0, 0x1f3f0}, {0x1f3f4, 0x1f3f4},
      {0x1f3f8, 0x1f43e}, {0x1f440, 0x1f440}, {0x1f442, 0x1f4fc}, {0x1f4ff, 0x1f53d},
      {0x1f54b, 0x1f54e}, {0x1f550, 0x1f567}, {0x1f57a, 0x1f57a}, {0x1f595, 0x1f596},
      {0x1f5a4, 0x1f5a4}, {0x1f5fb, 0x1f64f}, {0x1f680, 0x1f6c5}, {0x1f6cc, 0x1f6cc},
      {0x1f6d0, 0x1f6d2}, {0x1f6d5, 0x1f6d7}, {0x1f6eb, 0x1f6ec}, {0x1f6f4, 0x1f6fc},
      {0x1f7e0, 0x1f7eb}, {0x1f90c, 0x1f93a}, {0x1f93c, 0x1f945}, {0x1f947, 0x1f9ff},
      {0x1fa70, 0x1faff}, {0x20000, 0x2fffd}, {0x30000, 0x3fffd}};
  const auto in = [cp](const auto& table) {
    return std::any_of(std::begin(table), std::end(table), [cp](const Range& r) { return cp >= r.lo && cp <= r.hi; });
  };
  if (in(kZero)) return 0;
  return in(kWide) ? 2 : 1;
}

// The columns printable text takes on a terminal (an escape counts as its characters).
std::size_t display_width(std::string_view s) {
  std::size_t w = 0;
  for (std::size_t i = 0; i < s.size();) {
    char32_t cp = 0;
    const std::size_t n = decode_utf8(s, i, cp);
    w += n == 0 ? 4 : static_cast<std::size_t>(char_columns(cp));  // \xNN, if text was not printable
    i += n == 0 ? 1 : n;
  }
  return w;
}

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

// A whole number in [lo, max], digits only (no sign, no spaces), rewritten to plain digits
// for CLI11's conversion; `why_lo` explains a lower bound other than 1.
CLI::Validator whole_number(long lo, long max, std::string why_lo = {}) {
  return CLI::Validator(
      [lo, max, why_lo](std::string& text) -> std::string {
        const bool digits =
            !text.empty() && std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; });
        errno = 0;
        const long v = digits ? std::strtol(text.c_str(), nullptr, 10) : 0;
        if (!digits || errno != 0 || v < 1 || v > max) {
          return "expects a whole number from " + std::to_string(lo) + " to " + std::to_string(max) + ", got '" +
                 shown(text) + "'";
        }
        if (v < lo) return "must be at least " + std::to_string(lo) + why_lo + ", got '" + shown(text) + "'";
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
                  " bytes (a number, optionally with K, M or G), got '" + shown(text) + "'";
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
        return "expects " + list + ", got '" + shown(text) + "'";
      },
      "");
}

// A comma-separated list of known pass names (the message lists the valid ones), at most
// kMaxPasses of them (a name may repeat: running a pass twice is a legitimate experiment).
CLI::Validator pass_list() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        if (const auto n = static_cast<std::size_t>(std::count(text.begin(), text.end(), ',')) + 1; n > kMaxPasses) {
          return "expects at most " + std::to_string(kMaxPasses) + " passes, got " + std::to_string(n);
        }
        try {
          nodemeta::passes::parse_pass_list(text);
          return {};
        } catch (const std::invalid_argument& e) {
          return e.what();
        }
      },
      "");
}

// A file name: not empty.
CLI::Validator file_name() {
  return CLI::Validator(
      [](std::string& text) -> std::string { return text.empty() ? "expects a file name, got ''" : std::string(); },
      "");
}

// A file to write: a name, not a directory; "-" (stdout) only where `stdout_ok`.
CLI::Validator output_file(bool stdout_ok) {
  return CLI::Validator(
      [stdout_ok](std::string& text) -> std::string {
        if (text.empty()) return "expects a file name, got ''";
        if (text == "-") return stdout_ok ? std::string() : "writing a graph to stdout is not supported, got '-'";
        std::error_code ec;
        if (fs::is_directory(text, ec)) return "expects a file name, got '" + shown(text) + "', a directory";
        return {};
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
    if (a.size() > 1 && a[0] == '-') throw UsageError("unknown option '" + shown(a.substr(0, a.find('='))) + "'", cmd);
  }
  if (!extras.empty()) {
    throw UsageError("more than one GRAPH given ('" + shown(graph_path) + "' and '" + shown(extras.front()) + "')", cmd);
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

// `s` (printable text) padded with spaces to `width` terminal columns.
std::string pad(std::string s, std::size_t width, bool right = false) {
  const std::size_t w = display_width(s);
  if (w >= width) return s;
  return right ? std::string(width - w, ' ') + s : s + std::string(width - w, ' ');
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
    const int n = std::fprintf(stderr, "\r[%s%s] %zu/%zu %-24s", std::string(fill, '#').c_str(),
                               std::string(kWidth - fill, '.').c_str(), done, total_, printable(what).c_str());
    std::fflush(stderr);
    if (n > 1) width_ = std::max(width_, static_cast<std::size_t>(n - 1));
    drawn_ = true;
  }
  void finish() {
    if (drawn_) std::fprintf(stderr, "\r%s\r", std::string(width_, ' ').c_str());
    drawn_ = false;
  }

 private:
  bool enabled_;
  std::size_t total_;
  bool drawn_ = false;
  std::size_t width_ = 0;  // the longest line drawn, which finish() clears
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
};

// Loading a file large enough to notice (over a second) shows its phase and how far it is,
// on one line of stderr, only when stderr is a terminal.
class LoadDisplay {
 public:
  explicit LoadDisplay(const std::string& path) : path_(shown(path)), enabled_(isatty(STDERR_FILENO)) {}
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
    if (drawn_) std::fprintf(stderr, "\r%s\r", std::string(display_width(path_) + 52, ' ').c_str());
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

// Whether two paths name the same file: the same inode where both exist, else the same
// absolute, lexically normal path.
bool same_file(const std::string& a, const std::string& b) {
  std::error_code ec;
  if (fs::exists(a, ec) && fs::exists(b, ec)) return fs::equivalent(a, b, ec);
  // weakly_canonical resolves symlinks (and then "..") in the part of each path that exists.
  std::error_code ea, eb;
  const fs::path pa = fs::weakly_canonical(fs::absolute(a, ea), ea);
  const fs::path pb = fs::weakly_canonical(fs::absolute(b, eb), eb);
  if (ea || eb) return fs::absolute(a, ec).lexically_normal() == fs::absolute(b, ec).lexically_normal();
  return pa == pb;
}

// Fails (exit 1, naming the file and the reason) if `path` could not be written: an existing
// file without write permission, or a folder that does not exist or cannot take a new file.
void check_writable(const std::string& path) {
  std::error_code ec;
  // A dangling symlink is written through: what matters is its target's folder.
  fs::path target = path;
  if (fs::is_symlink(fs::symlink_status(target, ec)) && !fs::exists(target, ec)) {
    const fs::path link = fs::read_symlink(target, ec);
    if (!ec) target = link.is_absolute() ? link : fs::path(path).parent_path() / link;
  }
  const bool exists = fs::exists(target, ec);
  fs::path dir = target.parent_path();
  if (dir.empty()) dir = ".";
  if (!exists && fs::exists(dir, ec) && !fs::is_directory(dir, ec)) {
    throw std::runtime_error(path + ": cannot write: " + std::strerror(ENOTDIR));
  }
  if (exists ? access(target.c_str(), W_OK) != 0 : access(dir.c_str(), W_OK | X_OK) != 0) {
    throw std::runtime_error(path + ": cannot write: " + std::strerror(errno));
  }
}

// Writes `text` to the file `path` (replacing it), naming the file and the reason on failure.
void write_text(const std::string& path, const std::string& text) {
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> f(std::fopen(path.c_str(), "wb"), &std::fclose);
  if (!f) throw std::runtime_error(path + ": cannot open for writing: " + std::strerror(errno));
  if (std::fwrite(text.data(), 1, text.size(), f.get()) != text.size() || std::fflush(f.get()) != 0) {
    throw std::runtime_error(path + ": cannot write the JSON results: " + std::strerror(errno));
  }
  if (std::fclose(f.release()) != 0) throw std::runtime_error(path + ": cannot write the JSON results: " + std::strerror(errno));
}

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
  CLI::Option* graph_opt = nullptr;
  const CLI::Option* json_opt = nullptr;
  const CLI::Option* output_opt = nullptr;
};

CLI::App* add_run_command(CLI::App& app, RunOptions& o) {
  CLI::App* cmd = app.add_subcommand("run", "load GRAPH, run the pass pipeline, verify, print a table per pass");
  cmd->group("commands");
  o.graph_opt = cmd->add_option("GRAPH", o.graph,
                                "a graph file, .json or .json.gz (default: the bundled\nmlp_mixer_s16 graph)")
                    ->type_name("")
                    ->check(file_name());
  cmd->add_option("-t,--threads", o.threads, "worker threads (default: all cores)")
      ->type_name("N")
      ->transform(whole_number(1, kMaxThreads));
  std::string all;
  for (const std::string& n : nodemeta::passes::pass_names()) all += (all.empty() ? "" : ",") + n;
  cmd->add_option("-p,--passes", o.passes,
                  "comma-separated, from: " + all +
                      "\n(default: all of them, in that order; verify is always run last;\n"
                      "at most " + std::to_string(kMaxPasses) + " entries, a name may repeat)")
      ->type_name("LIST")
      ->check(pass_list());
  cmd->add_option("-r,--repeat", o.repeat,
                  "run the pipeline R times, each on a fresh copy of the loaded\n"
                  "graph (default 1, at most " + std::to_string(kMaxRepeat) + "); times are medians (over\n"
                  "a uniform sample of " + std::to_string(kTimeSamples) + " repeats when there are more)")
      ->type_name("R")
      ->transform(whole_number(1, kMaxRepeat));
  o.json_opt = cmd->add_option("--json", o.json,
                               "write the results as JSON to FILE ('-' for stdout) and print\nnothing else")
                   ->type_name("FILE")
                   ->check(output_file(true));
  o.output_opt = cmd->add_option("-o,--output", o.output,
                                 "save the graph after the passes (of the last repeat) to FILE,\n"
                                 "a graph file (.json, or gzip for .json.gz) that nodemeta run\nreads again; not GRAPH itself")
                     ->type_name("FILE")
                     ->check(output_file(false));
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
  // Before the (possibly long) run: no output overwrites the input or the other output, and
  // each output can be written.
  std::error_code graph_ec;
  const bool graph_exists = fs::exists(path, graph_ec);  // if not, loading it says so (exit 1)
  if (output_path && graph_exists && same_file(*output_path, path)) {
    throw UsageError("--output: '" + shown(*output_path) + "' is the GRAPH being read; save to another file", "run");
  }
  if (json_path && *json_path != "-") {
    if (graph_exists && same_file(*json_path, path)) {
      throw UsageError("--json: '" + shown(*json_path) + "' is the GRAPH being read; write to another file", "run");
    }
    if (output_path && same_file(*json_path, *output_path)) {
      throw UsageError("--json and --output both name '" + shown(*json_path) + "'", "run");
    }
    check_writable(*json_path);
  }
  if (output_path) check_writable(*output_path);

  tbb::global_control limit(tbb::global_control::max_allowed_parallelism, static_cast<std::size_t>(threads));
  tbb::task_arena arena(static_cast<int>(threads));

  const auto t0 = std::chrono::steady_clock::now();
  Graph loaded = load_for_command(path, o.load);
  if (training) declare_mode(loaded, *training, path);
  const double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::optional<nodemeta::passes::Baseline> baseline;
  arena.execute([&] { baseline.emplace(loaded); });
  // What the dependencies leave to a dependency-ordered pass (propagate), as loaded.
  const nodemeta::passes::Parallelism par = nodemeta::passes::available_parallelism(loaded);

  // Memory stays bounded whatever --repeat says: the last repeat's statistics, each pass's
  // fastest time, and the times of at most kTimeSamples repeats (a uniform sample, reservoir
  // style, with a fixed seed so that a run is reproducible) for the median.
  std::vector<PassStats> last;
  std::vector<std::vector<double>> samples(passes.size());  // [pass][sampled repeat]
  std::vector<double> fastest(passes.size(), 0.0);
  std::mt19937_64 sampler(0x6e6f64656d657461);
  Progress progress(!quiet, static_cast<std::size_t>(repeat) * passes.size());
  for (long r = 0; r < repeat; ++r) {
    Graph g = loaded.clone();
    const std::size_t before = static_cast<std::size_t>(r) * passes.size();
    const auto step = [&](std::size_t i, std::string_view next) {
      if (i < passes.size()) progress.step(before + i, "repeat " + std::to_string(r + 1) + ": " + std::string(next));
    };
    arena.execute([&] { last = nodemeta::passes::run_pipeline(g, passes, *baseline, step); });
    const std::size_t seen = static_cast<std::size_t>(r);
    const std::size_t slot = seen < kTimeSamples ? seen : static_cast<std::size_t>(sampler() % (seen + 1));
    for (std::size_t p = 0; p < passes.size(); ++p) {
      const double t = last[p].seconds;
      fastest[p] = r == 0 ? t : std::min(fastest[p], t);
      if (seen < kTimeSamples) {
        samples[p].push_back(t);
      } else if (slot < kTimeSamples) {
        samples[p][slot] = t;
      }
    }
    if (output_path && r + 1 == repeat) nodemeta::graph::save_graph(g, *output_path);
  }
  progress.step(static_cast<std::size_t>(repeat) * passes.size(), "done");
  progress.finish();

  std::vector<double> med(passes.size());
  double total_s = 0;
  std::size_t total_rejected = 0, total_touched = 0;
  for (std::size_t p = 0; p < passes.size(); ++p) {
    med[p] = median(std::move(samples[p]));
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
       << ",\"repeat\":" << repeat << ",\"load_seconds\":" << load_s << ",\"parallelism\":{\"nodes\":" << par.nodes
       << ",\"depth\":" << par.depth << ",\"work\":" << par.work << ",\"span\":" << par.span
       << ",\"by_work\":" << par.by_work() << ",\"by_nodes\":" << par.by_nodes() << "},\"passes\":[";
    for (std::size_t p = 0; p < passes.size(); ++p) {
      const PassStats& s = last[p];
      const double lo = fastest[p];
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
      write_text(*json_path, js.str());
    }
    return clean ? 0 : 1;
  }

  std::cout << "nodemeta run: " << printable(path) << "\n"
            << "  graph " << (model.empty() ? "?" : printable(model)) << ", " << loaded.size() << " nodes, loaded in "
            << fixed(load_s * 1e3, 1) << " ms, traced in " << mode_text << " mode; " << threads << " thread" << (threads == 1 ? "" : "s") << ", "
            << repeat << " repeat" << (repeat == 1 ? "" : "s") << (repeat > 1 ? " (times are medians)" : "") << "\n"
            << "  available parallelism " << fixed(par.by_work(), 2) << " (work " << par.work << " / critical path "
            << par.span << "), " << fixed(par.by_nodes(), 2) << " (nodes " << par.nodes << " / depth " << par.depth
            << ")\n\n";
  std::cout << pad("pass", 12) << pad("nodes", 11, true) << pad("touched", 9, true) << pad("time ms", 10, true)
            << pad("nodes/s", 11, true) << pad("rejected", 10, true) << "  result\n";
  for (std::size_t p = 0; p < passes.size(); ++p) {
    const PassStats& s = last[p];
    const std::string nodes = s.nodes_before == s.nodes_after
                                  ? std::to_string(s.nodes_after)
                                  : std::to_string(s.nodes_before) + "->" + std::to_string(s.nodes_after);
    std::cout << pad(printable(s.name), 12) << pad(nodes, 11, true) << pad(std::to_string(s.nodes_touched), 9, true)
              << pad(fixed(med[p] * 1e3, 3), 10, true)
              << pad(med[p] > 0 ? human_rate(static_cast<double>(s.nodes_touched) / med[p]) : "-", 11, true)
              << pad(std::to_string(s.rejected_protected), 10, true) << "  " << printable(s.summary) << "\n";
  }
  std::cout << pad("total", 12) << pad("", 11) << pad(std::to_string(total_touched), 9, true)
            << pad(fixed(total_s * 1e3, 3), 10, true) << pad("", 11) << pad(std::to_string(total_rejected), 10, true)
            << "\n\npeak memory (max RSS): " << fixed(rss, 1) << " MiB\n";
  if (clean) {
    std::cout << "verify: clean (every loaded protected value intact, every rewritten node's provenance complete)\n";
    return 0;
  }
  std::cout << "verify: " << problems.size() << " problems\n";
  for (std::size_t k = 0; k < problems.size() && k < 20; ++k) std::cout << "  " << printable(problems[k]) << "\n";
  return 1;
}

// ---- inspect ----------------------------------------------------------------------------

void print_value(const std::string& key, const Value& v) {
  const auto* s = v.get_if<std::string>();
  if (s && s->find('\n') != std::string::npos) {
    std::cout << "  " << printable(key) << ":\n";
    std::istringstream lines(*s);
    std::string line;
    while (std::getline(lines, line)) std::cout << "      " << printable(line) << "\n";
    return;
  }
  if (const auto* d = v.get_if<Value::Dict>(); d && !d->empty() && v.repr().size() > 90) {
    std::cout << "  " << printable(key) << ": {\n";
    for (const auto& [k, e] : *d) std::cout << "      " << printable(Value(k).repr()) << ": " << printable(e.repr()) << ",\n";
    std::cout << "  }\n";
    return;
  }
  std::cout << "  " << printable(key) << ": " << printable(v.repr()) << "\n";
}

// `nodemeta inspect`'s options, as CLI11 leaves them.
struct InspectOptions {
  std::string graph;
  std::string node;  // empty: list the nodes
  nodemeta::graph::LoadOptions load;
  CLI::Option* graph_opt = nullptr;
  const CLI::Option* node_opt = nullptr;
};

CLI::App* add_inspect_command(CLI::App& app, InspectOptions& o) {
  CLI::App* cmd = app.add_subcommand("inspect", "print a graph's nodes, or one node's metadata");
  cmd->group("commands");
  o.graph_opt = cmd->add_option("GRAPH", o.graph, "a graph file, .json or .json.gz")
                    ->type_name("")
                    ->required()
                    ->check(file_name());
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
// Widths are terminal columns (a CJK character takes two, a combining accent none), of the
// text as printed (an escaped control character takes the columns of its escape).
void print_node_table(const Graph& g) {
  constexpr std::size_t kNameCap = 48, kOpCap = 16, kTargetCap = 48;
  std::vector<std::string> names(g.size());
  std::size_t name_w = 0, op_w = 0, target_w = 0;
  for (std::size_t i = 0; i < g.size(); ++i) {
    const auto& n = g.node(i);
    names[i] = printable(n.name);
    name_w = std::max(name_w, std::min(display_width(names[i]), kNameCap));
    op_w = std::max(op_w, std::min(display_width(printable(n.op)), kOpCap));
    target_w = std::max(target_w, std::min(display_width(printable(n.target)), kTargetCap));
  }
  const std::size_t index_w = std::max<std::size_t>(5, std::to_string(g.size()).size());
  for (std::size_t i = 0; i < g.size(); ++i) {
    const auto& n = g.node(i);
    std::string ins;
    for (std::size_t j : n.inputs) ins += (ins.empty() ? "" : ", ") + names[j];
    std::cout << pad(std::to_string(i), index_w, true) << "  " << pad(names[i], name_w) << "  "
              << pad(printable(n.op), op_w) << "  " << pad(printable(n.target), target_w) << "  (" << ins << ")  "
              << n.meta.size() << " keys\n";
  }
}

int cmd_inspect(const InspectOptions& o) {
  const std::string& graph_path = o.graph;
  std::optional<std::string> node_name;
  if (o.node_opt->count() > 0) node_name = o.node;
  const Graph g = load_for_command(graph_path, o.load);
  if (!node_name) {
    std::cout << printable(graph_path) << ": " << g.size() << " nodes\n";
    for (const auto& [k, v] : g.attrs()) {
      namespace ga = nodemeta::passes::graph_attrs;
      const auto* d = v.get_if<Value::Dict>();
      if (d && (k == ga::kModules || k == ga::kCalls)) {  // one entry per module / call: shown per node
        std::cout << "  " << printable(k) << ": " << d->size() << (d->size() == 1 ? " entry" : " entries")
                  << " (each node's with --node NAME)\n";
      } else {
        std::cout << "  " << printable(k) << ": " << printable(v.repr()) << "\n";
      }
    }
    std::cout << "\n";
    print_node_table(g);
    return 0;
  }
  const auto idx = g.find(*node_name);
  if (!idx) throw std::runtime_error(graph_path + ": no node named '" + shown(*node_name) + "'");
  const auto& n = g.node(*idx);
  std::string ins;
  for (std::size_t j : n.inputs) ins += (ins.empty() ? "" : ", ") + g.node(j).name;
  std::cout << "node " << *idx << " '" << printable(n.name) << "'\n  op: " << printable(n.op)
            << "\n  target: " << printable(n.target) << "\n  inputs: [" << printable(ins) << "]\n";
  // The node's entry of the graph's "modules" (by target) or "calls" (by name) attribute.
  for (const auto& [k, v] : g.attrs()) {
    namespace ga = nodemeta::passes::graph_attrs;
    const bool modules = k == ga::kModules && n.op == "call_module";
    const bool calls = k == ga::kCalls && (n.op == "call_function" || n.op == "call_method");
    if (!modules && !calls) continue;
    if (const Value* e = v.find(modules ? n.target : n.name)) {
      std::cout << "  " << (modules ? "module" : "call") << " (graph attribute " << printable(k)
                << "): " << printable(e->repr()) << "\n";
    }
  }
  std::cout << "meta ("
            << n.meta.size() << " keys; protected: ";
  const auto prot = g.store().protected_keys();
  for (std::size_t k = 0; k < prot.size(); ++k) std::cout << (k ? ", " : "") << printable(prot[k]);
  std::cout << ")\n";
  for (const auto& [k, v] : n.meta.items()) print_value(k, v);
  return 0;
}

// The command line as the user gave it, split where CLI11 should not decide: the command's
// position, and the GRAPH operands after "--".
struct CommandLine {
  std::vector<std::string> before;  // up to the command (the command word excluded)
  std::string command;              // run, inspect, help; empty if none was given
  std::vector<std::string> args;    // after the command, up to the first "--"
  bool dashes = false;              // a "--" was given
  std::vector<std::string> operands;  // after the first "--": GRAPHs, whatever they look like
};

CommandLine split_command_line(int argc, char** argv, const std::vector<std::string>& commands) {
  CommandLine c;
  bool in_command = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (c.dashes) {
      c.operands.push_back(a);
    } else if (a == "--") {
      c.dashes = true;  // CLI11 never takes "--" as an option's value, so this is the separator
    } else if (in_command) {
      c.args.push_back(a);
    } else if (std::find(commands.begin(), commands.end(), a) != commands.end()) {
      c.command = a;
      in_command = true;
    } else {
      c.before.push_back(a);
    }
  }
  return c;
}

// What came before the command: only --help and --version belong there. A command's option
// is told where it goes; anything else is an unknown option or command of `nodemeta`.
void check_before_command(const CommandLine& c, CLI::App& app) {
  for (std::size_t i = 0; i < c.before.size(); ++i) {
    const std::string& a = c.before[i];
    if (a == "--version") continue;
    if (a.size() < 2 || a[0] != '-') throw UsageError("unknown command '" + shown(a) + "' (expected run or inspect)", "");
    const bool is_long = a[1] == '-';
    const std::string name = is_long ? a.substr(0, a.find('=')) : a.substr(0, 2);
    const bool attached = is_long ? name.size() < a.size() : a.size() > 2;
    CLI::App* owner = nullptr;
    if (!c.command.empty() && c.command != "help" && app.get_subcommand(c.command)->get_option_no_throw(name)) {
      owner = app.get_subcommand(c.command);
    }
    for (CLI::App* sub : app.get_subcommands({})) {
      if (!owner && sub->get_option_no_throw(name)) owner = sub;
    }
    if (!owner) throw UsageError("unknown option '" + shown(name) + "'", "");
    std::string example = a;
    if (!attached && i + 1 < c.before.size()) example += " " + c.before[i + 1];
    throw UsageError("'" + shown(name) + "' must come after the command: nodemeta " + owner->get_name() + " " +
                         shown(example) + " ...",
                     "");
  }
}

// The GRAPH of a command: the one CLI11 took, else the first operand after "--"; a second
// one is an error.
void take_graph(std::string& graph, const CLI::Option* graph_opt, const CommandLine& c, const std::string& cmd) {
  std::vector<std::string> extra = c.operands;
  if (graph_opt->count() == 0 && !extra.empty()) {
    graph = extra.front();
    extra.erase(extra.begin());
    if (graph.empty()) throw UsageError("GRAPH: expects a file name, got ''", cmd);
  }
  if (!extra.empty()) {
    throw UsageError("more than one GRAPH given ('" + shown(graph) + "' and '" + shown(extra.front()) + "')", cmd);
  }
}

}  // namespace

// The exceptions nested in `e` (std::throw_with_nested), one "caused by" line each.
void print_causes(const std::exception& e) {
  try {
    std::rethrow_if_nested(e);
  } catch (const std::exception& inner) {
    std::cerr << "  caused by: " << shown_message(inner.what()) << "\n";
    print_causes(inner);
  } catch (...) {
    std::cerr << "  caused by: an exception that is not a std::exception\n";
  }
}

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
  // An option given twice: the last one counts (GNU habit: an alias adds -t 4, the user's -t 2 wins).
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  app.set_help_flag("-h,--help", "show this help");
  app.set_version_flag("--version", std::string("nodemeta ") + NODEMETA_VERSION_STRING, "show the version");
  app.footer(
      "Run 'nodemeta <command> --help' (or 'nodemeta help <command>') for a command's options.\n"
      "Options go after the command; '--' ends them (nodemeta run -- -odd-name.json).");
  app.require_subcommand(1, 1);  // for the usage line: the command is checked before CLI11 parses
  app.allow_extras();             // reject_extras() words them
  RunOptions run_options;
  InspectOptions inspect_options;
  CLI::App* run = add_run_command(app, run_options);
  CLI::App* inspect = add_inspect_command(app, inspect_options);
  std::string help_topic;
  CLI::App* help = app.add_subcommand("help", "show this help, or a command's (nodemeta help run)");
  help->group("commands");
  help->add_option("COMMAND", help_topic, "run or inspect")->type_name("");
  for (CLI::App* sub : {run, inspect, help}) sub->get_help_ptr()->group("options");

  std::string cmd;
  try {
    const CommandLine line = split_command_line(argc, argv, {"run", "inspect", "help"});
    cmd = line.command == "help" ? "" : line.command;
    CLI::App* command = cmd.empty() ? nullptr : app.get_subcommand(cmd);
    // --help and --version take no value; --help wins wherever it is (before "--"), whatever else is wrong.
    for (const std::vector<std::string>* part : {&line.before, &line.args}) {
      for (const std::string& a : *part) {
        if (a.starts_with("--help=") || (part == &line.before && a.starts_with("--version="))) {
          throw UsageError(a.substr(0, a.find('=')) + " takes no value, got '" + shown(a.substr(a.find('=') + 1)) + "'",
                           part == &line.before ? "" : cmd);
        }
      }
    }
    for (const std::vector<std::string>* part : {&line.before, &line.args}) {
      if (std::find(part->begin(), part->end(), "-h") != part->end() ||
          std::find(part->begin(), part->end(), "--help") != part->end()) {
        std::cout << (command ? command->help(app.get_name()) : app.help());
        return 0;
      }
    }
    if (std::find(line.before.begin(), line.before.end(), "--version") != line.before.end()) {
      std::cout << "nodemeta " << NODEMETA_VERSION_STRING << "\n";
      return 0;
    }
    check_before_command(line, app);
    if (line.command.empty()) {
      throw UsageError(line.dashes ? "'--' must come after the command (nodemeta run -- GRAPH)"
                                   : "missing command (run or inspect)",
                       "");
    }
    if (line.command == "help") {
      std::vector<std::string> topics = line.args;
      topics.insert(topics.end(), line.operands.begin(), line.operands.end());
      if (topics.empty()) {
        std::cout << app.help();
        return 0;
      }
      if (topics.size() == 1 && (topics[0] == "run" || topics[0] == "inspect")) {
        std::cout << app.get_subcommand(topics[0])->help(app.get_name());
        return 0;
      }
      throw UsageError("help: expects run or inspect, got '" + shown(topics[0]) + "'", "");
    }
    // With "--", GRAPH may come after it: CLI11 must not require it before.
    if (line.dashes) inspect_options.graph_opt->required(false);
    std::vector<const char*> cli_argv{argv[0], line.command.c_str()};
    for (const std::string& a : line.args) cli_argv.push_back(a.c_str());
    try {
      app.parse(static_cast<int>(cli_argv.size()), cli_argv.data());
    } catch (const CLI::ParseError& e) {
      if (e.get_exit_code() == static_cast<int>(CLI::ExitCodes::Success)) return app.exit(e);
      throw UsageError(usage_message(e), cmd);
    }
    reject_extras(app.remaining(), "", cmd);
    if (run->parsed()) {
      reject_extras(run->remaining(), run_options.graph, cmd);
      take_graph(run_options.graph, run_options.graph_opt, line, cmd);
      return cmd_run(run_options);
    }
    reject_extras(inspect->remaining(), inspect_options.graph, cmd);
    take_graph(inspect_options.graph, inspect_options.graph_opt, line, cmd);
    if (inspect_options.graph_opt->count() == 0 && line.operands.empty()) throw UsageError("GRAPH is required", cmd);
    return cmd_inspect(inspect_options);
  } catch (const UsageError& e) {
    std::cerr << "nodemeta" << (e.command.empty() ? "" : " " + e.command) << ": error: " << printable(e.what())
              << "\n"
              << "Try 'nodemeta" << (e.command.empty() ? "" : " " + e.command) << " --help'.\n";
    return 2;
  } catch (const std::exception& e) {
    // A path or value echoed by the library is shortened as the command's own messages
    // shorten values; a nested cause (a pass that threw and could not be fully undone) too.
    std::string m = e.what();
    for (const std::string* p : {&run_options.graph, &run_options.json, &run_options.output, &inspect_options.graph}) {
      if (p->size() <= kShownBytes) continue;
      for (std::size_t at = m.find(*p); at != std::string::npos; at = m.find(*p, at + 1)) m.replace(at, p->size(), shown(*p));
    }
    std::cerr << "nodemeta" << (cmd.empty() ? "" : " " + cmd) << ": error: " << shown_message(m) << "\n";
    print_causes(e);
    return 1;
  }
}
