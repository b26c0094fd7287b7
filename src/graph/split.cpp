// A large document split between two elements of its "nodes" array, the parts parsed in
// parallel, each by its own simdjson parser (simdjson 3.0 parses one document per parser on
// one thread). See split.h for the contract and docs/design.md ("Graph files") for why parts
// that parse and check out are exactly the document.
//
// A boundary is a '}' then ',' then '{' then "id", ':', a number, ',' and "name" (whitespace
// allowed between them): the end of one node and the start of the next as the writer and
// torch.fx exports put them, the id first. A cut takes two in a row whose ids follow each
// other. It is still only a guess (the same bytes may sit inside a string, or in a list of
// objects deeper down); the parts' parse proves it, or the caller parses the document whole.
//
// The large parts are parsed in place, with no copy of the text: each borrows a byte or two
// beside it to become a document of its own, and between two large parts a "bridge" (the one
// node between two consecutive boundaries) is copied, so that no byte is lent to two parts:
//   first part:   text[0, b] + "]}"           the two bytes after its last '}' lent
//   middle part:  "[" + text[s, b] + "]"      the commas before and after it lent
//   last part:    "[" + text[s, L) + " "      the comma before it and the document's closing
//                                              '}' (at L) lent, when "nodes" is the last key;
//                 "{\"nodes\":[" + text[s, end)  a copy otherwise, or where the in-place
//                                              parse failed (keys after "nodes")
//   bridge:       "[" + text[s, b] + "]"      a copy
// Every lent byte is written before the parallel parse starts and put back after it, and a
// copy never reads one (but the last part's retry, which reads its own closing brace and
// writes the '}' into its copy), so no task reads a byte that another writes (a parser reads up to
// SIMDJSON_PADDING bytes past its part's end, into its neighbour's text).
#include "split.h"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <exception>
#include <new>
#include <optional>
#include <string_view>
#include <utility>

namespace nodemeta::graph::io {
namespace {

using simdjson::dom::element;
using simdjson::dom::element_type;

bool is_space(char c) noexcept { return c == ' ' || c == '\n' || c == '\r' || c == '\t'; }

struct Boundary {
  std::size_t end;    // the '}' that ends the node before
  std::size_t comma;  // the ',' between them
  std::size_t start;  // the '{' that starts the node after
  std::uint64_t id;   // the node after's "id"
};

// The first boundary whose '}' lies in [from, limit): '}' ',' '{' "id" ':' digits ',' "name",
// whitespace allowed between them (a node as the writer and torch.fx exports put it).
std::optional<Boundary> find_boundary(std::string_view t, std::size_t from, std::size_t limit) {
  const auto skip = [&](std::size_t j) {
    while (j < t.size() && is_space(t[j])) ++j;
    return j;
  };
  const auto is = [&](std::size_t j, std::string_view what) { return t.substr(j, what.size()) == what; };
  while (from < limit) {
    const void* p = std::memchr(t.data() + from, '}', limit - from);
    if (p == nullptr) return std::nullopt;
    const std::size_t b = static_cast<std::size_t>(static_cast<const char*>(p) - t.data());
    from = b + 1;
    const std::size_t c = skip(b + 1);
    if (!is(c, ",")) continue;
    const std::size_t s = skip(c + 1);
    if (!is(s, "{")) continue;
    const std::size_t k = skip(s + 1);
    if (!is(k, "\"id\"")) continue;
    std::size_t d = skip(k + 4);
    if (!is(d, ":")) continue;
    d = skip(d + 1);
    std::uint64_t id = 0;
    std::size_t digits = 0;
    for (; d < t.size() && t[d] >= '0' && t[d] <= '9' && digits < 18; ++d, ++digits) id = id * 10 + (t[d] - '0');
    if (digits == 0 || (d < t.size() && t[d] >= '0' && t[d] <= '9')) continue;
    const std::size_t n = skip(d);
    if (!is(n, ",") || !is(skip(n + 1), "\"name\"")) continue;
    return Boundary{b, c, s, id};
  }
  return std::nullopt;
}

// How many keys "nodes" the object has, and whether it is the first / last one with an array.
struct NodesKeys {
  std::size_t count = 0;
  bool first = false;  // the first key is "nodes" with an array
  bool last = false;   // the last key is "nodes" with an array
  simdjson::dom::array first_nodes, last_nodes;
};

NodesKeys nodes_keys(simdjson::dom::object o) {
  NodesKeys r;
  bool at_first = true;
  for (auto field : o) {
    const bool is_nodes = field.key == "nodes";
    const bool is_array = field.value.type() == element_type::ARRAY;
    if (is_nodes) ++r.count;
    if (at_first) {
      r.first = is_nodes && is_array;
      if (r.first) r.first_nodes = array_of(field.value);
      at_first = false;
    }
    r.last = is_nodes && is_array;
    if (r.last) r.last_nodes = array_of(field.value);
  }
  return r;
}

// A byte lent to a part parsed in place, and what it was.
struct Lent {
  std::size_t at;
  char was;
};

// How one part becomes a document of its own (see the top of this file).
struct Plan {
  enum class Kind { kFirst, kMiddle, kLast, kBridge, kLastCopy } kind;
  std::size_t begin;  // in place: where its document starts; a copy: the '{' it starts with
  std::size_t end;    // in place: one past its document; a copy: one past its text
};

// The position of the document's closing '}' when "nodes" may be its last key (the text
// ends in "]" and "}", whitespace allowed), else npos.
std::size_t closing_brace(std::string_view t) {
  std::size_t j = t.size();
  while (j > 0 && is_space(t[j - 1])) --j;
  if (j == 0 || t[j - 1] != '}') return std::string_view::npos;
  const std::size_t brace = j - 1;
  while (j > 1 && is_space(t[j - 2])) --j;
  return j > 1 && t[j - 2] == ']' ? brace : std::string_view::npos;
}

}  // namespace

namespace {

std::vector<std::unique_ptr<DocPart>> split_and_parse(Input& input, const LoadOptions& load) {
  const std::size_t size = input.size();
  if (load.parallel_min_bytes == 0 || size < load.parallel_min_bytes) return {};
  const std::size_t threads = load_threads();
  const std::size_t min_part = std::max<std::size_t>(1, load.parallel_min_bytes / 2);
  const std::size_t wanted = std::min(threads, size / min_part);
  if (wanted < 2) return {};
  const std::string_view text(input.data(), size);

  // Near each k * size / wanted: the boundary that ends a large part, and the next one, which
  // ends the bridge after it (fewer parts where a window has no two boundaries).
  std::vector<std::pair<Boundary, Boundary>> cuts;
  for (std::size_t k = 1; k < wanted; ++k) {
    const std::size_t from = std::max(k * (size / wanted), cuts.empty() ? 0 : cuts.back().second.start);
    const std::size_t limit = (k + 1) * (size / wanted);
    if (from >= limit) continue;
    // Two boundaries in a row whose ids follow each other: the node between them is one
    // node of the array, not text that looks like one (which the parts' checks would refuse,
    // and the document would be parsed twice).
    auto b = find_boundary(text, from, limit);
    while (b) {
      const auto next = find_boundary(text, b->start + 1, limit);
      if (next && next->id == b->id + 1) {
        cuts.emplace_back(*b, *next);
        break;
      }
      b = next;
    }
  }
  if (cuts.empty()) return {};
  using Kind = Plan::Kind;
  std::vector<Plan> plan;
  plan.reserve(2 * cuts.size() + 1);
  plan.push_back({Kind::kFirst, 0, cuts[0].first.end + 3});
  for (std::size_t j = 0; j < cuts.size(); ++j) {
    const auto& [b, next] = cuts[j];
    plan.push_back({Kind::kBridge, b.start, next.end + 1});
    if (j + 1 < cuts.size()) plan.push_back({Kind::kMiddle, next.comma, cuts[j + 1].first.comma + 1});
  }
  const std::size_t brace = closing_brace(text);
  const std::size_t last_start = cuts.back().second.start;
  if (brace != std::string_view::npos && brace > last_start) {
    plan.push_back({Kind::kLast, cuts.back().second.comma, brace + 1});
  } else {
    plan.push_back({Kind::kLastCopy, last_start, size});
  }

  std::vector<std::unique_ptr<DocPart>> parts;
  std::vector<Lent> lent;
  char* data = input.mutable_data();
  const auto put_back = [&] {
    for (const Lent& l : lent) data[l.at] = l.was;
    lent.clear();
  };
  const auto lend = [&](std::size_t at, char c) {
    lent.push_back(Lent{at, data[at]});
    data[at] = c;
  };
  try {
    parts.reserve(plan.size());
    lent.reserve(2 * plan.size());
    for (const Plan& p : plan) {
      parts.push_back(std::make_unique<DocPart>());
      switch (p.kind) {
        case Kind::kFirst: lend(p.end - 2, ']'); lend(p.end - 1, '}'); break;
        case Kind::kMiddle: lend(p.begin, '['); lend(p.end - 1, ']'); break;
        case Kind::kLast: lend(p.begin, '['); lend(p.end - 1, ' '); break;
        case Kind::kBridge:
        case Kind::kLastCopy: break;
      }
    }
  } catch (...) {
    put_back();
    return {};
  }

  // Parses part `p` as `kind` into `part`, and checks it (docs/design.md, "Graph files").
  const auto parse_as = [&](DocPart& part, const Plan& p, Kind kind) {
    const char* begin = data + p.begin;
    std::size_t len = p.end - p.begin;
    if (kind == Kind::kBridge || kind == Kind::kLastCopy) {
      // The '{' at p.begin is written, not read: the part before may have borrowed it.
      part.copy.clear();
      if (kind == Kind::kBridge) {
        part.copy.append("[{", 2);
        part.copy.append(data + p.begin + 1, len - 1);
        part.copy.append("]", 1);
      } else {
        part.copy.append("{\"nodes\":[{", 11);
        part.copy.append(data + p.begin + 1, len - 1);
        // Its text runs to the document's end, over the byte a failed in-place last part
        // borrowed (lent bytes do not change while parts are parsed): the copy has it back.
        if (plan.back().kind == Kind::kLast) {
          part.copy.mutable_data()[11 + (brace - (p.begin + 1))] = '}';
        }
      }
      part.copy.finish();
      begin = part.copy.data();
      len = part.copy.size();
    }
    // Where the nodes are one level higher than in the document (every part but the first and
    // a copied last one), one less level is allowed, so that simdjson's depth check is the
    // document's.
    const bool object = kind == Kind::kFirst || kind == Kind::kLastCopy;
    const std::size_t depth = object ? load.max_depth + 1 : load.max_depth;
    if (part.parser.allocate(std::max<std::size_t>(len, 64), depth) != simdjson::SUCCESS ||
        part.parser.parse(reinterpret_cast<const std::uint8_t*>(begin), len, false).get(part.root) !=
            simdjson::SUCCESS) {
      return false;
    }
    part.copy.release();  // the parser holds the strings
    // The checks that make the parts exactly the document.
    if (!object) {
      if (part.root.type() != element_type::ARRAY) return false;
      part.nodes = array_of(part.root);
    } else {
      if (part.root.type() != element_type::OBJECT) return false;
      const NodesKeys n = nodes_keys(object_of(part.root));
      if (n.count != 1 || !(kind == Kind::kFirst ? n.last : n.first)) return false;
      part.nodes = kind == Kind::kFirst ? n.last_nodes : n.first_nodes;
    }
    part.count = length_of(part.nodes);
    return true;
  };
  std::atomic<bool> failed{false};
  const auto parse_part = [&](std::size_t k) {
    const Plan& p = plan[k];
    DocPart& part = *parts[k];
    return parse_as(part, p, p.kind) ||
           // "nodes" was not the last key after all: the last part copied instead.
           (p.kind == Kind::kLast && parse_as(part, Plan{Kind::kLastCopy, last_start, size}, Kind::kLastCopy));
  };
  std::atomic<std::size_t> parsed{0};
  try {
    for_each_part(plan.size(), [&](std::size_t k) {
      if (failed.load(std::memory_order_relaxed)) return;
      bool ok = false;
      try {
        ok = parse_part(k);
      } catch (...) {  // not enough memory for a copy
      }
      if (!ok) failed.store(true, std::memory_order_relaxed);
      parsed.fetch_add(ok ? 1 : 0, std::memory_order_relaxed);  // a cancelled part is not counted
    });
  } catch (...) {  // oneTBB could not run it (out of memory)
    failed = true;
  }
  put_back();
  if (failed.load() || parsed.load() != plan.size()) return {};
  input.release();
  return parts;
}

}  // namespace

std::vector<std::unique_ptr<DocPart>> parse_in_parts(Input& input, const LoadOptions& load) {
  try {
    return split_and_parse(input, load);
  } catch (const std::bad_alloc&) {  // planning the parts (the text is as it was)
    return {};
  }
}

}  // namespace nodemeta::graph::io
