// Messages (one line each, naming the file and the place) and the diagnosis of a document
// simdjson refused: nlohmann's SAX parser re-reads it, keeping the JSON path, to say where
// and why.
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "input.h"
#include "io_internal.h"

namespace nodemeta::graph::io {

[[noreturn]] void fail(std::string_view source, std::string_view message) {
  throw GraphError(printable(source) + ": " + printable(message));
}

std::string limit_advice() {
  return "raise it with --max-input-bytes, or LoadOptions::max_input_bytes";
}

std::string bytes_text(std::uint64_t n) { return std::to_string(n) + (n == 1 ? " byte" : " bytes"); }

std::string printable(std::string_view s) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string r;
  r.reserve(s.size());
  for (std::size_t i = 0; i < s.size(); ++i) {
    const auto u = static_cast<unsigned char>(s[i]);
    const auto next = i + 1 < s.size() ? static_cast<unsigned char>(s[i + 1]) : 0;
    if (u < 0x20 || u == 0x7f) {  // C0 controls, DEL
      r += "\\u00";
      r += kHex[u >> 4];
      r += kHex[u & 15];
    } else if (u == 0xc2 && next >= 0x80 && next <= 0x9f) {  // C1 controls (U+0080-U+009F)
      r += "\\u00";
      r += kHex[next >> 4];
      r += kHex[next & 15];
      ++i;
    } else if (u == 0xe2 && next == 0x80 && i + 2 < s.size() &&
               (static_cast<unsigned char>(s[i + 2]) == 0xa8 || static_cast<unsigned char>(s[i + 2]) == 0xa9)) {
      r += static_cast<unsigned char>(s[i + 2]) == 0xa8 ? "\\u2028" : "\\u2029";  // line/paragraph separators
      i += 2;
    } else {
      r += s[i];
    }
  }
  return r;
}

// The JSON path of the place being read, rendered for messages. Long paths (deep nesting)
// keep their first and last steps.
std::string render_path(const std::vector<std::string>& steps) {
  std::string p;
  auto add = [&p](const std::string& s) {
    if (!p.empty() && s[0] != '[') p += '.';
    p += s;
  };
  if (steps.size() <= 12) {
    for (const auto& s : steps) add(s);
  } else {
    for (std::size_t i = 0; i < 6; ++i) add(steps[i]);
    p += "...(" + std::to_string(steps.size() - 9) + " more levels)...";
    for (std::size_t i = steps.size() - 3; i < steps.size(); ++i) add(steps[i]);
  }
  return p.empty() ? "(top level)" : p;
}

std::string depth_message(std::size_t max_depth) {
  return "nested deeper than " + std::to_string(max_depth) +
         " arrays/objects, the depth limit (raise it with --max-depth, or LoadOptions::max_depth)";
}

namespace {

// nlohmann's SAX parser (iterative) re-reads a document simdjson refused, keeping the path,
// to say where and why. It builds nothing.
class Diagnoser {
 public:
  using Json = nlohmann::json;
  explicit Diagnoser(std::size_t max_depth) : max_depth_(max_depth) {}

  bool null() { return value(); }
  bool boolean(bool) { return value(); }
  bool number_integer(Json::number_integer_t) { return value(); }
  bool number_unsigned(Json::number_unsigned_t u) {
    if (u > static_cast<Json::number_unsigned_t>(std::numeric_limits<std::int64_t>::max())) {
      return error("integer " + std::to_string(u) + " does not fit a 64-bit signed integer");
    }
    return value();
  }
  bool number_float(Json::number_float_t, const std::string& text) {
    if (text.find_first_of(".eE") == std::string::npos) {
      return error("integer " + text + " does not fit a 64-bit signed integer");
    }
    return value();
  }
  bool string(std::string& s) {
    if (frames_.size() == 3 && frames_[0].key == "nodes" && frames_[2].object &&
        frames_[2].key == "name") {
      node_name_ = s;
    }
    return value();
  }
  bool binary(Json::binary_t&) { return error("binary values are not JSON"); }
  bool start_object(std::size_t) { return open(true); }
  bool key(std::string& k) {
    frames_.back().key = std::move(k);
    return true;
  }
  bool end_object() { return close(); }
  bool start_array(std::size_t) { return open(false); }
  bool end_array() { return close(); }
  bool parse_error(std::size_t position, const std::string&, const nlohmann::detail::exception& ex) {
    std::string what = ex.what();
    if (auto p = what.find("] "); what.rfind("[json.exception", 0) == 0 && p != std::string::npos) {
      what.erase(0, p + 2);
    }
    message_ = "invalid JSON at byte " + std::to_string(position) +
               (frames_.empty() ? "" : " (in " + path() + ")") + ": " + what;
    return false;
  }
  const std::string& message() const { return message_; }

 private:
  struct Frame {
    bool object;
    std::size_t count = 0;
    std::string key{};
  };
  bool open(bool object) {
    if (frames_.size() >= max_depth_) return error(depth_message(max_depth_));
    frames_.push_back(Frame{object});
    if (frames_.size() == 3 && frames_[0].key == "nodes") node_name_.clear();
    return true;
  }
  bool close() {
    frames_.pop_back();
    return value();
  }
  bool value() {
    if (!frames_.empty() && !frames_.back().object) ++frames_.back().count;
    return true;
  }
  std::string path() const {
    std::vector<std::string> steps;
    for (const Frame& f : frames_) {
      steps.push_back(f.object ? printable(f.key) : "[" + std::to_string(f.count) + "]");
    }
    std::string p = render_path(steps);
    if (frames_.size() >= 3 && frames_[0].key == "nodes" && !node_name_.empty()) {
      p += " (node '" + printable(node_name_) + "')";
    }
    return p;
  }
  bool error(const std::string& what) {
    message_ = path() + ": " + what;
    return false;
  }

  std::size_t max_depth_;
  std::vector<Frame> frames_;
  std::string node_name_;
  std::string message_;
};

}  // namespace

[[noreturn]] void fail_parse(std::string_view source, const Input& input, std::size_t max_depth,
                             simdjson::error_code code) {
  if (code == simdjson::MEMALLOC) {
    fail(source, "not enough memory to parse " + std::to_string(input.size()) + " bytes of JSON");
  }
  const char* p = input.data() != nullptr ? input.data() : "";
  if (input.size() >= 3 && std::memcmp(p, "\xEF\xBB\xBF", 3) == 0) {
    fail(source, "invalid JSON at byte 1: the text starts with a UTF-8 byte order mark, which JSON "
                 "does not allow (save the file without it)");
  }
  // nlohmann's reader takes a NUL byte for the end of the input; a raw NUL is never valid JSON.
  if (const void* nul = std::memchr(p, 0, input.size()); nul != nullptr) {
    // Counted from 1, as nlohmann's positions are.
    fail(source, "invalid JSON at byte " + std::to_string(static_cast<const char*>(nul) - p + 1) +
                     ": a NUL byte (0x00), which JSON does not allow outside an escape");
  }
  Diagnoser d(max_depth);
  nlohmann::json::sax_parse(p, p + input.size(), &d, nlohmann::detail::input_format_t::json, true,
                            false);
  if (!d.message().empty()) fail(source, d.message());
  if (code == simdjson::DEPTH_ERROR) fail(source, depth_message(max_depth));
  fail(source, std::string("invalid JSON: ") + simdjson::error_message(code));
}

}  // namespace nodemeta::graph::io
