// The parsed document -> Graph: the schema's checks (every refusal naming the place and the
// node), values shared through the Interner, nodes added in order.
#include <algorithm>
#include <array>
#include <atomic>
#include <iterator>
#include <optional>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "input.h"
#include "interner.h"
#include "io_internal.h"
#include "split.h"

namespace nodemeta::graph::io {
namespace {

using simdjson::dom::element;
using simdjson::dom::element_type;

std::string kind_word(element e) {
  switch (e.type()) {
    case element_type::ARRAY: return "an array";
    case element_type::OBJECT: return "an object";
    case element_type::INT64:
    case element_type::UINT64: return "an integer";
    case element_type::DOUBLE: return "a float";
    case element_type::STRING: return "a string";
    case element_type::BOOL: return "a bool";
    case element_type::NULL_VALUE: return "null";
  }
  return "?";
}

std::string kind_word(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::kNone: return "null";
    case Value::Kind::kBool: return "a bool";
    case Value::Kind::kInt: return "an integer";
    case Value::Kind::kDouble: return "a float";
    case Value::Kind::kString: return "a string";
    case Value::Kind::kList: return "an array";
    case Value::Kind::kDict: return "an object";
    case Value::Kind::kObject: return "a " + v.type_name();
  }
  return "?";
}

// A step of the JSON path below a place the schema reader names; rendered only on error.
struct Step {
  const Step* parent;
  std::string_view key;  // object member, or empty for an array element
  std::size_t index;
  bool is_index;
};

// Finds repeated keys in one object in linear time: a linear scan for small objects, a hash
// set for large ones.
class KeyIndex {
 public:
  // Returns the position of an earlier `key`, or npos; remembers `key` at `pos`.
  template <class KeyOf>
  std::size_t seen(std::string_view key, std::size_t pos, KeyOf&& key_of) {
    if (pos < kLinear) {
      for (std::size_t i = 0; i < pos; ++i) {
        if (key_of(i) == key) return i;
      }
      if (pos + 1 == kLinear) {  // key_of(pos) is not stored yet: `key` is it
        map_ = std::make_unique<std::unordered_map<std::string_view, std::size_t>>();
        for (std::size_t i = 0; i < pos; ++i) map_->emplace(key_of(i), i);
        map_->emplace(key, pos);
      }
      return npos;
    }
    auto [it, added] = map_->emplace(key, pos);
    return added ? npos : it->second;
  }
  static constexpr std::size_t npos = static_cast<std::size_t>(-1);

 private:
  static constexpr std::size_t kLinear = 16;
  std::unique_ptr<std::unordered_map<std::string_view, std::size_t>> map_;  // past kLinear keys
};

class GraphBuilder {
 public:
  GraphBuilder(std::string_view source, const StoreOptions& options, const LoadOptions& load)
      : source_(source), load_(load) {
    for (Key k : options.protected_keys) protected_.emplace_back(k.name());
  }

  Graph build(element root, StoreOptions options) {
    if (root.type() != element_type::OBJECT) fail_at("(top level)", "expected an object, got " + kind_word(root));
    simdjson::dom::object top = object_of(root);
    element nodes_el;
    bool have_nodes = false;
    Attrs attrs;
    for (auto field : top) {
      if (field.key == "nodes") {
        if (have_nodes) {  // a repeat must be identical; the first is kept
          const Step step{nullptr, field.key, 0, false};
          if (!same_json(nodes_el, field.value, &step)) {
            fail_at("nodes", "key 'nodes' given twice with different values");
          }
          continue;
        }
        nodes_el = field.value;
        have_nodes = true;
        continue;
      }
      add_attr(attrs, field.key, field.value);
    }
    if (!have_nodes) fail_at("(top level)", "missing field 'nodes'");
    if (nodes_el.type() != element_type::ARRAY) fail_at("nodes", "expected an array, got " + kind_word(nodes_el));
    check_attrs(attrs);
    simdjson::dom::array nodes = array_of(nodes_el);
    const std::size_t count = length_of(nodes);
    // A torch.fx graph ends with exactly one output node, which nothing reads.
    if (count == 0) fail_at("nodes", "no nodes (a graph has at least its output node, last)");
    count_ = count;
    options.expected_nodes = count;
    Graph graph(std::move(options));
    graph.attrs() = std::move(attrs.dict);
    const ProgressReporter progress(load_);
    std::size_t i = 0;
    for (element n : nodes) {
      add_node(n, i, &graph, GraphSink{graph});
      ++i;
      if (progress && (i % 4096 == 0 || i == count)) progress(LoadProgress::Phase::kBuild, i, count);
    }
    return graph;
  }

  // The same graph from a document parsed in parts (split.h), its nodes built in parallel,
  // one builder per part (their values shared through one SharedInterner, as one interner
  // shares them in build()), their store nodes created concurrently. If any part
  // fails, or two parts hold one name, the parts are built again in order on this thread, so
  // that the first error in document order is reported, worded as build() words it.
  Graph build_parts(std::vector<std::unique_ptr<DocPart>>& parts, StoreOptions options) {
    // The top-level keys before "nodes" (part 0's) and after it (the last part's), in order.
    Attrs attrs;
    for (auto field : object_of(parts.front()->root)) {
      if (field.key != "nodes") add_attr(attrs, field.key, field.value);
    }
    bool first = true;  // the last part is an object (the keys after "nodes") only if it is a copy
    if (parts.back()->root.type() == element_type::OBJECT) {
      for (auto field : object_of(parts.back()->root)) {
        if (!std::exchange(first, false)) add_attr(attrs, field.key, field.value);
      }
    }
    check_attrs(attrs);
    std::vector<std::size_t> offset(parts.size());
    std::size_t count = 0;
    for (std::size_t k = 0; k < parts.size(); ++k) {
      offset[k] = count;
      count += parts[k]->count;
    }
    count_ = count;  // >= 1: part 0 ends with a node
    options.expected_nodes = count;
    const StoreOptions again = options;
    std::optional<Graph> graph(std::in_place, std::move(options));
    graph->attrs() = attrs.dict;

    std::vector<std::vector<Node>> built(parts.size());
    std::atomic<bool> failed{false};
    MetadataStore& store = graph->store();
    try {
      SharedInterner shared;
      for_each_part(parts.size(), [&](std::size_t k) {
        try {
          GraphBuilder part(*this, shared);
          std::vector<Node>& out = built[k];
          out.reserve(parts[k]->count);
          std::size_t i = offset[k];
          for (element n : parts[k]->nodes) {
            if (failed.load(std::memory_order_relaxed)) return;
            part.add_node(n, i++, nullptr, [&](std::string_view name, std::string_view op, std::string_view target,
                                               const std::vector<std::size_t>& inputs, std::span<const KeyValue> kv) {
              out.push_back(Node{std::string(name), std::string(op), std::string(target), inputs, store.create(kv)});
            });
          }
        } catch (...) {  // refused, or out of memory: built again in order below
          failed.store(true, std::memory_order_relaxed);
        }
      });
    } catch (...) {  // oneTBB could not run it (out of memory): built in order below
      failed = true;
    }
    std::size_t made = 0;
    for (const std::vector<Node>& b : built) made += b.size();
    if (made != count) failed = true;
    if (!failed.load()) {
      std::vector<Node> all;
      try {
        all.reserve(count);
        for (std::vector<Node>& b : built) {
          std::move(b.begin(), b.end(), std::back_inserter(all));
          std::vector<Node>().swap(b);
        }
        graph->replace_nodes(std::move(all));  // checks the names across parts
      } catch (const GraphError&) {  // a name in two parts: found again below, in order
        failed = true;
      } catch (const std::bad_alloc&) {
        failed = true;
      }
      if (!failed.load()) {  // outside the try: what the callback throws aborts the load
        ProgressReporter{load_}(LoadProgress::Phase::kBuild, count, count);
        return std::move(*graph);
      }
    }
    built.clear();
    graph.reset();  // its nodes die first
    Graph serial(again);
    serial.attrs() = std::move(attrs.dict);
    std::size_t i = 0;
    for (auto& part : parts) {
      for (element n : part->nodes) add_node(n, i++, &serial, GraphSink{serial});
    }
    ProgressReporter{load_}(LoadProgress::Phase::kBuild, count, count);
    return serial;
  }

 private:
  // A builder for one part of a document: the same file, options and node count, its own
  // scratch space, and an interner in front of the one the parts share.
  GraphBuilder(const GraphBuilder& whole, SharedInterner& shared)
      : source_(whole.source_), load_(whole.load_), count_(whole.count_), protected_(whole.protected_),
        interner_(shared) {}

  // The graph's attributes (the top-level keys but "nodes"), each kept once.
  struct Attrs {
    Value::Dict dict;
    std::vector<std::string_view> keys;  // into the document: stable, unlike dict's strings
    KeyIndex index;
  };

  void add_attr(Attrs& attrs, std::string_view key, element value) {
    const Step step{nullptr, key, 0, false};
    Value v = this->value(value, &step, 2);
    const std::size_t prev = attrs.index.seen(key, attrs.keys.size(),
                                              [&](std::size_t i) { return attrs.keys[i]; });
    if (prev != KeyIndex::npos) {
      if (attrs.dict[prev].second != v) {
        fail_at(printable(key), "key '" + printable(key) + "' given twice with different values");
      }
      return;
    }
    attrs.keys.push_back(key);
    attrs.dict.emplace_back(std::string(key), std::move(v));
  }

  void check_attrs(const Attrs& attrs) const {
    for (const auto& [name, v] : attrs.dict) {  // the one graph attribute nodemeta's passes read
      if (name == "training" && !v.is_none() && v.kind() != Value::Kind::kBool) {
        fail_at("training", "expected true, false or null (the mode the graph was traced in), got " + kind_word(v));
      }
    }
  }

  // Adds a checked node to the graph (the serial build).
  struct GraphSink {
    Graph& graph;
    void operator()(std::string_view name, std::string_view op, std::string_view target,
                    const std::vector<std::size_t>& inputs, std::span<const KeyValue> kv) const {
      graph.add_node(std::string(name), std::string(op), std::string(target), inputs, kv);
    }
  };

  [[noreturn]] void fail_at(const std::string& where, std::string_view message) const {
    fail(source_, where + ": " + std::string(message));
  }

  std::string where(const Step* s) const {
    std::vector<std::string> steps;
    if (in_node_ != kNoNode) steps.push_back("nodes[" + std::to_string(in_node_) + "].meta");
    std::vector<const Step*> chain;
    for (; s != nullptr; s = s->parent) chain.push_back(s);
    for (auto it = chain.rbegin(); it != chain.rend(); ++it) {
      const Step* st = *it;
      steps.push_back(st->is_index ? "[" + std::to_string(st->index) + "]" : printable(st->key));
    }
    return render_path(steps) + (in_node_ != kNoNode ? " (node '" + printable(node_name_) + "')" : "");
  }

  // Two JSON values equal as Values (only for a key given twice: a rare, slow path).
  // `at` names the place of both (the key given twice); `depth` is their document depth.
  bool same_json(element a, element b, const Step* at, std::size_t depth = 2) {
    return value(a, at, depth) == value(b, at, depth);
  }

  // The Value of a JSON element at document depth `depth` (the depth it has if it is an
  // array or object). simdjson has checked the document's depth already, except that it
  // does not count an empty array or object: checked here, so the limit is exact. Recursion
  // is bounded by that limit.
  Value value(element e, const Step* at, std::size_t depth) { return item(e, at, depth).get(); }

  Item item(element e, const Step* at, std::size_t depth) {
    if (depth > load_.max_depth && (e.type() == element_type::ARRAY || e.type() == element_type::OBJECT)) {
      fail_at(where(at), depth_message(load_.max_depth));
    }
    switch (e.type()) {
      case element_type::NULL_VALUE: return {};
      case element_type::BOOL: return {nullptr, Value(bool(e))};
      case element_type::INT64: return {nullptr, Value(std::int64_t(e))};
      case element_type::UINT64:
        fail_at(where(at), "integer " + std::to_string(std::uint64_t(e)) +
                               " does not fit a 64-bit signed integer");
      case element_type::DOUBLE: return {nullptr, Value(double(e))};
      case element_type::STRING: return {&interner_.string(string_of(e)), {}};
      case element_type::ARRAY: {
        // Children go on a stack shared by every level; the list is built from its slice
        // only if no equal list exists yet.
        const std::size_t base = values_.size();
        std::size_t k = 0;
        for (element c : array_of(e)) {
          const Step step{at, {}, k++, true};
          Item v = item(c, &step, depth + 1);
          values_.push_back(std::move(v));
        }
        const Value& r = interner_.list(std::span<const Item>(values_.data() + base, values_.size() - base));
        values_.resize(base);
        return {&r, {}};
      }
      case element_type::OBJECT: {
        const std::size_t base = fields_.size();
        KeyIndex index;
        for (auto field : object_of(e)) {
          const Step step{at, field.key, 0, false};
          Item v = item(field.value, &step, depth + 1);
          const std::size_t prev = index.seen(field.key, fields_.size() - base,
                                              [&](std::size_t i) { return fields_[base + i].first; });
          if (prev != KeyIndex::npos) {
            if (fields_[base + prev].second.get() == v.get()) continue;  // the same value again: harmless
            fail_at(where(&step), "key '" + printable(field.key) + "' given twice with different values");
          }
          fields_.emplace_back(field.key, std::move(v));
        }
        const Value& r = interner_.dict(
            std::span<const std::pair<std::string_view, Item>>(fields_.data() + base, fields_.size() - base));
        fields_.resize(base);
        return {&r, {}};
      }
    }
    fail_at(where(at), "unexpected JSON element");
  }

  // Checks node `i` of the document and hands it to `sink`. `names` is the graph built so far,
  // for duplicate names (null in a part built in parallel: build_parts checks them).
  template <class Sink>
  void add_node(element n, std::size_t i, const Graph* names, Sink&& sink) {
    // The place's text is built only for an error message.
    std::string_view name;
    const auto AT = [i] { return "nodes[" + std::to_string(i) + "]"; };
    const auto NODE = [&name] { return name.empty() ? std::string() : " (node '" + printable(name) + "')"; };
    if (n.type() != element_type::OBJECT) fail_at(AT(), "expected an object, got " + kind_word(n));
    simdjson::dom::object obj = object_of(n);
    // Fields, each kept once (a repeat must be identical).
    enum Field { kId, kName, kOp, kTarget, kInputs, kMeta, kFields };
    static constexpr std::array<std::string_view, kFields> kNames = {"id", "name", "op", "target", "inputs", "meta"};
    std::array<element, kFields> fields{};
    std::array<bool, kFields> have{};
    for (auto field : obj) {
      const auto it = std::find(kNames.begin(), kNames.end(), field.key);
      if (it == kNames.end()) {
        fail_at(AT() + "." + printable(field.key), "unexpected field (a node has id, name, op, target, inputs, meta)");
      }
      const auto f = static_cast<std::size_t>(it - kNames.begin());
      if (have[f]) {  // a repeat must be identical; the first is kept
        const std::string place = AT() + "." + std::string(field.key);
        const Step step{nullptr, place, 0, false};
        if (!same_json(fields[f], field.value, &step, 4)) {
          fail_at(place, "key '" + std::string(field.key) + "' given twice with different values");
        }
        continue;
      }
      fields[f] = field.value;
      have[f] = true;
    }
    auto need = [&](Field f) -> element {
      if (!have[f]) fail_at(AT() + NODE(), "missing field '" + std::string(kNames[f]) + "'");
      return fields[f];
    };
    auto string_field = [&](Field f) -> std::string_view {
      element e = need(f);
      if (e.type() != element_type::STRING) {
        fail_at(AT() + "." + std::string(kNames[f]) + NODE(), "expected a string, got " + kind_word(e));
      }
      return string_of(e);
    };
    name = string_field(kName);
    if (name.empty()) fail_at(AT() + ".name", "empty node name");
    {
      element e = need(kId);
      if (e.type() != element_type::INT64 && e.type() != element_type::UINT64) {
        fail_at(AT() + ".id" + NODE(), "expected an integer, got " + kind_word(e));
      }
      const bool ok = e.type() == element_type::INT64 && e.get_int64().value_unsafe() == static_cast<std::int64_t>(i);
      if (!ok) {
        const std::string got = e.type() == element_type::INT64 ? std::to_string(e.get_int64().value_unsafe())
                                                                 : std::to_string(e.get_uint64().value_unsafe());
        fail_at(AT() + ".id" + NODE(), "expected " + std::to_string(i) + " (the node's position), got " + got);
      }
    }
    if (auto prev = names != nullptr ? names->find(name) : std::nullopt) {
      fail_at(AT() + ".name", "duplicate node name '" + printable(name) + "' (first at nodes[" +
                                std::to_string(*prev) + "])");
    }
    const std::string_view op = string_field(kOp);
    if (!is_known_op(op)) {
      fail_at(AT() + ".op" + NODE(), "unknown op '" + printable(op) +
                                     "' (expected placeholder, get_attr, call_function, "
                                     "call_module, call_method or output)");
    }
    const std::string_view target = string_field(kTarget);
    inputs_.clear();
    {
      element e = need(kInputs);
      if (e.type() != element_type::ARRAY) fail_at(AT() + ".inputs" + NODE(), "expected an array, got " + kind_word(e));
      std::size_t k = 0;
      for (element in : array_of(e)) {
        const auto w = [&] { return AT() + ".inputs[" + std::to_string(k) + "]" + NODE(); };
        if (in.type() != element_type::INT64) {
          if (in.type() == element_type::UINT64) {
            fail_at(w(), "integer " + std::to_string(in.get_uint64().value_unsafe()) +
                             " does not fit a 64-bit signed integer");
          }
          fail_at(w(), "expected an integer node id, got " + kind_word(in));
        }
        const std::int64_t id = in.get_int64().value_unsafe();
        if (id < 0 || id >= static_cast<std::int64_t>(i)) {
          fail_at(w(), "input id " + std::to_string(id) + " is not an earlier node (ids must be < " +
                           std::to_string(i) + ")");
        }
        const auto u = static_cast<std::size_t>(id);
        const bool repeated = inputs_.size() < 16
                                  ? std::find(inputs_.begin(), inputs_.end(), u) != inputs_.end()
                                  : !input_set_.insert(u).second;
        if (repeated) {
          fail_at(w(), "input id " + std::to_string(id) +
                           " given twice (a node lists each input once, in order of first use)");
        }
        inputs_.push_back(u);
        if (inputs_.size() == 16) input_set_ = {inputs_.begin(), inputs_.end()};
        ++k;
      }
      input_set_.clear();
    }
    element meta_el = need(kMeta);
    if (meta_el.type() != element_type::OBJECT) fail_at(AT() + ".meta" + NODE(), "expected an object, got " + kind_word(meta_el));
    kv_.clear();
    meta_names_.clear();
    in_node_ = i;
    node_name_ = name;
    KeyIndex index;
    for (auto field : object_of(meta_el)) {
      const Step step{nullptr, field.key, 0, false};
      Value v = value(field.value, &step, 5);
      const std::size_t prev = index.seen(field.key, meta_names_.size(),
                                          [&](std::size_t j) { return meta_names_[j]; });
      if (prev != KeyIndex::npos) {
        if (kv_[prev].second == v) continue;
        const bool prot = std::find(protected_.begin(), protected_.end(), field.key) != protected_.end();
        fail_at(where(&step), std::string(prot ? "protected key '" : "key '") + printable(field.key) +
                                  "' given twice with different values");
      }
      check_meta(field.key, v, &step);
      const Key key = [&] {
        try {
          return Key(field.key);
        } catch (const std::exception& e) {  // a name nodemeta refuses (an embedded NUL)
          fail_at(where(&step), e.what());
        }
      }();
      meta_names_.push_back(field.key);
      kv_.emplace_back(key, std::move(v));
    }
    in_node_ = kNoNode;
    // The schema's standard keys are on every node (null where torch produced nothing).
    for (std::string_view k : kStandardKeys) {
      if (std::find(meta_names_.begin(), meta_names_.end(), k) == meta_names_.end()) {
        fail_at(AT() + ".meta" + NODE(), "missing standard key '" + std::string(k) +
                                             "' (stack_trace, nn_module_stack, tensor_meta, val and debug_handle "
                                             "are on every node, null where torch produced nothing)");
      }
    }
    // Exactly one output node, the last: so nothing can read it (inputs are earlier nodes).
    const bool last = i + 1 == count_;
    if (op == "output" && !last) {
      fail_at(AT() + ".op" + NODE(), "an output node before the last node (a graph has exactly one output node, "
                                     "and it is last)");
    }
    if (op != "output" && last) {
      fail_at(AT() + ".op" + NODE(), "the last node is a " + printable(op) +
                                         " node, not an output node (a graph ends with exactly one output node)");
    }
    try {
      sink(name, op, target, inputs_, std::span<const KeyValue>(kv_));
    } catch (const std::exception& e) {  // not expected after the checks above
      fail_at(AT() + NODE(), e.what());
    }
  }

  // The schema's types for the standard keys (null allowed for each).
  void check_meta(std::string_view k, const Value& v, const Step* at) const {
    if (v.is_none()) return;
    if (k == "stack_trace" && v.kind() != Value::Kind::kString) {
      fail_at(where(at), "expected a string or null, got " + kind_word(v));
    }
    if (k == "debug_handle" && v.kind() != Value::Kind::kInt) {
      fail_at(where(at), "expected an integer or null, got " + kind_word(v));
    }
    if (k == "nn_module_stack") {
      const Value::Dict* d = v.get_if<Value::Dict>();
      if (d == nullptr) fail_at(where(at), "expected an object or null, got " + kind_word(v));
      for (const auto& [path, type] : *d) {
        if (type.kind() != Value::Kind::kString) {
          std::string w = where(at);
          w.insert(w.find(k) + k.size(), "['" + path + "']");
          fail_at(w,
                  "expected a string (the module type), got " + kind_word(type));
        }
      }
    }
  }

  static constexpr std::array<std::string_view, 5> kStandardKeys = {"stack_trace", "nn_module_stack", "tensor_meta",
                                                                    "val", "debug_handle"};
  std::string_view source_;
  const LoadOptions& load_;
  std::size_t count_ = 0;  // nodes in the document
  std::vector<std::string> protected_;
  Interner interner_;
  // While a node's metadata is built, Steps hang from nodes[in_node_].meta.
  static constexpr std::size_t kNoNode = static_cast<std::size_t>(-1);
  std::size_t in_node_ = kNoNode;
  std::string_view node_name_;
  std::vector<std::size_t> inputs_;
  std::unordered_set<std::size_t> input_set_;
  std::vector<KeyValue> kv_;
  std::vector<std::string_view> meta_names_;
  std::vector<Item> values_;                                // open lists' elements
  std::vector<std::pair<std::string_view, Item>> fields_;   // open dicts' fields
};

}  // namespace

// Parses `input` with `parser` (what load_graph and the parse-only floor share), then frees
// the text: the document's strings live in the parser.
element parse_document(simdjson::dom::parser& parser, Input& input, std::string_view source,
                       const LoadOptions& load) {
  // simdjson refuses a non-empty array/object at depth max_depth + 1 and beyond with a limit of
  // max_depth + 1; the build checks the empty ones, so the limit is exact.
  if (parser.allocate(std::max<std::size_t>(input.size(), 64), load.max_depth + 1) != simdjson::SUCCESS) {
    fail(source, "not enough memory to parse " + std::to_string(input.size()) + " bytes of JSON");
  }
  element root;
  const simdjson::error_code code =
      parser.parse(reinterpret_cast<const std::uint8_t*>(input.data()), input.size(), false).get(root);
  if (code != simdjson::SUCCESS) fail_parse(source, input, load.max_depth, code);
  input.release();
  return root;
}

Graph parse_input(Input& input, std::string_view source, StoreOptions options, const LoadOptions& load) {
  if (auto parts = parse_in_parts(input, load); !parts.empty()) {
    ProgressReporter{load}(LoadProgress::Phase::kParse, 1, 1);
    GraphBuilder builder(source, options, load);
    return builder.build_parts(parts, std::move(options));
  }
  simdjson::dom::parser parser;
  const element root = parse_document(parser, input, source, load);
  ProgressReporter{load}(LoadProgress::Phase::kParse, 1, 1);
  GraphBuilder builder(source, options, load);
  return builder.build(root, std::move(options));
}

}  // namespace nodemeta::graph::io
