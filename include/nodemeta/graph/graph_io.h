// nodemeta/graph/graph_io.h: reading and writing graph files (the JSON schema of
// shared/data/graphs/README.md), plain or gzip-compressed.
//
// JSON maps to Value as: null -> none, true/false -> bool, integer -> std::int64_t,
// number with a fraction or exponent -> double, string -> std::string, array -> List,
// object -> Dict (insertion order kept). Export writes the same mapping back, so
// export-then-import gives a graph equal to the original (first_difference() == "").
//
// Errors: every failure throws GraphError with one line naming the file and the place:
// a JSON path such as nodes[12].meta.val, plus the node's name once it is known. Covered:
// inputs over the size limit or nested past the depth limit (naming the limit and how to
// raise it),
// a missing or unreadable file, truncated or corrupt gzip, invalid JSON, wrong schema
// (missing fields, wrong types, unknown fields), an input that is not an earlier node or
// is given twice,
// duplicate node names, and a key given twice for one node with different values (for a
// protected key: "protected key 'val' given twice with different values"). A repeated key
// with an identical value is accepted once. Loading is all or nothing: on error no graph
// (and no store, no node) is left behind.
//
// torch.fx's invariants hold for every loaded graph: exactly one output node, the last (so
// no node reads it: inputs are earlier nodes), and on every node the five standard keys of
// the schema, stack_trace, nn_module_stack, tensor_meta, val and debug_handle (null where
// torch produced nothing); a graph without nodes, an output node before the last, a last
// node that is not an output, or a missing standard key is refused, naming the node. The
// graph attribute "training" (the mode the graph was traced in, which the passes read) is
// true, false or null. Graph::add_node does not check these: they are the file format's.
#ifndef NODEMETA_GRAPH_GRAPH_IO_H_
#define NODEMETA_GRAPH_GRAPH_IO_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

#include "nodemeta/export.h"
#include "nodemeta/graph/graph.h"

namespace nodemeta::graph {

// Limits and progress of one load (load_graph, parse_graph). Memory is bounded by the
// input's size limit, not by what the input contains:
// - max_input_bytes: the most bytes the JSON text may have, after inflating a gzip file.
//   A plain file larger than it is refused before it is read; a gzip stream is refused as
//   soon as its inflated size passes it (a small "bomb" costs at most the limit in memory).
//   Default 1 GiB; at most kMaxInputBytesCeiling (the JSON parser's own limit, 4 GiB).
// - max_depth: the most arrays/objects open at once anywhere in the document, counting the
//   top-level object as 1 (a node's metadata value sits at depth 5, so the default leaves
//   its values 251 levels). Checked while parsing; every later step that walks a loaded
//   value (building, comparing, saving, destroying) recurses at most this deep.
// - progress: if set, called on the loading thread with the phase and how far it is
//   (read: bytes of the file read; parse: 0 then 1 of 1; build: nodes built of all).
//   An exception it throws aborts the load (nothing is left half-built).
// - parallel_min_bytes: JSON text at least this large is split between nodes into parts
//   that are parsed and built in parallel, as many as the calling thread's task arena has
//   threads (tbb::this_task_arena::max_concurrency()) within tbb::global_control's
//   max_allowed_parallelism (by default the process's CPUs), each at least half this size;
//   0 never splits. The graph is the
//   same at every thread count (what fails is refused with the same message too); only the
//   store's node ids, which follow creation order, are not the nodes' order. While a
//   document is loaded in parts, progress reports the build once, at the end, and is still
//   called on the loading thread only.
struct LoadProgress {
  enum class Phase { kRead, kParse, kBuild };
  Phase phase;
  std::uint64_t done;
  std::uint64_t total;  // 0 when unknown (a gzip stream's inflated size)
};

struct LoadOptions {
  static constexpr std::uint64_t kDefaultMaxInputBytes = std::uint64_t{1} << 30;
  static constexpr std::uint64_t kMaxInputBytesCeiling = 0xFFFFFFFFull - 4096;
  static constexpr std::size_t kDefaultMaxDepth = 256;
  static constexpr std::size_t kMaxDepthCeiling = 1024;

  std::uint64_t max_input_bytes = kDefaultMaxInputBytes;
  std::size_t max_depth = kDefaultMaxDepth;
  std::function<void(const LoadProgress&)> progress{};
  std::size_t parallel_min_bytes = std::size_t{1} << 20;
};

// Thread safety: loading and parsing build independent graphs and may run concurrently.
// to_json/save_graph only read the graph: race-free alongside metadata writers, each node
// exported as its own atomic snapshot. Every failure is a GraphError naming the file.
//
// Memory: identical strings, lists and dicts in one file are loaded once and shared by every
// node that holds them (Values are immutable, so sharing is invisible to readers), which is
// what makes repeated stack traces, module stacks, dtype names and shapes cheap.
//
// Strings are UTF-8. Load refuses invalid UTF-8 (and lone surrogate escapes) as invalid
// JSON; save refuses a string that is not valid UTF-8, naming the node and key;
// value_to_json (for display) replaces invalid sequences with U+FFFD.
// Numbers: integer literals outside int64 are refused on load (never turned into doubles);
// NaN and infinities, which JSON cannot write, are refused on save.

// Reads a graph file; gzip is detected by its magic bytes, not by the file name. Refuses a
// file whose JSON text passes load.max_input_bytes or nests deeper than load.max_depth.
NODEMETA_GRAPH_API Graph load_graph(const std::string& path, StoreOptions options = {},
                                    const LoadOptions& load = {});
// Parses graph JSON held in memory; `source` names it in error messages.
NODEMETA_GRAPH_API Graph parse_graph(std::string_view json, std::string_view source = "<memory>",
                  StoreOptions options = {}, const LoadOptions& load = {});

// The graph as compact JSON. Meta keys come in schema order (stack_trace, nn_module_stack,
// tensor_meta, val, debug_handle, is_wrapped, type), then the others sorted by name.
NODEMETA_GRAPH_API std::string to_json(const Graph& graph);
// Writes to_json(graph) to `path`, gzip-compressed when the path ends in ".gz" (in any
// case: ".GZ" and ".Gz" too). Throws
// GraphError naming the path if it cannot be written. The file is opened only after the
// whole text was made, so a graph that cannot be saved (NaN, invalid UTF-8, a user object,
// nesting past kMaxDepthCeiling) leaves it untouched; the path is written through (symlinks
// and devices such as /dev/stdout work), so an I/O error can leave it partly written.
NODEMETA_GRAPH_API void save_graph(const Graph& graph, const std::string& path);

// Reads a whole file, inflating it if it starts with the gzip magic, within
// load.max_input_bytes. Throws GraphError.
NODEMETA_GRAPH_API std::string read_file_text(const std::string& path,
                                              const LoadOptions& load = {});

// The JSON text of one Value (compact), e.g. for --json output: invalid UTF-8 is replaced
// with U+FFFD and NaN/infinities are written as null (display, not a round trip).
NODEMETA_GRAPH_API std::string value_to_json(const Value& value);

namespace detail {
// For benchmarks: what load_graph does before it builds anything (read, inflate, parse with
// the same parser and limits), then a walk over every JSON value. Returns how many values
// the document holds. Throws GraphError as load_graph does for unreadable or invalid input.
NODEMETA_GRAPH_API std::size_t parse_only(const std::string& path, const LoadOptions& load = {});
}  // namespace detail

}  // namespace nodemeta::graph

#endif  // NODEMETA_GRAPH_GRAPH_IO_H_
