// src/graph/input.h: Input, the JSON text of one load followed by simdjson's padding.
// Private to nodemeta_graph.
#ifndef NODEMETA_SRC_GRAPH_INPUT_H_
#define NODEMETA_SRC_GRAPH_INPUT_H_

#include <unistd.h>
#include <sys/mman.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>

#include "io_internal.h"

namespace nodemeta::graph::io {

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
  // For the parallel parse (split.cpp), which writes a few bytes between node boundaries
  // and puts them back.
  char* mutable_data() noexcept { return data_; }
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
  // Faults in the first `n` bytes of the allocation now, on the task arena's threads (8 MiB
  // each, MADV_POPULATE_WRITE): for a size known to be true (a regular file's), where a
  // fault per 4 KiB page on one thread was a third of loading a large file. Does nothing
  // where populating is not available (the pages then fault in as they are written).
  void populate_in_parallel(std::size_t n) noexcept;

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
  // Room for `n` more bytes, allocated but not touched: for a writer given a size that may
  // be a lie, whose pages then fault in only as far as it really writes.
  char* untouched_tail(std::size_t n) {
    ensure(n, false);
    return data_ + size_;
  }
  // Forgets the bytes written, keeping the allocation.
  void clear() noexcept { size_ = 0; }
  void append(const char* p, std::size_t n) {
    if (n > kMaxBytes) throw std::bad_alloc();
    std::memcpy(tail(n), p, n);
    size_ += n;
  }
  // Zeroes the padding (simdjson reads it; it must be initialised for the sanitizers).
  // Populates nothing: after libdeflate's whole-buffer inflate the text is resident already.
  void finish() {
    ensure(0, false);
    std::memset(data_ + size_, 0, simdjson::SIMDJSON_PADDING);
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
  static constexpr std::size_t kStep = std::size_t{8} << 20;
  static constexpr int kPopulateWrite = 23;  // MADV_POPULATE_WRITE, absent from older headers
  void populate(std::size_t upto) noexcept {
#if defined(__linux__)
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

}  // namespace nodemeta::graph::io

#endif  // NODEMETA_SRC_GRAPH_INPUT_H_
