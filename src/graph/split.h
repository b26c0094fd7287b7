// src/graph/split.h: a large document split at node boundaries, its parts parsed in
// parallel. Private to nodemeta_graph; used by builder.cpp and graph_io.cpp (the floor).
#ifndef NODEMETA_SRC_GRAPH_SPLIT_H_
#define NODEMETA_SRC_GRAPH_SPLIT_H_

#include <cstddef>
#include <memory>
#include <vector>

#include "input.h"
#include "io_internal.h"

namespace nodemeta::graph::io {

// One part of a document split between two elements of its "nodes" array, parsed by its own
// parser. Part 0 is the document up to a node boundary, the "nodes" array closed: an object
// whose last key is "nodes". A middle part is an array of nodes. The last part is an object
// whose first key is "nodes", followed by the document's other top-level keys after it.
struct DocPart {
  simdjson::dom::parser parser;
  simdjson::dom::element root;
  simdjson::dom::array nodes;  // this part's nodes, in document order
  std::size_t count = 0;       // nodes.size() (counted when simdjson's count saturates)
  Input copy;                  // the part's own text, for the parts not parsed in place
};

// Splits a document of at least load.parallel_min_bytes at node boundaries into as many parts
// as the calling thread's task arena has threads (each at least half that size), parses them
// in parallel (isolated, so the calling thread runs nothing else meanwhile) and checks that
// together they are exactly the document, then frees `input`. Returns no parts, `input`
// unchanged, when the document is small, the arena has one thread, no boundary is found, or
// anything fails or does not check out (invalid JSON, a boundary that was inside a string or
// a nested object, "nodes" given twice, not enough memory): the caller then parses it whole,
// which gives the error message of a failure. docs/design.md ("Graph files") gives the argument.
std::vector<std::unique_ptr<DocPart>> parse_in_parts(Input& input, const LoadOptions& load);

}  // namespace nodemeta::graph::io

#endif  // NODEMETA_SRC_GRAPH_SPLIT_H_
