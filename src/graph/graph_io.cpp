// Graph files: reading (bounded input, simdjson DOM, values shared by content) and writing
// (a direct serializer). See graph_io.h for the contract and docs/design.md ("Graph files").
#include "nodemeta/graph/graph_io.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <fstream>
#include <limits>
#include <memory>
#include <new>
#include <span>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>
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

namespace nodemeta::graph {
namespace {

std::string printable(std::string_view s);

// Every GraphError is one line: control characters in the file name or the message (a key,
// a node name, a parser's excerpt of the input) are escaped.
[[noreturn]] void fail(std::string_view source, std::string_view message) {
  throw GraphError(printable(source) + ": " + printable(message));
}

std::string limit_advice() {
  return "raise it with --max-input-bytes, or LoadOptions::max_input_bytes";
}

void check_options(std::string_view source, const LoadOptions& load) {
  if (load.max_input_bytes > LoadOptions::kMaxInputBytesCeiling) {
    fail(source, "max_input_bytes " + std::to_string(load.max_input_bytes) +
                     " is over the parser's ceiling of " +
                     std::to_string(LoadOptions::kMaxInputBytesCeiling) + " bytes");
  }
  if (load.max_depth < 5 || load.max_depth > LoadOptions::kMaxDepthCeiling) {
    fail(source, "max_depth " + std::to_string(load.max_depth) + " is outside 5.." +
                     std::to_string(LoadOptions::kMaxDepthCeiling) +
                     " (a node's metadata value sits at depth 5)");
  }
}

// ---- input: JSON text followed by simdjson's padding ------------------------------------

// A growable byte buffer from malloc/realloc. Large blocks are mmap'ed by glibc and grown by
// mremap, so growth neither copies nor momentarily doubles the resident size: while a
// gzip stream is inflated, resident memory is what was inflated so far.
class Input {
 public:
  Input() = default;
  Input(const Input&) = delete;
  Input& operator=(const Input&) = delete;
  ~Input() { std::free(data_); }

  const char* data() const noexcept { return data_; }
  std::size_t size() const noexcept { return size_; }

  // Room for `n` more bytes (and the padding after them), about to be written: returns where
  // they go.
  char* tail(std::size_t n) {
    ensure(n, true);
    return data_ + size_;
  }
  // Room for `n` more bytes, allocated but not touched (a size hint that may be a lie must
  // not become resident memory).
  void reserve(std::size_t n) { ensure(n, false); }

 private:
  void ensure(std::size_t n, bool writing) {
    if (n > kMaxBytes - size_) throw std::bad_alloc();
    const std::size_t need = size_ + n + simdjson::SIMDJSON_PADDING;
    if (need > capacity_) {
      std::size_t cap = std::max(need, capacity_ + capacity_ / 2);
      void* p = std::realloc(data_, cap);
      if (p == nullptr) throw std::bad_alloc();
      data_ = static_cast<char*>(p);
      capacity_ = cap;
      populated_ = 0;
    }
    if (writing) populate(size_ + n);
  }

 public:
  // Bytes that fit before the buffer must grow (reads and inflate steps use them first, so
  // a buffer sized exactly in advance is never reallocated).
  std::size_t available() const noexcept {
    return capacity_ > size_ + simdjson::SIMDJSON_PADDING ? capacity_ - size_ - simdjson::SIMDJSON_PADDING : 0;
  }
  // Room for up to `want` bytes (at least one), within what is already allocated if any.
  std::size_t room(std::size_t want) const noexcept {
    const std::size_t a = available();
    return a != 0 ? std::min(a, want) : want;
  }
  void grow(std::size_t n) noexcept { size_ += n; }
  void append(const char* p, std::size_t n) {
    if (n > kMaxBytes) throw std::bad_alloc();
    std::memcpy(tail(n), p, n);
    size_ += n;
  }
  // Zeroes the padding (simdjson reads it; it must be initialised for the sanitizers).
  void finish() {
    std::memset(tail(0) + 0, 0, simdjson::SIMDJSON_PADDING);
  }
  void release() noexcept {
    std::free(data_);
    data_ = nullptr;
    size_ = capacity_ = 0;
  }

 private:
  // Large buffers are filled a step ahead with MADV_POPULATE_WRITE (Linux 5.14+): one call
  // faults in 8 MiB, where writing into fresh pages took a fault per 4 KiB page, the larger
  // part of inflating a gzip bomb up to the limit on a virtual machine. Elsewhere (older
  // kernels, other systems) the pages fault in as they are written, as before.
  void populate(std::size_t upto) noexcept {
#if defined(__linux__)
    constexpr std::size_t kStep = std::size_t{8} << 20;
    constexpr int kPopulateWrite = 23;  // MADV_POPULATE_WRITE, absent from older headers
    if (capacity_ < 2 * kStep || upto <= populated_ || populate_failed_) return;
    const std::uintptr_t page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
    const auto base = reinterpret_cast<std::uintptr_t>(data_);
    std::uintptr_t from = (base + populated_ + page - 1) & ~(page - 1);
    const std::uintptr_t to = std::min(base + capacity_, base + upto + kStep) & ~(page - 1);
    if (to > from && ::madvise(reinterpret_cast<void*>(from), to - from, kPopulateWrite) != 0) {
      populate_failed_ = true;
      return;
    }
    populated_ = to - base;
#else
    (void)upto;
#endif
  }

  std::size_t populated_ = 0;
  bool populate_failed_ = false;
  static constexpr std::size_t kMaxBytes = std::size_t{1} << 40;
  char* data_ = nullptr;
  std::size_t size_ = 0;
  std::size_t capacity_ = 0;
};

class File {
 public:
  explicit File(const std::string& path) : fd_(::open(path.c_str(), O_RDONLY | O_CLOEXEC)) {
    if (fd_ < 0) fail(path, std::string("cannot open: ") + std::strerror(errno));
  }
  File(const File&) = delete;
  File& operator=(const File&) = delete;
  ~File() { ::close(fd_); }
  int fd() const noexcept { return fd_; }

 private:
  int fd_;
};

constexpr std::size_t kChunk = std::size_t{1} << 18;  // 256 KiB reads and inflate steps

// Reads up to n bytes; 0 at end of file. Retries EINTR; throws on an I/O error.
std::size_t read_some(const std::string& path, int fd, char* p, std::size_t n) {
  for (;;) {
    const ssize_t r = ::read(fd, p, n);
    if (r >= 0) return static_cast<std::size_t>(r);
    if (errno == EINTR) continue;
    if (errno == EISDIR) fail(path, "cannot read: is a directory");
    fail(path, std::string("cannot read: ") + std::strerror(errno));
  }
}

// "1 byte", "2 bytes".
std::string bytes_text(std::uint64_t n) { return std::to_string(n) + (n == 1 ? " byte" : " bytes"); }

[[noreturn]] void fail_too_large(const std::string& path, std::uint64_t limit, bool inflated) {
  fail(path, std::string(inflated ? "inflates to more than " : "is larger than ") + bytes_text(limit) +
                 ", the input limit (" + limit_advice() + ")");
}

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

void inflate_into(const std::string& path, int fd, const char* first, std::size_t first_size,
                  std::uint64_t file_size, const LoadOptions& load, Input& out) {
  const ProgressReporter progress(load);
  const std::uint64_t limit = load.max_input_bytes;
  z_stream zs{};
  if (inflateInit2(&zs, 15 + 16) != Z_OK) fail(path, "gzip: cannot initialise zlib");
  struct End {
    z_stream* zs;
    ~End() { inflateEnd(zs); }
  } end{&zs};
  auto in = std::make_unique<char[]>(kChunk);
  std::memcpy(in.get(), first, first_size);
  zs.next_in = reinterpret_cast<Bytef*>(in.get());
  zs.avail_in = static_cast<uInt>(first_size);
  std::uint64_t read_total = first_size;
  std::uint64_t next_report = 0;
  bool eof = false;
  bool member_done = false;
  for (;;) {
    if (zs.avail_in == 0 && !eof) {
      const std::size_t n = read_some(path, fd, in.get(), kChunk);
      eof = n == 0;
      read_total += n;
      zs.next_in = reinterpret_cast<Bytef*>(in.get());
      zs.avail_in = static_cast<uInt>(n);
      if (progress && read_total >= next_report) {
        progress(LoadProgress::Phase::kRead, read_total, file_size);
        next_report = read_total + (std::uint64_t{1} << 22);
      }
    }
    if (zs.avail_in == 0 && eof) {
      if (member_done) return;
      fail(path, "truncated gzip data: the stream ends after " + std::to_string(read_total) +
                     " of its compressed bytes without its end marker");
    }
    if (member_done) {
      // Zero bytes after a member are padding (tape and block tools add it; GNU gzip
      // accepts it): skipped. Anything else starts a further gzip member.
      while (zs.avail_in > 0 && *zs.next_in == 0) {
        ++zs.next_in;
        --zs.avail_in;
      }
      if (zs.avail_in == 0) continue;
      if (inflateReset(&zs) != Z_OK) fail(path, "gzip: cannot reset zlib");
      member_done = false;
    }
    // One byte over the limit is allowed in, to tell "exactly the limit" from "over it".
    const std::uint64_t room = out.room(static_cast<std::size_t>(std::min<std::uint64_t>(kChunk, limit + 1 - out.size())));
    char* dst = out.tail(static_cast<std::size_t>(room));
    zs.next_out = reinterpret_cast<Bytef*>(dst);
    zs.avail_out = static_cast<uInt>(room);
    const int ret = inflate(&zs, Z_NO_FLUSH);
    out.grow(static_cast<std::size_t>(room - zs.avail_out));
    if (out.size() > limit) fail_too_large(path, limit, true);
    if (ret == Z_STREAM_END) {
      member_done = true;
      continue;
    }
    if (ret == Z_OK) continue;
    if (ret == Z_BUF_ERROR && zs.avail_in == 0) continue;  // needs more input
    fail(path, std::string("corrupt gzip data: ") + (zs.msg ? zs.msg : "error " + std::to_string(ret)));
  }
}

// Reads `path` whole (inflating gzip) into `out`, within load.max_input_bytes.
void read_input(const std::string& path, const LoadOptions& load, Input& out) {
  File file(path);
  struct stat st{};
  if (::fstat(file.fd(), &st) != 0) fail(path, std::string("cannot stat: ") + std::strerror(errno));
  if (S_ISDIR(st.st_mode)) fail(path, "cannot read: is a directory");
  const bool regular = S_ISREG(st.st_mode);
  const std::uint64_t file_size = regular ? static_cast<std::uint64_t>(st.st_size) : 0;
  // The first bytes decide between plain and gzip.
  std::array<char, 2> head{};
  std::size_t got = 0;
  while (got < head.size()) {
    const std::size_t n = read_some(path, file.fd(), head.data() + got, head.size() - got);
    if (n == 0) break;
    got += n;
  }
  const bool gzip = got == 2 && static_cast<unsigned char>(head[0]) == 0x1f &&
                    static_cast<unsigned char>(head[1]) == 0x8b;
  if (gzip) {
    // The trailer's ISIZE (the inflated size mod 2^32) sizes the buffer once when it is
    // honest; growth covers the rest.
    if (regular && file_size >= 18) {
      unsigned char tail[4];
      if (::pread(file.fd(), tail, 4, static_cast<off_t>(file_size - 4)) == 4) {
        const std::uint64_t isize = tail[0] | (tail[1] << 8) | (tail[2] << 16) |
                                    (static_cast<std::uint64_t>(tail[3]) << 24);
        // Deflate inflates at most ~1032:1, so a larger claim is a lie not worth reserving.
        const std::uint64_t plausible = std::min(isize, file_size * 1032 + (1 << 16));
        try {
          out.reserve(static_cast<std::size_t>(std::min(plausible, load.max_input_bytes) + 1));
        } catch (const std::bad_alloc&) {  // a hint only: growth covers the rest
        }
      }
    }
    inflate_into(path, file.fd(), head.data(), got, file_size, load, out);
  } else {
    if (file_size > load.max_input_bytes) fail_too_large(path, load.max_input_bytes, false);
    out.reserve(regular ? static_cast<std::size_t>(file_size) + 1 : kChunk);
    out.append(head.data(), got);
    const ProgressReporter progress(load);
    std::uint64_t next_report = 0;
    for (;;) {
      const std::uint64_t room =
          out.room(static_cast<std::size_t>(std::min<std::uint64_t>(kChunk, load.max_input_bytes + 1 - out.size())));
      const std::size_t n = read_some(path, file.fd(), out.tail(static_cast<std::size_t>(room)),
                                      static_cast<std::size_t>(room));
      if (n == 0) break;
      out.grow(n);
      if (out.size() > load.max_input_bytes) fail_too_large(path, load.max_input_bytes, false);
      if (progress && out.size() >= next_report) {
        progress(LoadProgress::Phase::kRead, out.size(), file_size);
        next_report = out.size() + (std::uint64_t{1} << 24);
      }
    }
  }
  out.finish();
}

// ---- diagnosis of a document simdjson refused ------------------------------------------

// A key or name as messages show it: control characters escaped, so a message stays one
// line and an embedded NUL cannot cut it short.
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

// ---- values shared by content -----------------------------------------------------------

// Hash-consing: every string, list and dict the loader builds goes through one table, so
// equal ones share one immutable box. Children are shared before their parent, so a
// parent's equality and hash only look at its children's identities (box addresses).
// A value being built: a shared (interned) box by reference, or an inline scalar. Passing
// references instead of Values spares an atomic reference-count update per element.
struct Item {
  const Value* shared = nullptr;
  Value scalar;
  const Value& get() const noexcept { return shared != nullptr ? *shared : scalar; }
};

class Interner {
 public:
  Interner() : slots_(1024) {}

  const Value& string(std::string_view s) {
    const std::uint64_t h = string_hash(s);
    return find_or_add(h, [&](const Value& v) {
      const std::string* p = v.get_if<std::string>();
      return p != nullptr && *p == s;
    }, [&] { return Value(std::string(s)); });
  }

  // The shared list of `items`; builds one only if no equal list was seen before.
  const Value& list(std::span<const Item> items) {
    std::uint64_t h = mix(0x11, items.size());
    for (const Item& v : items) h = mix(h, identity(v.get()));
    return find_or_add(h, [&](const Value& v) {
      const Value::List* p = v.get_if<Value::List>();
      if (p == nullptr || p->size() != items.size()) return false;
      for (std::size_t i = 0; i < items.size(); ++i) {
        if (!same((*p)[i], items[i].get())) return false;
      }
      return true;
    }, [&] {
      Value::List l;
      l.reserve(items.size());
      for (const Item& v : items) l.push_back(v.get());
      return Value::list(std::move(l));
    });
  }

  // The shared dict of `items` (keys unique, in order); builds one only if it is new.
  const Value& dict(std::span<const std::pair<std::string_view, Item>> items) {
    std::uint64_t h = mix(0x22, items.size());
    for (const auto& [k, v] : items) {
      h = mix(mix(h, nodemeta::detail::key_hash(k.data(), k.size())), identity(v.get()));
    }
    return find_or_add(h, [&](const Value& v) {
      const Value::Dict* p = v.get_if<Value::Dict>();
      if (p == nullptr || p->size() != items.size()) return false;
      for (std::size_t i = 0; i < items.size(); ++i) {
        if ((*p)[i].first != items[i].first || !same((*p)[i].second, items[i].second.get())) return false;
      }
      return true;
    }, [&] {
      Value::Dict d;
      d.reserve(items.size());
      for (const auto& [k, v] : items) d.emplace_back(std::string(k), v.get());
      return Value::dict(std::move(d));
    });
  }

 private:
  struct Slot {
    std::uint64_t hash = 0;
    const Value* value = nullptr;  // into pool_; null: empty
  };

  static std::uint64_t mix(std::uint64_t a, std::uint64_t b) noexcept {
    return nodemeta::detail::key_hash_mix(a ^ 0x2d358dccaa6c78a5ull, b ^ 0x8bb84b93962eacc9ull);
  }

  // What identifies a Value among the shared ones: its scalar bits, or its box's address.
  static std::uint64_t identity(const Value& v) noexcept {
    switch (v.kind()) {
      case Value::Kind::kNone: return 0x9e37;
      case Value::Kind::kBool: return v.as<bool>() ? 0x7f4a : 0x6c8e;
      case Value::Kind::kInt: return static_cast<std::uint64_t>(v.as<std::int64_t>()) * 3 + 1;
      case Value::Kind::kDouble: return std::bit_cast<std::uint64_t>(v.as<double>()) * 5 + 2;
      case Value::Kind::kString: return reinterpret_cast<std::uintptr_t>(v.get_if<std::string>());
      case Value::Kind::kList: return reinterpret_cast<std::uintptr_t>(v.get_if<Value::List>());
      case Value::Kind::kDict: return reinterpret_cast<std::uintptr_t>(v.get_if<Value::Dict>());
      case Value::Kind::kObject: break;
    }
    return 0;
  }
  static bool same(const Value& a, const Value& b) noexcept {
    if (a.kind() != b.kind()) return false;
    if (a.kind() == Value::Kind::kDouble) {
      return std::bit_cast<std::uint64_t>(a.as<double>()) == std::bit_cast<std::uint64_t>(b.as<double>());
    }
    return identity(a) == identity(b);
  }

  // A long string is hashed from its length and 16 samples of 16 bytes (its ends and 14
  // evenly spaced places): hashing every byte of every stack trace cost more than parsing
  // them. Equal hashes are confirmed by comparing the whole strings.
  static std::uint64_t string_hash(std::string_view s) noexcept {
    constexpr std::size_t kWhole = 512;
    if (s.size() <= kWhole) return nodemeta::detail::key_hash(s.data(), s.size()) ^ 0x5a17;
    std::uint64_t h = mix(0x33, s.size());
    const std::size_t step = (s.size() - 16) / 15;
    for (std::size_t k = 0; k < 16; ++k) {
      const char* p = s.data() + (k == 15 ? s.size() - 16 : k * step);
      h = mix(h, nodemeta::detail::key_hash(p, 16));
    }
    return h;
  }

  template <class Eq, class Make>
  const Value& find_or_add(std::uint64_t h, Eq&& eq, Make&& make) {
    const std::size_t mask = slots_.size() - 1;
    std::size_t i = static_cast<std::size_t>(h) & mask;
    int compared = 0;
    for (;; i = (i + 1) & mask) {
      Slot& s = slots_[i];
      if (s.value == nullptr) break;
      if (s.hash == h) {
        if (eq(*s.value)) return *s.value;
        // Many different values with one hash (sampled strings built to collide): stop
        // sharing this one rather than compare against all of them.
        if (++compared == kMaxCompares) return pool_.emplace_back(make());
      }
    }
    const Value& v = pool_.emplace_back(make());
    slots_[i] = Slot{h, &v};
    if (++used_ * 2 > slots_.size()) grow();
    return v;
  }
  void grow() {
    std::vector<Slot> old(slots_.size() * 2);
    old.swap(slots_);
    const std::size_t mask = slots_.size() - 1;
    for (const Slot& s : old) {
      if (s.value == nullptr) continue;
      std::size_t i = static_cast<std::size_t>(s.hash) & mask;
      while (slots_[i].value != nullptr) i = (i + 1) & mask;
      slots_[i] = s;
    }
  }

  static constexpr int kMaxCompares = 4;
  std::deque<Value> pool_;  // every shared value, at a stable address
  std::vector<Slot> slots_;
  std::size_t used_ = 0;
};

// ---- DOM -> Graph ------------------------------------------------------------------------

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

// Typed views of an element whose type() was checked (simdjson_result temporaries upset
// GCC 12's dangling-pointer analysis).
simdjson::dom::array array_of(element e) noexcept { return simdjson::dom::array(e); }
simdjson::dom::object object_of(element e) noexcept { return simdjson::dom::object(e); }
std::string_view string_of(element e) noexcept { return std::string_view(e); }

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
    Value::Dict attrs;
    std::vector<std::string_view> attr_keys;  // into the document: stable, unlike attrs' strings
    KeyIndex attr_index;
    for (auto field : top) {
      const Step step{nullptr, field.key, 0, false};
      if (field.key == "nodes") {
        if (have_nodes) {  // a repeat must be identical; the first is kept
          if (!same_json(nodes_el, field.value, &step)) {
            fail_at("nodes", "key 'nodes' given twice with different values");
          }
          continue;
        }
        nodes_el = field.value;
        have_nodes = true;
        continue;
      }
      Value v = value(field.value, &step, 2);
      const std::size_t prev = attr_index.seen(field.key, attr_keys.size(),
                                               [&](std::size_t i) { return attr_keys[i]; });
      if (prev != KeyIndex::npos) {
        if (attrs[prev].second != v) {
          fail_at(printable(field.key), "key '" + printable(field.key) + "' given twice with different values");
        }
        continue;
      }
      attr_keys.push_back(field.key);
      attrs.emplace_back(std::string(field.key), std::move(v));
    }
    if (!have_nodes) fail_at("(top level)", "missing field 'nodes'");
    if (nodes_el.type() != element_type::ARRAY) fail_at("nodes", "expected an array, got " + kind_word(nodes_el));
    for (const auto& [name, v] : attrs) {  // the one graph attribute nodemeta's passes read
      if (name == "training" && !v.is_none() && v.kind() != Value::Kind::kBool) {
        fail_at("training", "expected true, false or null (the mode the graph was traced in), got " + kind_word(v));
      }
    }
    simdjson::dom::array nodes = array_of(nodes_el);
    std::size_t count = nodes.size();  // saturates at 0xFFFFFF: then count them
    if (count >= 0xFFFFFF) {
      count = 0;
      for ([[maybe_unused]] element e : nodes) ++count;
    }
    // A torch.fx graph ends with exactly one output node, which nothing reads.
    if (count == 0) fail_at("nodes", "no nodes (a graph has at least its output node, last)");
    count_ = count;
    options.expected_nodes = count;
    Graph graph(std::move(options));
    graph.attrs() = std::move(attrs);
    const ProgressReporter progress(load_);
    std::size_t i = 0;
    for (element n : nodes) {
      add_node(graph, n, i);
      ++i;
      if (progress && (i % 4096 == 0 || i == count)) progress(LoadProgress::Phase::kBuild, i, count);
    }
    return graph;
  }

 private:
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

  void add_node(Graph& graph, element n, std::size_t i) {
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
    if (auto prev = graph.find(name)) {
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
      graph.add_node(std::string(name), std::string(op), std::string(target), inputs_, kv_);
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
  simdjson::dom::parser parser;
  const element root = parse_document(parser, input, source, load);
  ProgressReporter{load}(LoadProgress::Phase::kParse, 1, 1);
  GraphBuilder builder(source, options, load);
  return builder.build(root, std::move(options));
}

// ---- Graph -> JSON ------------------------------------------------------------------------

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

// Writes `text` to `path`, gzip-compressed when asked, in pieces zlib's 32-bit sizes take.
// The file is opened only once the whole text is ready, so a graph that cannot be saved
// (NaN, invalid UTF-8, a user object) leaves the file untouched. The path is written through
// (symlinks, /dev/stdout, hard links, the file's mode and owner all behave as with any
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
    z_stream zs{};
    if (deflateInit2(&zs, 6, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK) {
      fail(path, "gzip: cannot initialise zlib");
    }
    struct End {
      z_stream* zs;
      ~End() { deflateEnd(zs); }
    } end{&zs};
    auto buf = std::make_unique<unsigned char[]>(kChunk);
    std::size_t pos = 0;
    int ret = Z_OK;
    do {
      const std::size_t n = std::min(text.size() - pos, kChunk);
      zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(text.data() + pos));
      zs.avail_in = static_cast<uInt>(n);
      pos += n;
      const int flush = pos == text.size() ? Z_FINISH : Z_NO_FLUSH;
      do {
        zs.next_out = buf.get();
        zs.avail_out = static_cast<uInt>(kChunk);
        ret = deflate(&zs, flush);
        if (ret == Z_STREAM_ERROR) fail(path, "gzip: compression failed");
        put(buf.get(), kChunk - zs.avail_out);
      } while (zs.avail_out == 0);
    } while (ret != Z_STREAM_END);
  }
  if (std::fflush(f.get()) != 0) fail(path, std::string("cannot write: ") + std::strerror(errno));
  std::FILE* raw = f.release();
  if (std::fclose(raw) != 0) fail(path, std::string("cannot write: ") + std::strerror(errno));
}

}  // namespace

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
  simdjson::dom::parser parser;
  return walk(parse_document(parser, input, path, load));
}
}  // namespace detail

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
