// Graph files: the public entry points of graph_io.h. Reading is input.cpp and inflate.cpp
// (bounded input), builder.cpp (simdjson DOM -> Graph, values shared by content through
// interner.h) and diagnosis.cpp (messages, refused documents); writing is writer.cpp.
// See graph_io.h for the contract and docs/design.md ("Graph files").
#include "nodemeta/graph/graph_io.h"

#include <new>
#include <string>
#include <utility>

#include "input.h"
#include "io_internal.h"
#include "split.h"

namespace nodemeta::graph {

using io::bytes_text;
using io::check_options;
using io::limit_advice;
using io::parse_document;
using io::parse_input;
using io::read_input;
using io::fail;
using io::Input;
using io::array_of;
using io::object_of;
using io::string_of;
using simdjson::dom::element;
using simdjson::dom::element_type;

namespace {
// Running out of memory while loading is a GraphError naming the file, like any other
// failure (nothing is left half-built either way).
template <class F>
auto memory_guarded(std::string_view source, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const std::bad_alloc&) {
    fail(source, "not enough memory to load it");
  }
}
}  // namespace

std::string read_file_text(const std::string& path, const LoadOptions& load) {
  check_options(path, load);
  return memory_guarded(path, [&] {
    Input input;
    read_input(path, load, input);
    return std::string(input.data(), input.size());
  });
}

Graph parse_graph(std::string_view json, std::string_view source, StoreOptions options,
                  const LoadOptions& load) {
  check_options(source, load);
  if (json.size() > load.max_input_bytes) {
    fail(source, "is larger than " + bytes_text(load.max_input_bytes) + ", the input limit (" + limit_advice() + ")");
  }
  return memory_guarded(source, [&] {
    Input input;
    input.append(json.data(), json.size());
    input.finish();
    return parse_input(input, source, std::move(options), load);
  });
}

Graph load_graph(const std::string& path, StoreOptions options, const LoadOptions& load) {
  check_options(path, load);
  return memory_guarded(path, [&] {
    Input input;
    read_input(path, load, input);
    return parse_input(input, path, std::move(options), load);
  });
}

namespace detail {
namespace {
std::size_t walk(element e) {
  std::size_t n = 1;
  switch (e.type()) {
    case element_type::ARRAY:
      for (element c : array_of(e)) n += walk(c);
      break;
    case element_type::OBJECT:
      for (auto field : object_of(e)) n += walk(field.value) + (field.key.size() != 0 ? 0 : 0);
      break;
    case element_type::STRING: {
      const std::string_view s = string_of(e);
      n += s.empty() ? 0 : static_cast<unsigned char>(s[0]) >> 8;  // read it, count nothing
      break;
    }
    default: break;
  }
  return n;
}
}  // namespace

std::size_t parse_only(const std::string& path, const LoadOptions& load) {
  check_options(path, load);
  Input input;
  read_input(path, load, input);
  // The same parse as load_graph's: in parts, in parallel, when it splits.
  if (auto parts = io::parse_in_parts(input, load); !parts.empty()) {
    // The document's values: every part's but the array each later part is wrapped in, and
    // a copied last part's own object.
    std::size_t n = walk(parts.front()->root);
    for (std::size_t k = 1; k < parts.size(); ++k) n += walk(parts[k]->root) - 1;
    if (parts.back()->root.type() == simdjson::dom::element_type::OBJECT) n -= 1;
    return n;
  }
  simdjson::dom::parser parser;
  return walk(parse_document(parser, input, path, load));
}
}  // namespace detail

}  // namespace nodemeta::graph
