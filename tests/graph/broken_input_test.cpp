// The broken-input suite: every file in data/broken/ fails to load with one clear line
// naming the file and the place, and leaves nothing behind.
#include <gtest/gtest.h>

#include <cctype>
#include <filesystem>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include "nodemeta/graph/graph_io.h"

namespace nodemeta::graph {
namespace {

const std::string kBroken = std::string(NODEMETA_TEST_DATA_DIR) + "/broken";

std::vector<std::pair<std::string, std::string>> cases() {
  std::vector<std::pair<std::string, std::string>> out;
  std::ifstream in(kBroken + "/EXPECTED.tsv");
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    const auto tab = line.find('\t');
    out.emplace_back(line.substr(0, tab), line.substr(tab + 1));
  }
  return out;
}

class BrokenInputTest : public ::testing::TestWithParam<std::pair<std::string, std::string>> {};

TEST_P(BrokenInputTest, FailsWithOneLineNamingFileAndPlace) {
  const auto& [file, expected] = GetParam();
  const std::string path = kBroken + "/" + file;
  try {
    Graph g = load_graph(path);
    FAIL() << file << " loaded (" << g.size() << " nodes) but should not";
  } catch (const GraphError& e) {
    const std::string what = e.what();
    EXPECT_EQ(what.rfind(path + ": ", 0), 0U) << what;
    EXPECT_NE(what.find(expected), std::string::npos) << "expected '" << expected << "' in: " << what;
    EXPECT_EQ(what.find('\n'), std::string::npos) << what;
  }
}

INSTANTIATE_TEST_SUITE_P(Files, BrokenInputTest, ::testing::ValuesIn(cases()),
                         [](const auto& param_info) {
                           std::string n = param_info.param.first;
                           for (char& c : n) {
                             if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
                           }
                           return n;
                         });

TEST(BrokenInputSuiteTest, HasEveryCategory) { EXPECT_GE(cases().size(), 20U); }

TEST(BrokenInputSuiteTest, MissingFileAndDirectory) {
  try {
    load_graph(kBroken + "/no_such_file.json");
    FAIL();
  } catch (const GraphError& e) {
    EXPECT_NE(std::string(e.what()).find("no_such_file.json: cannot open: No such file"),
              std::string::npos)
        << e.what();
  }
  try {
    load_graph(kBroken);
    FAIL();
  } catch (const GraphError& e) {
    EXPECT_NE(std::string(e.what()).find("is a directory"), std::string::npos) << e.what();
  }
}

TEST(BrokenInputSuiteTest, UnwritableOutputIsAnError) {
  Graph g;
  EXPECT_THROW(save_graph(g, kBroken + "/no_such_dir/out.json"), GraphError);
}

}  // namespace
}  // namespace nodemeta::graph
