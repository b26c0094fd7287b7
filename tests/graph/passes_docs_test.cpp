// docs/passes.md against the tables the passes use (src/passes/internal.h), both ways: every
// operator family of the cost table with exactly the operators the cost model gives it,
// every element size, and fuse's activations. A name in the page but not in the code (or
// the other way round) fails with both lists, so the page cannot drift from the code.
#include <algorithm>
#include <cstdint>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include <gtest/gtest.h>

#include "passes/internal.h"

namespace nodemeta::passes {
namespace {

using Names = std::set<std::string>;

std::vector<std::string> doc_lines() {
  std::ifstream in(NODEMETA_PASSES_DOC);
  EXPECT_TRUE(in) << "cannot read " << NODEMETA_PASSES_DOC;
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

std::string trim(std::string_view s) {
  const auto b = s.find_first_not_of(" \t");
  if (b == std::string_view::npos) return {};
  return std::string(s.substr(b, s.find_last_not_of(" \t") - b + 1));
}

// The cells of a table row "| a | b |" (indented or not).
std::vector<std::string> cells(const std::string& row) {
  std::vector<std::string> out;
  const std::string r = trim(row);
  std::size_t start = 1;
  for (std::size_t bar; (bar = r.find('|', start)) != std::string::npos; start = bar + 1) {
    out.push_back(trim(std::string_view(r).substr(start, bar - start)));
  }
  return out;
}

// The body rows of the table whose header row starts with `header` (after indentation).
std::vector<std::vector<std::string>> table(const std::vector<std::string>& lines, std::string_view header) {
  std::vector<std::vector<std::string>> rows;
  auto it = std::find_if(lines.begin(), lines.end(), [&](const std::string& l) { return trim(l).starts_with(header); });
  EXPECT_NE(it, lines.end()) << "docs/passes.md has no table headed '" << header << "'";
  if (it == lines.end()) return rows;
  for (it += 2; it != lines.end() && trim(*it).starts_with("|"); ++it) rows.push_back(cells(*it));  // past |---|
  return rows;
}

// The names in backticks in `text` that are identifiers (operator names: not a qualified or
// templated name such as `nodemeta.fused.<pattern>`), or with `qualified`, names with dots too.
Names code_names(const std::string& text, bool qualified = false) {
  static const std::regex ident(R"([A-Za-z_][A-Za-z0-9_]*)");
  static const std::regex dotted(R"([A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*)");
  Names out;
  for (std::size_t open = text.find('`'); open != std::string::npos; open = text.find('`', open)) {
    const std::size_t close = text.find('`', open + 1);
    if (close == std::string::npos) break;
    const std::string name = text.substr(open + 1, close - open - 1);
    if (std::regex_match(name, qualified ? dotted : ident)) out.insert(name);
    open = close + 1;
  }
  return out;
}

template <class Range>
Names names_of(const Range& r) {
  return Names(std::begin(r), std::end(r));
}

// "" if equal; else what only one side has.
std::string difference(const Names& doc, const Names& code) {
  std::string only_doc, only_code;
  for (const std::string& n : doc) {
    if (!code.count(n)) only_doc += " " + n;
  }
  for (const std::string& n : code) {
    if (!doc.count(n)) only_code += " " + n;
  }
  if (only_doc.empty() && only_code.empty()) return {};
  return "in docs/passes.md only:" + (only_doc.empty() ? " -" : only_doc) +
         "; in the code only:" + (only_code.empty() ? " -" : only_code);
}

TEST(PassesDocsTest, OperatorFamiliesMatchTheCostModel) {
  const auto rows = table(doc_lines(), "| family (ops) |");
  ASSERT_GE(rows.size(), std::size(detail::kOpFamilies));
  std::set<std::string_view> documented;
  Names every_op;
  for (const auto& f : detail::kOpFamilies) every_op.insert(f.ops.begin(), f.ops.end());
  for (const auto& row : rows) {
    const std::string& first = row.at(0);
    const std::size_t colon = first.find(':');
    ASSERT_NE(colon, std::string::npos) << "a row of the cost table without a family label: " << first;
    const std::string label = first.substr(0, colon);
    const Names ops = code_names(first.substr(colon + 1), /*qualified=*/true);  // torchvision.ops...
    if (label == "anything else") {  // examples of operators without a formula
      for (const std::string& op : ops) EXPECT_FALSE(every_op.count(op)) << op << " has a family: not an example";
      continue;
    }
    const auto* family = std::find_if(std::begin(detail::kOpFamilies), std::end(detail::kOpFamilies),
                                      [&](const detail::OpFamily& f) { return f.label == label; });
    if (family == std::end(detail::kOpFamilies)) {
      ADD_FAILURE() << "docs/passes.md has a family '" << label << "' the cost model does not";
      continue;
    }
    EXPECT_TRUE(documented.insert(family->label).second) << "family '" << label << "' listed twice";
    EXPECT_EQ(difference(ops, names_of(family->ops)), "") << "family '" << label << "'";
  }
  for (const auto& f : detail::kOpFamilies) {
    EXPECT_TRUE(documented.count(f.label)) << "family '" << f.label << "' is not in docs/passes.md";
  }
}

TEST(PassesDocsTest, ElementSizesMatchTheCostModel) {
  const auto rows = table(doc_lines(), "| element size (bytes) | dtypes |");
  ASSERT_FALSE(rows.empty());
  std::map<std::string, std::int64_t> doc, code;
  for (const auto& row : rows) {
    const std::int64_t bytes = std::stoll(row.at(0));
    for (const std::string& dtype : code_names(row.at(1), /*qualified=*/true)) {
      EXPECT_TRUE(doc.emplace(dtype, bytes).second) << dtype << " listed twice";
    }
  }
  for (const auto& [dtype, bytes] : detail::kDtypeSizes) code.emplace(dtype, bytes);
  auto text = [](const std::map<std::string, std::int64_t>& m) {
    std::ostringstream s;
    for (const auto& [dtype, bytes] : m) s << dtype << " " << bytes << ", ";
    return s.str();
  };
  EXPECT_EQ(text(doc), text(code));
  // dtype_bytes reads the same table.
  for (const auto& [dtype, bytes] : code) EXPECT_EQ(detail::dtype_bytes(dtype), bytes) << dtype;
  EXPECT_EQ(detail::dtype_bytes("torch.float8_e4m3fn"), 0);  // the page's example of an unknown one
}

TEST(PassesDocsTest, FuseActivationsMatchTheFusePass) {
  // "act ∈ {`ReLU`, ...}" in the fuse section.
  std::string text;
  for (const std::string& l : doc_lines()) text += l + "\n";
  const std::size_t open = text.find("act ∈ {");
  ASSERT_NE(open, std::string::npos) << "docs/passes.md does not list fuse's activations (act ∈ {...})";
  const std::size_t close = text.find('}', open);
  ASSERT_NE(close, std::string::npos);
  Names code;
  for (const auto& a : detail::kFuseActivations) {
    const std::string_view m = a.module;
    code.insert(std::string(m.substr(m.rfind('.') + 1)));
  }
  EXPECT_EQ(difference(code_names(text.substr(open, close - open)), code), "");
}

}  // namespace
}  // namespace nodemeta::passes
