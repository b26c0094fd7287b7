#include "nodemeta/graph/graph_io.h"

#include <zlib.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>
#include <sstream>
#include <string>
#include <unordered_set>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace nodemeta::graph {
namespace {

// ---- files and gzip --------------------------------------------------------------------

[[noreturn]] void fail(std::string_view source, std::string_view message) {
  throw GraphError(std::string(source) + ": " + std::string(message));
}

bool has_gzip_magic(const std::string& bytes) {
  return bytes.size() >= 2 && static_cast<unsigned char>(bytes[0]) == 0x1f &&
         static_cast<unsigned char>(bytes[1]) == 0x8b;
}

std::string read_bytes(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) fail(path, "cannot read: is a directory");
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path, std::string("cannot open: ") + std::strerror(errno));
  std::ostringstream buf;
  buf << in.rdbuf();
  if (in.bad()) fail(path, "cannot read: I/O error");
  return std::move(buf).str();
}

std::string inflate_gzip(const std::string& path, const std::string& bytes) {
  z_stream zs{};
  if (inflateInit2(&zs, 15 + 32) != Z_OK) fail(path, "gzip: cannot initialise zlib");
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(bytes.data()));
  zs.avail_in = static_cast<uInt>(bytes.size());
  std::string out;
  std::array<char, 1 << 16> chunk{};
  int ret = Z_OK;
  for (;;) {
    zs.next_out = reinterpret_cast<Bytef*>(chunk.data());
    zs.avail_out = static_cast<uInt>(chunk.size());
    ret = inflate(&zs, Z_NO_FLUSH);
    out.append(chunk.data(), chunk.size() - zs.avail_out);
    if (ret == Z_STREAM_END) {
      if (zs.avail_in == 0) break;
      inflateReset(&zs);  // a further gzip member follows
      continue;
    }
    if (ret == Z_OK) continue;
    if (ret == Z_BUF_ERROR && zs.avail_in == 0) {
      const auto used = static_cast<unsigned long>(zs.total_in);  // NOLINT
      inflateEnd(&zs);
      fail(path, "truncated gzip data: the stream ends after " + std::to_string(used) +
                     " of its compressed bytes without its end marker");
    }
    const std::string msg = zs.msg ? zs.msg : "error " + std::to_string(ret);
    inflateEnd(&zs);
    fail(path, "corrupt gzip data: " + msg);
  }
  inflateEnd(&zs);
  return out;
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) fail(path, std::string("cannot open for writing: ") + std::strerror(errno));
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  out.close();
  if (!out) fail(path, "cannot write: I/O error");
}

std::string deflate_gzip(const std::string& path, const std::string& text) {
  z_stream zs{};
  if (deflateInit2(&zs, 6, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK) {
    fail(path, "gzip: cannot initialise zlib");
  }
  std::string out;
  out.resize(deflateBound(&zs, static_cast<uLong>(text.size())));
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(text.data()));
  zs.avail_in = static_cast<uInt>(text.size());
  zs.next_out = reinterpret_cast<Bytef*>(out.data());
  zs.avail_out = static_cast<uInt>(out.size());
  const int ret = deflate(&zs, Z_FINISH);
  out.resize(zs.total_out);
  deflateEnd(&zs);
  if (ret != Z_STREAM_END) fail(path, "gzip: compression failed");
  return out;
}

// ---- JSON -> Value, with paths --------------------------------------------------------

using Json = nlohmann::json;

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

// Builds a Value tree from nlohmann's SAX events, keeping the JSON path of the value being
// read so every error can name its place. Repeated object keys are kept once if their
// values are equal and rejected otherwise.
class ValueBuilder {
 public:
  explicit ValueBuilder(std::vector<std::string> protected_names)
      : protected_(std::move(protected_names)) {}

  bool null() { return put(Value()); }
  bool boolean(bool b) { return put(Value(b)); }
  bool number_integer(Json::number_integer_t i) { return put(Value(static_cast<std::int64_t>(i))); }
  bool number_unsigned(Json::number_unsigned_t u) {
    if (u > static_cast<Json::number_unsigned_t>(std::numeric_limits<std::int64_t>::max())) {
      return error(path() + ": integer " + std::to_string(u) + " does not fit a 64-bit signed integer");
    }
    return put(Value(static_cast<std::int64_t>(u)));
  }
  bool number_float(Json::number_float_t d, const std::string& /*text*/) { return put(Value(d)); }
  bool string(std::string& s) {
    if (in_node_field("name")) node_name_ = s;
    return put(Value(std::move(s)));
  }
  bool binary(Json::binary_t& /*b*/) { return error(path() + ": binary values are not JSON"); }
  bool start_object(std::size_t /*n*/) {
    if (stack_.size() == 2 && stack_[0].key == "nodes") node_name_.clear();
    stack_.push_back(Frame{true});
    return true;
  }
  bool key(std::string& k) {
    Frame& f = stack_.back();
    f.duplicate.reset();
    for (std::size_t i = 0; i < f.dict.size(); ++i) {
      if (f.dict[i].first == k) f.duplicate = i;
    }
    f.key = std::move(k);
    return true;
  }
  bool end_object() {
    Frame f = std::move(stack_.back());
    stack_.pop_back();
    return put(Value::dict(std::move(f.dict)));
  }
  bool start_array(std::size_t /*n*/) {
    stack_.push_back(Frame{false});
    return true;
  }
  bool end_array() {
    Frame f = std::move(stack_.back());
    stack_.pop_back();
    return put(Value::list(std::move(f.list)));
  }
  bool parse_error(std::size_t position, const std::string& /*last_token*/,
                   const nlohmann::detail::exception& ex) {
    std::string what = ex.what();
    if (auto p = what.find("] "); what.rfind("[json.exception", 0) == 0 && p != std::string::npos) {
      what.erase(0, p + 2);
    }
    return error("invalid JSON at byte " + std::to_string(position) +
                 (stack_.empty() ? "" : " (in " + path() + ")") + ": " + what);
  }

  Value take_root() { return std::move(root_); }
  const std::string& error_message() const { return error_; }

 private:
  struct Frame {
    bool object;
    Value::List list{};
    Value::Dict dict{};
    std::string key{};
    std::optional<std::size_t> duplicate{};
  };

  bool in_node_field(std::string_view field) const {
    return stack_.size() == 3 && stack_[0].key == "nodes" && stack_[2].object &&
           stack_[2].key == field;
  }
  bool in_meta() const {
    return stack_.size() == 4 && stack_[0].key == "nodes" && stack_[2].key == "meta" &&
           stack_[3].object;
  }

  std::string path() const {
    std::string p;
    for (const Frame& f : stack_) {
      if (f.object) {
        if (!p.empty()) p += '.';
        p += f.key;
      } else {
        p += '[' + std::to_string(f.list.size()) + ']';
      }
    }
    if (p.empty()) p = "(top level)";
    if (stack_.size() >= 3 && stack_[0].key == "nodes" && !node_name_.empty()) {
      p += " (node '" + node_name_ + "')";
    }
    return p;
  }

  bool put(Value v) {
    if (stack_.empty()) {
      root_ = std::move(v);
      return true;
    }
    Frame& f = stack_.back();
    if (!f.object) {
      f.list.push_back(std::move(v));
      return true;
    }
    if (f.duplicate) {
      if (f.dict[*f.duplicate].second == v) return true;  // the same value again: harmless
      const bool prot = in_meta() && std::find(protected_.begin(), protected_.end(), f.key) !=
                                         protected_.end();
      return error(path() + ": " + (prot ? "protected key '" : "key '") + f.key +
                   "' given twice with different values");
    }
    f.dict.emplace_back(f.key, std::move(v));
    return true;
  }

  bool error(std::string message) {
    if (error_.empty()) error_ = std::move(message);
    return false;
  }

  std::vector<std::string> protected_;
  std::vector<Frame> stack_;
  Value root_;
  std::string node_name_;
  std::string error_;
};

// ---- schema ------------------------------------------------------------------------------

class SchemaReader {
 public:
  explicit SchemaReader(std::string_view source) : source_(source) {}

  [[noreturn]] void fail_at(const std::string& where, std::string_view message) const {
    fail(source_, where + ": " + std::string(message));
  }

  const Value& field(const Value::Dict& obj, std::string_view name, const std::string& where) const {
    for (const auto& [k, v] : obj) {
      if (k == name) return v;
    }
    fail_at(where, "missing field '" + std::string(name) + "'");
  }

  template <class T>
  const T& typed(const Value& v, const std::string& where, std::string_view expected) const {
    if (const T* p = v.get_if<T>()) return *p;
    fail_at(where, "expected " + std::string(expected) + ", got " + kind_word(v));
  }

  Graph build(const Value& root, StoreOptions options) const {
    const auto& top = typed<Value::Dict>(root, "(top level)", "an object");
    const auto& nodes = typed<Value::List>(field(top, "nodes", "(top level)"), "nodes", "an array");
    options.expected_nodes = nodes.size();
    Graph graph(std::move(options));
    for (const auto& [k, v] : top) {
      if (k != "nodes") graph.attrs().emplace_back(k, v);
    }
    std::vector<KeyValue> kv;
    std::vector<std::size_t> inputs;
    for (std::size_t i = 0; i < nodes.size(); ++i) {
      std::string where = "nodes[" + std::to_string(i) + "]";
      const auto& obj = typed<Value::Dict>(nodes[i], where, "an object");
      for (const auto& [k, v] : obj) {
        if (k != "id" && k != "name" && k != "op" && k != "target" && k != "inputs" && k != "meta") {
          fail_at(where + "." + k, "unexpected field (a node has id, name, op, target, inputs, meta)");
        }
      }
      const std::string& name = typed<std::string>(field(obj, "name", where), where + ".name", "a string");
      const std::string node = " (node '" + name + "')";
      if (name.empty()) fail_at(where + ".name", "empty node name");
      const auto id = typed<std::int64_t>(field(obj, "id", where + node), where + ".id" + node, "an integer");
      if (id != static_cast<std::int64_t>(i)) {
        fail_at(where + ".id" + node, "expected " + std::to_string(i) + " (the node's position), got " +
                                          std::to_string(id));
      }
      if (auto prev = graph.find(name)) {
        fail_at(where + ".name", "duplicate node name '" + name + "' (first at nodes[" +
                                     std::to_string(*prev) + "])");
      }
      const std::string& op = typed<std::string>(field(obj, "op", where + node), where + ".op" + node, "a string");
      if (!is_known_op(op)) {
        fail_at(where + ".op" + node, "unknown op '" + op +
                                          "' (expected placeholder, get_attr, call_function, "
                                          "call_module, call_method or output)");
      }
      const std::string& target =
          typed<std::string>(field(obj, "target", where + node), where + ".target" + node, "a string");
      const auto& ins =
          typed<Value::List>(field(obj, "inputs", where + node), where + ".inputs" + node, "an array");
      inputs.clear();
      for (std::size_t k = 0; k < ins.size(); ++k) {
        const std::string w = where + ".inputs[" + std::to_string(k) + "]" + node;
        const auto in = typed<std::int64_t>(ins[k], w, "an integer node id");
        if (in < 0 || in >= static_cast<std::int64_t>(i)) {
          fail_at(w, "input id " + std::to_string(in) + " is not an earlier node (ids must be < " +
                         std::to_string(i) + ")");
        }
        inputs.push_back(static_cast<std::size_t>(in));
      }
      const auto& meta = typed<Value::Dict>(field(obj, "meta", where + node), where + ".meta" + node, "an object");
      kv.clear();
      for (const auto& [k, v] : meta) {
        const std::string wk = where + ".meta." + k;
        const std::string w = wk + node;
        if (k == "stack_trace" && !v.is_none()) typed<std::string>(v, w, "a string or null");
        if (k == "debug_handle" && !v.is_none()) typed<std::int64_t>(v, w, "an integer or null");
        if (k == "nn_module_stack" && !v.is_none()) {
          for (const auto& [path, type] : typed<Value::Dict>(v, w, "an object or null")) {
            typed<std::string>(type, wk + "['" + path + "']" + node, "a string (the module type)");
          }
        }
        const Key key = [&] {
          try {
            return Key(k);
          } catch (const std::exception& e) {  // a name nodemeta refuses (an embedded NUL)
            fail_at(w, e.what());
          }
        }();
        kv.emplace_back(key, v);
      }
      try {
        graph.add_node(name, op, target, inputs, kv);
      } catch (const std::exception& e) {  // not expected after the checks above
        fail_at(where + node, e.what());
      }
    }
    return graph;
  }

 private:
  std::string_view source_;
};

// ---- Value -> JSON -------------------------------------------------------------------

using OrderedJson = nlohmann::ordered_json;

OrderedJson to_json_value(const Value& v, const std::string& where) {
  switch (v.kind()) {
    case Value::Kind::kNone: return nullptr;
    case Value::Kind::kBool: return v.as<bool>();
    case Value::Kind::kInt: return v.as<std::int64_t>();
    case Value::Kind::kDouble: return v.as<double>();
    case Value::Kind::kString: return v.as<std::string>();
    case Value::Kind::kList: {
      OrderedJson arr = OrderedJson::array();
      for (const Value& e : v.as<Value::List>()) arr.push_back(to_json_value(e, where));
      return arr;
    }
    case Value::Kind::kDict: {
      OrderedJson obj = OrderedJson::object();
      for (const auto& [k, e] : v.as<Value::Dict>()) obj[k] = to_json_value(e, where);
      return obj;
    }
    case Value::Kind::kObject: break;
  }
  throw GraphError(where + ": cannot export a value of user type " + v.type_name() + " to JSON");
}

int schema_rank(std::string_view key) {
  static constexpr std::array<std::string_view, 7> kOrder = {
      "stack_trace", "nn_module_stack", "tensor_meta", "val", "debug_handle", "is_wrapped", "type"};
  auto it = std::find(kOrder.begin(), kOrder.end(), key);
  return static_cast<int>(it - kOrder.begin());
}

std::vector<std::string> protected_names(const StoreOptions& options) {
  std::vector<std::string> names;
  for (Key k : options.protected_keys) names.emplace_back(k.name());
  return names;
}

}  // namespace

std::string read_file_text(const std::string& path) {
  std::string bytes = read_bytes(path);
  if (has_gzip_magic(bytes)) return inflate_gzip(path, bytes);
  return bytes;
}

Graph parse_graph(std::string_view json, std::string_view source, StoreOptions options) {
  Value root;
  {
    ValueBuilder builder(protected_names(options));
    const bool ok = Json::sax_parse(json.data(), json.data() + json.size(), &builder,
                                    nlohmann::detail::input_format_t::json, true, false);
    if (!ok) {
      fail(source, builder.error_message().empty() ? "invalid JSON" : builder.error_message());
    }
    root = builder.take_root();
  }
  return SchemaReader(source).build(root, std::move(options));
}

Graph load_graph(const std::string& path, StoreOptions options) {
  const std::string text = read_file_text(path);
  return parse_graph(text, path, std::move(options));
}

std::string to_json(const Graph& graph) {
  OrderedJson doc = OrderedJson::object();
  for (const auto& [k, v] : graph.attrs()) doc[k] = to_json_value(v, k);
  OrderedJson nodes = OrderedJson::array();
  for (std::size_t i = 0; i < graph.size(); ++i) {
    const Node& n = graph.node(i);
    const std::string where = "nodes[" + std::to_string(i) + "] (node '" + n.name + "')";
    OrderedJson node = OrderedJson::object();
    node["id"] = i;
    node["name"] = n.name;
    node["op"] = n.op;
    node["target"] = n.target;
    node["inputs"] = n.inputs;
    Items items = n.meta.items();
    std::stable_sort(items.begin(), items.end(), [](const auto& a, const auto& b) {
      return schema_rank(a.first) < schema_rank(b.first);
    });
    OrderedJson meta = OrderedJson::object();
    for (const auto& [k, v] : items) meta[k] = to_json_value(v, where + ".meta." + k);
    node["meta"] = std::move(meta);
    nodes.push_back(std::move(node));
  }
  doc["nodes"] = std::move(nodes);
  try {
    return doc.dump(-1, ' ', false, nlohmann::detail::error_handler_t::strict);
  } catch (const nlohmann::json::exception& e) {  // e.g. a string that is not UTF-8
    throw GraphError(std::string("graph export: ") + e.what());
  }
}

void save_graph(const Graph& graph, const std::string& path) {
  std::string text;
  try {
    text = to_json(graph);
  } catch (const GraphError& e) {
    fail(path, e.what());
  }
  const bool gz = path.size() >= 3 && path.compare(path.size() - 3, 3, ".gz") == 0;
  write_bytes(path, gz ? deflate_gzip(path, text) : text);
}

std::string value_to_json(const Value& value) {
  return to_json_value(value, "value").dump(-1, ' ', false, nlohmann::detail::error_handler_t::replace);
}

}  // namespace nodemeta::graph
