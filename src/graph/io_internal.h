// src/graph/io_internal.h: what the graph loader's and writer's files share, private to
// nodemeta_graph (never installed). The files, one concern each:
//   input.cpp      reading a file within the input limit (Input, read_input), the options' checks
//   inflate.cpp    gzip streams, bounded by the input limit as they inflate
//   diagnosis.cpp  messages (one line, naming file and place) and why simdjson refused a document
//   interner.h     values shared by content (hash-consing)
//   split.h/.cpp   a large document split at node boundaries and parsed in parallel
//   builder.cpp    the parsed document -> Graph, checking the schema
//   writer.cpp     Graph -> JSON text, and saving it (plain or gzip)
//   graph_io.cpp   the public entry points of graph_io.h
#ifndef NODEMETA_SRC_GRAPH_IO_INTERNAL_H_
#define NODEMETA_SRC_GRAPH_IO_INTERNAL_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "nodemeta/graph/graph_io.h"
// GCC 12 warns inside simdjson's inline functions (false positives at -O2).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdangling-pointer"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <simdjson.h>
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

namespace nodemeta::graph::io {

class Input;

// ---- messages (diagnosis.cpp) ------------------------------------------------------------

// Every GraphError is one line: control characters in the file name or the message (a key,
// a node name, a parser's excerpt of the input) are escaped.
[[noreturn]] void fail(std::string_view source, std::string_view message);
// A key or name as messages show it: control characters escaped, so a message stays one
// line and an embedded NUL cannot cut it short.
std::string printable(std::string_view s);
// The JSON path of the place being read, rendered for messages. Long paths (deep nesting)
// keep their first and last steps.
std::string render_path(const std::vector<std::string>& steps);
std::string depth_message(std::size_t max_depth);
std::string limit_advice();
// "1 byte", "2 bytes".
std::string bytes_text(std::uint64_t n);
// Why simdjson refused `input` (re-read by nlohmann's SAX parser for the path); never returns.
[[noreturn]] void fail_parse(std::string_view source, const Input& input, std::size_t max_depth,
                             simdjson::error_code code);

// ---- input (input.cpp, inflate.cpp) ------------------------------------------------------

void check_options(std::string_view source, const LoadOptions& load);
[[noreturn]] void fail_too_large(const std::string& path, std::uint64_t limit, bool inflated);

class ProgressReporter {
 public:
  explicit ProgressReporter(const LoadOptions& load) : fn_(load.progress) {}
  void operator()(LoadProgress::Phase phase, std::uint64_t done, std::uint64_t total) const {
    if (fn_) fn_(LoadProgress{phase, done, total});
  }
  explicit operator bool() const noexcept { return static_cast<bool>(fn_); }

 private:
  const std::function<void(const LoadProgress&)>& fn_;
};

constexpr std::size_t kChunk = std::size_t{1} << 18;  // 256 KiB reads and inflate steps

// Reads up to n bytes; 0 at end of file. Retries EINTR; throws on an I/O error.
std::size_t read_some(const std::string& path, int fd, char* p, std::size_t n);
// Reads `path` whole (inflating gzip) into `out`, within load.max_input_bytes.
void read_input(const std::string& path, const LoadOptions& load, Input& out);
// The threads a load may use: the calling thread's task arena's, within a
// tbb::global_control's max_allowed_parallelism (input.cpp).
std::size_t load_threads() noexcept;
// Runs body(k) for every k in [0, n), one task each, on the calling thread's task arena, and
// returns when all have run: isolated (the calling thread runs nothing else meanwhile) and
// in its own task_group_context, so that a cancellation of the caller's task group (another
// iteration of an enclosing parallel_for throwing) cannot skip any. An exception, body's
// or oneTBB's own (out of memory), propagates once the tasks have stopped (input.cpp).
void for_each_part(std::size_t n, const std::function<void(std::size_t)>& body);
// The fast path for a regular gzip file of one member whose trailer gives its inflated size
// `isize` (<= load.max_input_bytes, at least 8x the file's size): the compressed file read whole and inflated by
// libdeflate into exactly `isize` bytes of `out` (empty on entry). Returns false, having
// written at most `isize` bytes, for anything else (a lying size field, several members,
// zero padding, corrupt or truncated data): then the caller resets `out` and streams the
// file through zlib (inflate_into), which enforces the limit and words every error.
bool inflate_whole(const std::string& path, int fd, std::uint64_t file_size, std::uint64_t isize,
                   const LoadOptions& load, Input& out);
// Inflates the gzip stream on `fd` (whose first `first_size` bytes were read into `first`)
// into `out`, refusing it as soon as it passes load.max_input_bytes.
void inflate_into(const std::string& path, int fd, const char* first, std::size_t first_size,
                  std::uint64_t file_size, const LoadOptions& load, Input& out);

// ---- the document -> Graph (builder.cpp) -------------------------------------------------

// Parses `input` with `parser` (what load_graph and the parse-only floor share), then frees
// the text: the document's strings live in the parser.
simdjson::dom::element parse_document(simdjson::dom::parser& parser, Input& input,
                                      std::string_view source, const LoadOptions& load);
Graph parse_input(Input& input, std::string_view source, StoreOptions options, const LoadOptions& load);

// Typed views of an element whose type() was checked (simdjson_result temporaries upset
// GCC 12's dangling-pointer analysis).
inline simdjson::dom::array array_of(simdjson::dom::element e) noexcept { return simdjson::dom::array(e); }
inline simdjson::dom::object object_of(simdjson::dom::element e) noexcept { return simdjson::dom::object(e); }
inline std::string_view string_of(simdjson::dom::element e) noexcept { return std::string_view(e); }
// An array's length (simdjson's size() saturates at 0xFFFFFF: then they are counted).
inline std::size_t length_of(simdjson::dom::array a) noexcept {
  std::size_t n = a.size();
  if (n >= 0xFFFFFF) {
    n = 0;
    for ([[maybe_unused]] simdjson::dom::element e : a) ++n;
  }
  return n;
}

// ---- the writer (writer.cpp) -------------------------------------------------------------

// Writes `text` to `path`, gzip-compressed when asked.
void write_file(const std::string& path, std::string_view text, bool gz);

}  // namespace nodemeta::graph::io

#endif  // NODEMETA_SRC_GRAPH_IO_INTERNAL_H_
