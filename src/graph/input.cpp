// Reading a graph file whole, within the input limit: plain text straight into the buffer,
// gzip handed to inflate.cpp. See graph_io.h for the limits' contract.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <string>

#include <oneapi/tbb/blocked_range.h>
#include <oneapi/tbb/global_control.h>
#include <oneapi/tbb/parallel_for.h>
#include <oneapi/tbb/partitioner.h>
#include <oneapi/tbb/task_arena.h>
#include <oneapi/tbb/task_group.h>

#include "input.h"
#include "io_internal.h"

namespace nodemeta::graph::io {

std::size_t load_threads() noexcept {
  return std::min<std::size_t>(static_cast<std::size_t>(std::max(1, tbb::this_task_arena::max_concurrency())),
                               tbb::global_control::active_value(tbb::global_control::max_allowed_parallelism));
}

void for_each_part(std::size_t n, const std::function<void(std::size_t)>& body) {
  tbb::task_group_context context(tbb::task_group_context::isolated);
  tbb::this_task_arena::isolate([&] {
    tbb::parallel_for(
        tbb::blocked_range<std::size_t>(0, n, 1),
        [&](const tbb::blocked_range<std::size_t>& r) {
          for (std::size_t k = r.begin(); k != r.end(); ++k) body(k);
        },
        tbb::simple_partitioner(), context);
  });
}

void Input::populate_in_parallel(std::size_t n) noexcept {
#if defined(__linux__)
  const std::uintptr_t page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
  const auto base = reinterpret_cast<std::uintptr_t>(data_);
  const std::uintptr_t from = (base + populated_ + page - 1) & ~(page - 1);
  const std::uintptr_t to = (base + std::min(n, capacity_)) & ~(page - 1);
  if (populate_failed_ || to <= from) return;
  const std::size_t chunks = (to - from + kStep - 1) / kStep;
  std::atomic<bool> failed{false};
  try {
    for_each_part(chunks, [&](std::size_t k) {
      const std::uintptr_t a = from + k * kStep;
      const std::uintptr_t b = std::min(to, a + kStep);
      if (::madvise(reinterpret_cast<void*>(a), b - a, kPopulateWrite) != 0) failed = true;
    });
  } catch (...) {  // oneTBB could not run it: the pages fault in as they are written
    return;
  }
  if (failed) {
    populate_failed_ = true;
    return;
  }
  populated_ = to - base;
#else
  (void)n;
#endif
}

namespace {

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


}  // namespace

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


[[noreturn]] void fail_too_large(const std::string& path, std::uint64_t limit, bool inflated) {
  fail(path, std::string(inflated ? "inflates to more than " : "is larger than ") + bytes_text(limit) +
                 ", the input limit (" + limit_advice() + ")");
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
        bool reserved = false;
        try {
          out.reserve(static_cast<std::size_t>(std::min(plausible, load.max_input_bytes) + 1));
          reserved = true;
        } catch (const std::bad_alloc&) {  // a hint only: growth covers the rest
        }
        // One member of honest size within the limit: libdeflate, whole (about twice zlib's
        // speed). Anything else falls through to the zlib stream, from the file's start.
        if (reserved && isize == plausible) {
          if (inflate_whole(path, file.fd(), file_size, isize, load, out)) {
            out.finish();
            return;
          }
          out.clear();
          if (::lseek(file.fd(), static_cast<off_t>(got), SEEK_SET) != static_cast<off_t>(got)) {
            fail(path, std::string("cannot seek: ") + std::strerror(errno));
          }
        }
      }
    }
    inflate_into(path, file.fd(), head.data(), got, file_size, load, out);
  } else {
    if (file_size > load.max_input_bytes) fail_too_large(path, load.max_input_bytes, false);
    out.reserve(regular ? static_cast<std::size_t>(file_size) + 1 : kChunk);
    // A large regular file's size is true (or the file changed meanwhile, which costs at most
    // what it said): its buffer is faulted in on every thread before it is read into.
    if (regular && load.parallel_min_bytes != 0 && file_size >= load.parallel_min_bytes && load_threads() > 1) {
      out.populate_in_parallel(static_cast<std::size_t>(file_size) + 1 + simdjson::SIMDJSON_PADDING);
    }
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

}  // namespace nodemeta::graph::io
