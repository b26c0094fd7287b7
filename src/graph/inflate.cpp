// Inflating a gzip stream (any number of members, zero padding between them) into the
// input buffer, refused as soon as it passes the input limit: a small "bomb" costs at most
// the limit in memory.
#include <libdeflate.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <string>

#include "input.h"
#include "io_internal.h"

namespace nodemeta::graph::io {

bool inflate_whole(const std::string& path, int fd, std::uint64_t file_size, std::uint64_t isize,
                   const LoadOptions& load, Input& out) {
  // The compressed file is held whole beside the text: only where it is at most 1/8 of the
  // claimed size (JSON graphs compress 5-60x), so a lie costs at most 1/8 of the limit more.
  if (isize == 0 || isize > load.max_input_bytes || file_size > isize / 8) return false;
  auto in = std::make_unique<char[]>(static_cast<std::size_t>(file_size));
  if (::lseek(fd, 0, SEEK_SET) != 0) return false;
  std::size_t got = 0;
  while (got < file_size) {
    const std::size_t n = read_some(path, fd, in.get() + got, static_cast<std::size_t>(file_size - got));
    if (n == 0) break;
    got += n;
  }
  if (got != file_size) return false;  // the file changed under us: the stream decides
  // libdeflate does not check a header CRC (FHCRC) that zlib refuses when wrong, and a file
  // must load or be refused whatever its compression ratio: such files (and any header flag
  // but FTEXT, FEXTRA, FNAME, FCOMMENT) take the zlib stream, which decides.
  constexpr unsigned char kFastFlags = 0x01 | 0x04 | 0x08 | 0x10;
  if (got < 10 || (static_cast<unsigned char>(in[3]) & ~kFastFlags) != 0) return false;
  struct Free {
    void operator()(libdeflate_decompressor* d) const noexcept { libdeflate_free_decompressor(d); }
  };
  const std::unique_ptr<libdeflate_decompressor, Free> d(libdeflate_alloc_decompressor());
  if (!d) throw std::bad_alloc();
  char* dst = out.untouched_tail(static_cast<std::size_t>(isize));
  std::size_t used_in = 0;
  std::size_t made = 0;
  const libdeflate_result r = libdeflate_gzip_decompress_ex(d.get(), in.get(), got, dst,
                                                            static_cast<std::size_t>(isize), &used_in, &made);
  if (r != LIBDEFLATE_SUCCESS || made != isize || used_in != got) return false;
  out.grow(made);
  ProgressReporter{load}(LoadProgress::Phase::kRead, file_size, file_size);
  return true;
}

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

}  // namespace nodemeta::graph::io
