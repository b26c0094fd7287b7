// Graph -> JSON text (a direct serializer, no intermediate tree) and saving it, plain or
// gzip. See graph_io.h for the contract (schema key order, what cannot be saved).
#include <libdeflate.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "io_internal.h"

namespace nodemeta::graph {
namespace io {
namespace {

// Writes JSON text directly (no intermediate tree). Long strings shared by many nodes
// (stack traces) are escaped once and copied from the first occurrence's output after that.
// Where a value being saved sits, for an error message; formatted only when one is thrown
// (building it eagerly cost a string per metadata key on the save path).
struct Place {
  static constexpr std::size_t kNone = static_cast<std::size_t>(-1);
  std::size_t node = kNone;           // index, or kNone for a graph attribute / a lone value
  const std::string* name = nullptr;  // the node's name
  std::string_view field;             // "name", "op", "target", a meta key, an attribute
  bool meta = false;                  // field is a metadata key
  std::string str() const {
    if (node == kNone) return printable(field);
    return "nodes[" + std::to_string(node) + "]" + (meta ? ".meta." : ".") + printable(field) + " (node '" +
           printable(*name) + "')";
  }
};

class Writer {
 public:
  enum class Mode { kSave, kDisplay };
  explicit Writer(Mode mode) : mode_(mode) {}

  std::string out;

  void value(const Value& v, const Place& where, std::size_t depth) {
    switch (v.kind()) {
      case Value::Kind::kNone: out += "null"; return;
      case Value::Kind::kBool: out += v.as<bool>() ? "true" : "false"; return;
      case Value::Kind::kInt: integer(v.as<std::int64_t>()); return;
      case Value::Kind::kDouble: real(v.as<double>(), where); return;
      case Value::Kind::kString: string_value(v, where); return;
      case Value::Kind::kList: {
        nest(depth, where);
        out += '[';
        bool first = true;
        for (const Value& e : v.as<Value::List>()) {
          if (!first) out += ',';
          first = false;
          value(e, where, depth + 1);
        }
        out += ']';
        return;
      }
      case Value::Kind::kDict: {
        nest(depth, where);
        out += '{';
        bool first = true;
        for (const auto& [k, e] : v.as<Value::Dict>()) {
          if (!first) out += ',';
          first = false;
          string(k, where);
          out += ':';
          value(e, where, depth + 1);
        }
        out += '}';
        return;
      }
      case Value::Kind::kObject: break;
    }
    throw GraphError(where.str() + ": cannot export a value of user type " + v.type_name() + " to JSON");
  }

  void integer(std::int64_t i) {
    char buf[24];
    auto r = std::to_chars(buf, buf + sizeof buf, i);
    out.append(buf, r.ptr);
  }
  void integer(std::uint64_t i) {
    char buf[24];
    auto r = std::to_chars(buf, buf + sizeof buf, i);
    out.append(buf, r.ptr);
  }

  void real(double d, const Place& where) {
    if (!std::isfinite(d)) {
      if (mode_ == Mode::kDisplay) {
        out += "null";
        return;
      }
      throw GraphError(where.str() + ": cannot save " + (std::isnan(d) ? std::string("NaN") : d > 0 ? "inf" : "-inf") +
                       ": JSON has no such number");
    }
    char buf[32];
    auto r = std::to_chars(buf, buf + sizeof buf, d);  // shortest text that reads back exactly
    const std::string_view text(buf, static_cast<std::size_t>(r.ptr - buf));
    out += text;
    if (text.find_first_of(".e") == std::string_view::npos) out += ".0";  // stays a float
  }

  void string(std::string_view s, const Place& where) { escaped(s, where); }

  // A string Value: a long one is remembered by its box, which `kept_` holds alive for the
  // whole save (so no other string can take its address), and copied from its first output.
  void string_value(const Value& v, const Place& where) {
    const std::string& s = v.as<std::string>();
    if (s.size() < kMemoMin) {
      escaped(s, where);
      return;
    }
    if (auto it = memo_.find(&s); it != memo_.end()) {
      out.reserve(out.size() + it->second.second);
      out.append(out.data() + it->second.first, it->second.second);
      return;
    }
    const std::size_t start = out.size();
    escaped(s, where);
    kept_.push_back(v);
    memo_.emplace(&s, std::make_pair(start, out.size() - start));
  }

 private:
  static constexpr std::size_t kMemoMin = 64;

  // `depth`: the document depth of the array/object being opened; past the ceiling of any
  // load's max_depth, the file could never be read back.
  void nest(std::size_t depth, const Place& where) const {
    if (depth > LoadOptions::kMaxDepthCeiling) {
      throw GraphError(where.str() + ": nested deeper than " + std::to_string(LoadOptions::kMaxDepthCeiling) +
                       " arrays/objects, more than any graph file may");
    }
  }

  void escaped(std::string_view s, const Place& where) {
    if (!simdjson::validate_utf8(s.data(), s.size())) {
      if (mode_ == Mode::kSave) throw GraphError(where.str() + ": a string is not valid UTF-8, which JSON requires");
      const std::string fixed = replace_invalid_utf8(s);
      escaped_valid(fixed);
      return;
    }
    escaped_valid(s);
  }

  void escaped_valid(std::string_view s) {
    out.reserve(out.size() + s.size() + 2);
    out += '"';
    std::size_t run = 0;  // start of the bytes not yet copied
    const std::size_t n = s.size();
    std::size_t i = 0;
    while (i < n) {
      // Eight bytes at a time while none needs escaping (< 0x20, '"' or '\\').
      if (i + 8 <= n) {
        std::uint64_t w;
        std::memcpy(&w, s.data() + i, 8);
        constexpr std::uint64_t ones = 0x0101010101010101ull, highs = 0x8080808080808080ull;
        const std::uint64_t lt20 = (w - ones * 0x20) & ~w & highs;
        const std::uint64_t q = w ^ (ones * '"');
        const std::uint64_t bs = w ^ (ones * '\\');
        const std::uint64_t eq = ((q - ones) & ~q & highs) | ((bs - ones) & ~bs & highs);
        if ((lt20 | eq) == 0) {
          i += 8;
          continue;
        }
      }
      const auto c = static_cast<unsigned char>(s[i]);
      if (c >= 0x20 && c != '"' && c != '\\') {
        ++i;
        continue;
      }
      out.append(s.data() + run, i - run);
      switch (c) {
        case '"': out += "\\\""; break;
        case '\\': out += "\\\\"; break;
        case '\b': out += "\\b"; break;
        case '\f': out += "\\f"; break;
        case '\n': out += "\\n"; break;
        case '\r': out += "\\r"; break;
        case '\t': out += "\\t"; break;
        default: {
          static constexpr char kHex[] = "0123456789abcdef";
          const char u[6] = {'\\', 'u', '0', '0', kHex[c >> 4], kHex[c & 15]};
          out.append(u, 6);
        }
      }
      run = ++i;
    }
    out.append(s.data() + run, n - run);
    out += '"';
  }

  // Invalid UTF-8 sequences replaced by U+FFFD (display only).
  static std::string replace_invalid_utf8(std::string_view s) {
    std::string r;
    std::size_t i = 0;
    while (i < s.size()) {
      const auto c = static_cast<unsigned char>(s[i]);
      std::size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
      if (len > 0 && i + len <= s.size() && simdjson::validate_utf8(s.data() + i, len)) {
        r.append(s.data() + i, len);
        i += len;
      } else {
        r += "\xEF\xBF\xBD";
        ++i;
      }
    }
    return r;
  }

  Mode mode_;
  std::unordered_map<const std::string*, std::pair<std::size_t, std::size_t>> memo_;
  std::vector<Value> kept_;
};

int schema_rank(std::string_view key) {
  static constexpr std::array<std::string_view, 7> kOrder = {
      "stack_trace", "nn_module_stack", "tensor_meta", "val", "debug_handle", "is_wrapped", "type"};
  auto it = std::find(kOrder.begin(), kOrder.end(), key);
  return static_cast<int>(it - kOrder.begin());
}

void write_graph(Writer& w, const Graph& graph) {
  w.out += '{';
  for (const auto& [k, v] : graph.attrs()) {
    const Place place{Place::kNone, nullptr, k, false};
    w.string(k, place);
    w.out += ':';
    w.value(v, place, 2);
    w.out += ',';
  }
  w.out += "\"nodes\":[";
  for (std::size_t i = 0; i < graph.size(); ++i) {
    const Node& n = graph.node(i);
    if (i != 0) w.out += ',';
    w.out += "{\"id\":";
    w.integer(static_cast<std::uint64_t>(i));
    w.out += ",\"name\":";
    w.string(n.name, Place{i, &n.name, "name", false});
    w.out += ",\"op\":";
    w.string(n.op, Place{i, &n.name, "op", false});
    w.out += ",\"target\":";
    w.string(n.target, Place{i, &n.name, "target", false});
    w.out += ",\"inputs\":[";
    for (std::size_t k = 0; k < n.inputs.size(); ++k) {
      if (k != 0) w.out += ',';
      w.integer(static_cast<std::uint64_t>(n.inputs[k]));
    }
    w.out += "],\"meta\":{";
    Items items = n.meta.items();
    std::stable_sort(items.begin(), items.end(), [](const auto& a, const auto& b) {
      return schema_rank(a.first) < schema_rank(b.first);
    });
    bool first = true;
    for (const auto& [k, v] : items) {
      if (!first) w.out += ',';
      first = false;
      const Place place{i, &n.name, k, true};
      w.string(k, place);
      w.out += ':';
      w.value(v, place, 5);
    }
    w.out += "}}";
  }
  w.out += "]}";
}

// Writes `text` to `path`, gzip-compressed (libdeflate) when asked.
// The file is opened only once the whole text is ready, so a graph that cannot be saved
// (NaN, invalid UTF-8, a user object) leaves the file untouched. The path is written through
// (symlinks, /dev/stdout, hard links, the file's mode and owner all behave as with any

}  // namespace

// program writing a file); an I/O error while writing can leave it partly written.
void write_file(const std::string& path, std::string_view text, bool gz) {
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> f(std::fopen(path.c_str(), "wb"), &std::fclose);
  if (!f) fail(path, std::string("cannot open for writing: ") + std::strerror(errno));
  auto put = [&](const void* p, std::size_t n) {
    if (n != 0 && std::fwrite(p, 1, n, f.get()) != n) fail(path, std::string("cannot write: ") + std::strerror(errno));
  };
  if (!gz) {
    put(text.data(), text.size());
  } else {
    // libdeflate's whole-buffer compressor at level 5 (on the large shared graph, 74 MB of
    // JSON: 300-343 ms against zlib -6's 567-727 ms, 1.15x its size; a loaded machine), in
    // pieces of at most 1 GiB, one gzip member each
    // (every reader inflates concatenated members as one stream).
    constexpr int kLevel = 5;
    struct Free {
      void operator()(libdeflate_compressor* c) const noexcept { libdeflate_free_compressor(c); }
    };
    const std::unique_ptr<libdeflate_compressor, Free> c(libdeflate_alloc_compressor(kLevel));
    if (!c) fail(path, "gzip: cannot initialise libdeflate");
    constexpr std::size_t kPiece = std::size_t{1} << 30;
    std::size_t pos = 0;
    std::vector<char> buf;
    do {
      const std::size_t n = std::min(text.size() - pos, kPiece);
      buf.resize(libdeflate_gzip_compress_bound(c.get(), n));
      const std::size_t made = libdeflate_gzip_compress(c.get(), text.data() + pos, n, buf.data(), buf.size());
      if (made == 0) fail(path, "gzip: compression failed");
      put(buf.data(), made);
      pos += n;
    } while (pos < text.size());
  }
  if (std::fflush(f.get()) != 0) fail(path, std::string("cannot write: ") + std::strerror(errno));
  std::FILE* raw = f.release();
  if (std::fclose(raw) != 0) fail(path, std::string("cannot write: ") + std::strerror(errno));
}

}  // namespace io

using io::fail;
using io::Place;
using io::Writer;
using io::write_file;
using io::write_graph;

std::string to_json(const Graph& graph) {
  Writer w(Writer::Mode::kSave);
  write_graph(w, graph);
  return std::move(w.out);
}

void save_graph(const Graph& graph, const std::string& path) {
  std::string text;
  try {
    text = to_json(graph);
  } catch (const GraphError& e) {
    fail(path, e.what());
  }
  // ".gz" in any case (x.JSON.GZ too), as gzip itself and file managers see it.
  const auto lower = [](char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; };
  const bool gz = path.size() >= 3 && path[path.size() - 3] == '.' && lower(path[path.size() - 2]) == 'g' &&
                  lower(path[path.size() - 1]) == 'z';
  write_file(path, text, gz);
}

std::string value_to_json(const Value& value) {
  Writer w(Writer::Mode::kDisplay);
  w.value(value, Place{Place::kNone, nullptr, "value", false}, 1);
  return std::move(w.out);
}

}  // namespace nodemeta::graph
