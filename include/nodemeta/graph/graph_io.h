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
// a missing or unreadable file, truncated or corrupt gzip, invalid JSON, wrong schema
// (missing fields, wrong types, unknown fields), an input that is not an earlier node,
// duplicate node names, and a key given twice for one node with different values (for a
// protected key: "protected key 'val' given twice with different values"). A repeated key
// with an identical value is accepted once. Loading is all or nothing: on error no graph
// (and no store, no node) is left behind.
#ifndef NODEMETA_GRAPH_GRAPH_IO_H_
#define NODEMETA_GRAPH_GRAPH_IO_H_

#include <string>
#include <string_view>

#include "nodemeta/graph/graph.h"

namespace nodemeta::graph {

// Thread safety: loading and parsing build independent graphs and may run concurrently.
// to_json/save_graph only read the graph: race-free alongside metadata writers, each node
// exported as its own atomic snapshot. Every failure is a GraphError naming the file.

// Reads a graph file; gzip is detected by its magic bytes, not by the file name.
Graph load_graph(const std::string& path, StoreOptions options = {});
// Parses graph JSON held in memory; `source` names it in error messages.
Graph parse_graph(std::string_view json, std::string_view source = "<memory>",
                  StoreOptions options = {});

// The graph as compact JSON. Meta keys come in schema order (stack_trace, nn_module_stack,
// tensor_meta, val, debug_handle, is_wrapped, type), then the others sorted by name.
std::string to_json(const Graph& graph);
// Writes to_json(graph) to `path`, gzip-compressed when the path ends in ".gz". Throws
// GraphError naming the path if it cannot be written.
void save_graph(const Graph& graph, const std::string& path);

// Reads a whole file, inflating it if it starts with the gzip magic. Throws GraphError.
std::string read_file_text(const std::string& path);

// The JSON text of one Value (compact), e.g. for --json output. Strings are UTF-8.
std::string value_to_json(const Value& value);

}  // namespace nodemeta::graph

#endif  // NODEMETA_GRAPH_GRAPH_IO_H_
