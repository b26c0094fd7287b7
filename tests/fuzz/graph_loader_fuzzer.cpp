// tests/fuzz/graph_loader_fuzzer.cpp: libFuzzer over the bytes of a graph file, plain or
// gzip, through load_graph (the entry point `nodemeta run` uses), built with ASAN + UBSAN by
// tests/fuzz/run_loader.sh. Each input is a file (an in-memory memfd, opened by path).
//
// Properties checked on every input, besides no crash, no sanitizer report and no hang:
// - an input that loads saves (to_json) and parses back to an identical graph, and saves to
//   the same text again (save is a function of the graph);
// - an input that is refused throws GraphError whose message starts with the file's path
//   and is one line; any other exception is a failure;
// - the limits hold: the input limit here is 1 MiB and the depth limit 64, so neither a
//   gzip bomb nor deep nesting can make a run slow or large;
// - loading in parts (parallel_min_bytes 64, in an arena of 3 threads: up to three parts
//   and two bridges, whatever the input's size) gives the same graph, or the same message,
//   as loading whole.
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include <oneapi/tbb/global_control.h>
#include <oneapi/tbb/task_arena.h>

#include "nodemeta/graph/graph_io.h"

namespace {

[[noreturn]] void failure(const std::string& what) {
  std::fprintf(stderr, "graph_loader_fuzzer: %s\n", what.c_str());
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace nodemeta::graph;
  const int fd = memfd_create("graph", MFD_CLOEXEC);
  if (fd < 0) failure("memfd_create failed");
  for (std::size_t done = 0; done < size;) {
    const ssize_t n = write(fd, data + done, size - done);
    if (n <= 0) failure("write to memfd failed");
    done += static_cast<std::size_t>(n);
  }
  const std::string path = "/proc/self/fd/" + std::to_string(fd);
  LoadOptions load;
  load.max_input_bytes = 1 << 20;
  load.max_depth = 64;
  load.parallel_min_bytes = 0;
  // The same file loaded in parts.
  LoadOptions in_parts = load;
  in_parts.parallel_min_bytes = 64;
  static tbb::task_arena arena(3);
  // The parts are bounded by the global limit too (by default the machine's CPUs).
  static const tbb::global_control parallelism(tbb::global_control::max_allowed_parallelism, 3);
  Graph parts_graph;
  std::string parts_error;
  bool parts_loaded = false;
  arena.execute([&] {
    try {
      parts_graph = load_graph(path, {}, in_parts);
      parts_loaded = true;
    } catch (const GraphError& e) {
      parts_error = e.what();
    } catch (const std::exception& e) {
      failure(std::string("unexpected exception loading in parts: ") + e.what());
    }
  });
  try {
    const Graph g = load_graph(path, {}, load);
    if (!parts_loaded) failure("loads whole but is refused in parts: " + parts_error);
    if (const std::string d = first_difference(g, parts_graph); !d.empty()) failure("loaded in parts differs: " + d);
    std::string text;
    try {
      text = to_json(g);
    } catch (const GraphError&) {
      failure("a loaded graph could not be saved");
    }
    LoadOptions back_load = load;
    back_load.max_input_bytes = LoadOptions::kMaxInputBytesCeiling;
    const Graph back = parse_graph(text, "saved", {}, back_load);
    const std::string diff = first_difference(g, back);
    if (!diff.empty()) failure("round trip differs: " + diff);
    if (to_json(back) != text) failure("saving the reloaded graph gives different text");
  } catch (const GraphError& e) {
    const std::string what = e.what();
    if (parts_loaded) failure("refused whole but loads in parts: " + what);
    if (parts_error != what) failure("refused in parts with another message: " + parts_error + " | " + what);
    if (what.rfind(path + ": ", 0) != 0) failure("error does not start with the path: " + what);
    if (what.find('\n') != std::string::npos) failure("error is not one line: " + what);
  } catch (const std::exception& e) {
    failure(std::string("unexpected exception: ") + e.what());
  }
  close(fd);
  return 0;
}
