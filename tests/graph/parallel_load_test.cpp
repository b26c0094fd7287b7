// Loading in parts (src/graph/split.cpp): the graph and every error are the serial load's,
// whatever the boundaries guessed and however many parts (1, 2, 3 and 8 threads). Each
// arena of n threads comes with a global_control of n, because the parts are bounded by
// both (the default limit is the machine's CPUs), so that a 2-CPU machine tests 3 and 8.
#include <gtest/gtest.h>
#include <oneapi/tbb/global_control.h>
#include <oneapi/tbb/task_arena.h>
#include <oneapi/tbb/task_group.h>

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>

#include <string>
#include <thread>
#include <vector>

#include "nodemeta/graph/graph_io.h"

namespace {
using namespace nodemeta::graph;

std::string node(int id, const std::string& meta_extra, bool output = false) {
  std::string inputs = id == 0 ? "[]" : "[" + std::to_string(id - 1) + "]";
  return "{\"id\":" + std::to_string(id) + ",\"name\":\"n" + std::to_string(id) + "\",\"op\":\"" +
         (output ? "output" : "call_function") + "\",\"target\":\"t\",\"inputs\":" + inputs +
         ",\"meta\":{\"stack_trace\":null,\"nn_module_stack\":null,\"tensor_meta\":null,\"val\":null,"
         "\"debug_handle\":" + std::to_string(id) + meta_extra + "}}";
}

// A graph of `n` nodes whose metadata holds text that looks like a node boundary: in a
// string, and in a list of objects whose first key is "id".
std::string doc(int n, const std::string& before, const std::string& after, const std::string& sep = ",") {
  std::string s = "{" + before + "\"nodes\":[";
  for (int i = 0; i < n; ++i) {
    if (i) s += sep;
    s += node(i, ",\"s\":\"x},{\\\"id\\\":1\",\"l\":[{\"id\":1},{\"id\":2}]", i + 1 == n);
  }
  return s + "]" + after + "}";
}

// A graph whose nodes' metadata hold a list of objects laid out as nodes are, the second
// one's id its node's: a boundary guessed there is followed by a real one with the next id.
std::string fooling_doc(int n) {
  std::string s = "{\"nodes\":[";
  for (int i = 0; i < n; ++i) {
    if (i) s += ",";
    s += node(i, ",\"l\":[{\"id\":0,\"name\":\"a\"},{\"id\":" + std::to_string(i) + ",\"name\":\"b\"}]", i + 1 == n);
  }
  return s + "]}";
}

std::string load(const std::string& json, std::size_t min_bytes, int threads, Graph* out = nullptr) {
  LoadOptions o;
  o.parallel_min_bytes = min_bytes;
  std::string r;
  tbb::task_arena arena(threads);
  const tbb::global_control parallelism(tbb::global_control::max_allowed_parallelism, threads);
  arena.execute([&] {
    try {
      Graph g = parse_graph(json, "doc", {}, o);
      r = "ok " + std::to_string(g.size());
      if (out) *out = std::move(g);
    } catch (const GraphError& e) {
      r = e.what();
    }
  });
  return r;
}

// Whether the document was loaded in parts, as graph_io.h lets a caller see it: the build's
// progress is reported once, at the end (the serial build reports every 4096 nodes, so
// these documents have more), and on the loading thread only.
bool loaded_in_parts(const std::string& json, std::size_t min_bytes, int threads) {
  LoadOptions o;
  o.parallel_min_bytes = min_bytes;
  std::vector<LoadProgress> build;
  bool other_thread = false;
  tbb::task_arena arena(threads);
  const tbb::global_control parallelism(tbb::global_control::max_allowed_parallelism, threads);
  arena.execute([&] {
    const auto me = std::this_thread::get_id();
    o.progress = [&](const LoadProgress& p) {
      if (std::this_thread::get_id() != me) other_thread = true;
      if (p.phase == LoadProgress::Phase::kBuild) build.push_back(p);
    };
    (void)parse_graph(json, "doc", {}, o);
  });
  EXPECT_FALSE(other_thread);
  EXPECT_FALSE(build.empty());
  return build.size() == 1 && build[0].done == build[0].total && build[0].total > 0;
}

void same_as_serial(const std::string& json) {
  Graph serial;
  const std::string want = load(json, 0, 1, &serial);
  for (int threads : {1, 2, 3, 8}) {
    Graph g;
    EXPECT_EQ(load(json, 256, threads, &g), want) << threads << " threads";
    if (want.rfind("ok", 0) == 0) {
      EXPECT_EQ(first_difference(serial, g), "") << threads << " threads";
    }
  }
}

TEST(ParallelLoad, EqualGraphsWithBoundariesInStringsAndNestedLists) {
  same_as_serial(doc(200, "\"model\":\"m\",", ""));
  same_as_serial(doc(200, "", ""));
  same_as_serial(doc(200, "", ",\"after\":[{\"id\":1},{\"id\":2}]"));   // keys after "nodes"
  same_as_serial(doc(200, "", "", " ,\n  "));                             // whitespace between nodes
}

TEST(ParallelLoad, TheSplitIsTakenWhereItShouldBe) {
  for (const std::string& d : {doc(5000, "\"model\":\"m\",", ""), doc(5000, "", ",\"after\":[{\"id\":1},{\"id\":2}]"),
                               doc(5000, "", "", " ,\n  ")}) {
    for (int threads : {2, 3, 8}) EXPECT_TRUE(loaded_in_parts(d, 256, threads)) << threads << " threads";
    EXPECT_FALSE(loaded_in_parts(d, 256, 1));        // one thread: whole
    EXPECT_FALSE(loaded_in_parts(d, 0, 8));          // never
    EXPECT_FALSE(loaded_in_parts(d, d.size() + 1, 8));  // smaller than the threshold
  }
  // Boundaries guessed inside a node are refused and the document is parsed whole.
  const std::string f = fooling_doc(5000);
  EXPECT_FALSE(loaded_in_parts(f, 256, 2));
  same_as_serial(f);
  // The threshold is the document's size in bytes: at exactly that size it splits.
  const std::string d = doc(5000, "", "");
  EXPECT_TRUE(loaded_in_parts(d, d.size(), 2));
}

TEST(ParallelLoad, NodesGivenTwiceOrInvalidFallBackToTheSerialMessage) {
  const std::string d = doc(200, "", "");
  same_as_serial(d.substr(0, d.size() - 1) + ",\"nodes\":[]}");
  for (std::size_t at = 1; at < 40; ++at) {
    std::string c = d;
    c[c.size() * at / 40] = "\"]{x}"[at % 5];
    same_as_serial(c);
  }
}

TEST(ParallelLoad, ErrorsInSeveralPartsReportTheFirstInDocumentOrder) {
  std::string d = doc(300, "", "");
  // A duplicate name late in the document and a wrong id later still.
  const auto dup = d.find("\"name\":\"n250\"");
  d.replace(dup, 13, "\"name\":\"n010\"");
  same_as_serial(d);
  const auto id = d.find("{\"id\":280,");
  d.replace(id, 10, "{\"id\":281,");
  same_as_serial(d);
}

TEST(ParallelLoad, DepthLimitIsExactAcrossParts) {
  for (std::size_t depth : {5, 6, 7, 8}) {
    std::string deep = ",\"d\":" + std::string(depth, '[') + "1" + std::string(depth, ']');
    std::string s = "{\"nodes\":[";
    for (int i = 0; i < 100; ++i) s += (i ? "," : "") + node(i, i == 60 ? deep : "", i == 99);
    s += "]}";
    for (int threads : {2, 8}) {
      LoadOptions o;
      o.max_depth = 10;
      LoadOptions p = o;
      o.parallel_min_bytes = 0;
      p.parallel_min_bytes = 256;
      std::string a, b;
      tbb::task_arena arena(threads);
      const tbb::global_control parallelism(tbb::global_control::max_allowed_parallelism, threads);
      arena.execute([&] {
        try { a = "ok " + std::to_string(parse_graph(s, "doc", {}, o).size()); } catch (const GraphError& e) { a = e.what(); }
        try { b = "ok " + std::to_string(parse_graph(s, "doc", {}, p).size()); } catch (const GraphError& e) { b = e.what(); }
      });
      EXPECT_EQ(a, b) << "depth " << depth << ", " << threads << " threads";
    }
  }
}

// Found by the review: a load inside a task group that is cancelled (another task failed)
// must still run every part (the parallel loops have their own context), or it would build
// from unparsed parts (a crash) or return a graph missing nodes.
TEST(ParallelLoad, ACancelledEnclosingTaskGroupSkipsNoPart) {
  const std::string d = doc(5000, "", "");
  for (bool cancel_in_build : {false, true}) {
    std::string got;
    bool in_parts = false;
    tbb::task_arena arena(4);
    const tbb::global_control parallelism(tbb::global_control::max_allowed_parallelism, 4);
    arena.execute([&] {
      tbb::task_group tg;
      tg.run([&] {
        LoadOptions o;
        o.parallel_min_bytes = 256;
        int builds = 0;
        o.progress = [&](const LoadProgress& p) {
          // Cancelled before the parse, or after it (so the build is what is cancelled).
          if (cancel_in_build && p.phase == LoadProgress::Phase::kParse && p.done == 1) tg.cancel();
          if (p.phase == LoadProgress::Phase::kBuild) ++builds;
        };
        if (!cancel_in_build) tg.cancel();
        try {
          got = "ok " + std::to_string(parse_graph(d, "doc", {}, o).size());
        } catch (const GraphError& e) {
          got = e.what();
        }
        in_parts = builds == 1;
      });
      tg.wait();
    });
    EXPECT_EQ(got, "ok 5000") << (cancel_in_build ? "cancelled in the build" : "cancelled before the parse");
    EXPECT_TRUE(in_parts);
  }
}

// Equal values in different parts share one box, as they do in a serial load.
TEST(ParallelLoad, ValuesAreSharedAcrossParts) {
  const std::string trace(8192, 'x');
  std::string s = "{\"nodes\":[";
  for (int i = 0; i < 5000; ++i) {
    std::string m = node(i, ",\"l\":[1,\"" + std::to_string(i % 3) + "\"]", i + 1 == 5000);
    m.replace(m.find("\"stack_trace\":null"), 18, "\"stack_trace\":\"" + trace + "\"");
    s += (i ? "," : "") + m;
  }
  s += "]}";
  ASSERT_TRUE(loaded_in_parts(s, 256, 8));
  for (int threads : {1, 2, 8}) {
    Graph g;
    ASSERT_EQ(load(s, threads == 1 ? 0 : 256, threads, &g), "ok 5000");
    std::set<const void*> traces, lists;
    for (const Node& n : g.nodes()) {
      const auto trace_value = n.meta.get("stack_trace");
      const auto list_value = n.meta.get("l");
      traces.insert(trace_value->get_if<std::string>());
      lists.insert(list_value->get_if<nodemeta::Value::List>());
    }
    EXPECT_EQ(traces.size(), 1u) << threads << " threads";
    EXPECT_EQ(lists.size(), 3u) << threads << " threads";
  }
}

// A tbb::global_control limit of one thread loads whole, whatever the arena's size.
TEST(ParallelLoad, GlobalControlBoundsTheParts) {
  const std::string d = doc(5000, "", "");
  {
    tbb::global_control one(tbb::global_control::max_allowed_parallelism, 1);
    EXPECT_FALSE(loaded_in_parts(d, 256, 4));
  }
  EXPECT_TRUE(loaded_in_parts(d, 256, 4));
}

// A large plain file (over 16 MiB, so its buffer is faulted in as several chunks on the
// arena's threads before it is read) loads as its text parses, at 1 and 4 threads.
TEST(ParallelLoad, LargePlainFileLoadsAsItsTextParses) {
  const std::string d = doc(80000, "\"model\":\"m\",", "");
  ASSERT_GT(d.size(), std::size_t{16} << 20);
  const std::string path = (std::filesystem::temp_directory_path() /
                            ("nodemeta_parallel_load_test_" + std::to_string(::getpid()) + ".json")).string();
  {
    std::ofstream out(path, std::ios::binary);
    out << d;
  }
  LoadOptions whole;
  whole.parallel_min_bytes = 0;
  const Graph want = parse_graph(d, path, {}, whole);
  for (int threads : {1, 4}) {
    tbb::task_arena arena(threads);
    const tbb::global_control parallelism(tbb::global_control::max_allowed_parallelism, threads);
    arena.execute([&] {
      int builds = 0;
      LoadOptions o;
      o.progress = [&](const LoadProgress& p) { builds += p.phase == LoadProgress::Phase::kBuild; };
      const Graph g = load_graph(path, {}, o);
      EXPECT_EQ(first_difference(want, g), "") << threads << " threads";
      EXPECT_EQ(builds == 1, threads > 1) << threads << " threads";
    });
  }
  std::remove(path.c_str());
}

// The parse-only floor (detail::parse_only) parses in parts too, and counts the document's
// values whatever the parts: the serial count at 1, 2, 3 and 8 threads, "nodes" last or not.
TEST(ParallelLoad, ParseOnlyCountsTheDocumentsValuesInParts) {
  const std::string path = (std::filesystem::temp_directory_path() /
                            ("nodemeta_parallel_load_test_floor_" + std::to_string(::getpid()) + ".json")).string();
  for (const std::string& d : {doc(5000, "\"model\":\"m\",", ""), doc(5000, "", ",\"after\":[{\"id\":1},{\"id\":2}]")}) {
    {
      std::ofstream out(path, std::ios::binary);
      out << d;
    }
    LoadOptions whole;
    whole.parallel_min_bytes = 0;
    const std::size_t want = detail::parse_only(path, whole);
    for (int threads : {1, 2, 3, 8}) {
      tbb::task_arena arena(threads);
      const tbb::global_control parallelism(tbb::global_control::max_allowed_parallelism, threads);
      arena.execute([&] {
        LoadOptions o;
        o.parallel_min_bytes = 256;
        EXPECT_EQ(detail::parse_only(path, o), want) << threads << " threads";
      });
    }
    ASSERT_TRUE(loaded_in_parts(d, 256, 2));
  }
  std::remove(path.c_str());
}

}  // namespace
