#include "nodemeta/value.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>

namespace nodemeta {
namespace {

struct Shape {
  std::vector<int> dims;
  bool operator==(const Shape&) const = default;
};
struct Opaque {
  int x = 0;
};

TEST(ValueTest, DefaultIsNone) {
  const Value v;
  EXPECT_TRUE(v.is_none());
  EXPECT_EQ(v.kind(), Value::Kind::kNone);
  EXPECT_EQ(v, Value::none());
  EXPECT_EQ(v.type_name(), "none");
  EXPECT_EQ(v.repr(), "None");
}

TEST(ValueTest, IntegersAreInt64) {
  const Value a(3);
  const Value b(std::int64_t{-7});
  const Value c(static_cast<unsigned short>(9));
  EXPECT_EQ(a.kind(), Value::Kind::kInt);
  EXPECT_EQ(a.as<std::int64_t>(), 3);
  EXPECT_EQ(b.as<std::int64_t>(), -7);
  EXPECT_EQ(c.as<std::int64_t>(), 9);
  EXPECT_EQ(Value(std::numeric_limits<std::int64_t>::min()).as<std::int64_t>(),
            std::numeric_limits<std::int64_t>::min());
}

TEST(ValueTest, UnsignedAboveInt64MaxThrows) {
  EXPECT_EQ(Value(std::uint64_t{INT64_MAX}).as<std::int64_t>(), INT64_MAX);
  try {
    Value v(std::numeric_limits<std::uint64_t>::max());
    FAIL() << "expected std::overflow_error";
  } catch (const std::overflow_error& e) {
    EXPECT_NE(std::string(e.what()).find("18446744073709551615"), std::string::npos);
  }
}

TEST(ValueTest, ScalarsRoundTrip) {
  EXPECT_EQ(Value(true).as<bool>(), true);
  EXPECT_EQ(Value(false).as<bool>(), false);
  EXPECT_EQ(Value(2.5).as<double>(), 2.5);
  EXPECT_EQ(Value(1.5f).as<double>(), 1.5);
  EXPECT_EQ(Value("abc").as<std::string>(), "abc");
  EXPECT_EQ(Value(std::string("xyz")).as<std::string>(), "xyz");
  EXPECT_EQ(Value(std::string_view("sv")).as<std::string>(), "sv");
}

TEST(ValueTest, NullCStringThrows) {
  const char* null_string = nullptr;
  EXPECT_THROW(Value{null_string}, std::invalid_argument);
}

TEST(ValueTest, KindsNeverCompareEqualAcrossKinds) {
  EXPECT_NE(Value(1), Value(1.0));
  EXPECT_NE(Value(1), Value(true));
  EXPECT_NE(Value(0), Value());
  EXPECT_NE(Value("1"), Value(1));
}

TEST(ValueTest, AsWrongTypeThrowsBadValueCastNamingBothTypes) {
  const Value s("text");
  try {
    (void)s.as<std::int64_t>();
    FAIL() << "expected BadValueCast";
  } catch (const BadValueCast& e) {
    EXPECT_EQ(e.held(), "std::string");
    EXPECT_EQ(e.requested(), "std::int64_t");
    EXPECT_STREQ(e.what(), "value holds std::string, not std::int64_t");
  }
  EXPECT_THROW((void)Value(1).as<double>(), BadValueCast);
  EXPECT_THROW((void)Value().as<bool>(), BadValueCast);
  EXPECT_THROW((void)Value(1).as<Value::List>(), BadValueCast);
}

TEST(ValueTest, GetIfReturnsPointerOrNull) {
  const Value v(42);
  ASSERT_NE(v.get_if<std::int64_t>(), nullptr);
  EXPECT_EQ(*v.get_if<std::int64_t>(), 42);
  EXPECT_EQ(v.get_if<std::string>(), nullptr);
  EXPECT_EQ(v.get_if<double>(), nullptr);
  EXPECT_EQ(v.get_if<Shape>(), nullptr);
}

TEST(ValueTest, ListsCompareDeeply) {
  const Value a = Value::list({1, 2, Value::list({"x", Value()})});
  const Value b = Value::list({1, 2, Value::list({"x", Value()})});
  const Value c = Value::list({1, 2, Value::list({"x", 0})});
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  EXPECT_EQ(a.size(), 3u);
  EXPECT_EQ(a.at(1).as<std::int64_t>(), 2);
  EXPECT_EQ(a.at(2).at(0).as<std::string>(), "x");
  EXPECT_THROW((void)a.at(3), std::out_of_range);
  EXPECT_EQ(a.as<Value::List>().size(), 3u);
}

TEST(ValueTest, DictsKeepInsertionOrderAndCompareLikePython) {
  const Value d = Value::dict({{"shape", Value::list({1, 3})}, {"dtype", "torch.float32"}});
  const auto& entries = d.as<Value::Dict>();
  ASSERT_EQ(entries.size(), 2u);
  EXPECT_EQ(entries[0].first, "shape");
  EXPECT_EQ(entries[1].first, "dtype");
  EXPECT_EQ(d.at("dtype").as<std::string>(), "torch.float32");
  EXPECT_EQ(d.find("missing"), nullptr);
  EXPECT_NE(d.find("shape"), nullptr);
  try {
    (void)d.at("missing");
    FAIL() << "expected KeyError";
  } catch (const KeyError& e) {
    EXPECT_EQ(e.key(), "missing");
  }
  const Value reordered = Value::dict({{"dtype", "torch.float32"}, {"shape", Value::list({1, 3})}});
  EXPECT_EQ(d, reordered);  // like Python: order does not matter for equality
  EXPECT_NE(d, Value::dict({{"dtype", "torch.float32"}}));
  EXPECT_NE(d, Value::dict({{"dtype", "torch.float16"}, {"shape", Value::list({1, 3})}}));
}

TEST(ValueTest, DictRejectsDuplicateKeysNamingTheKey) {
  try {
    (void)Value::dict({{"a", 1}, {"b", 2}, {"a", 3}});
    FAIL() << "expected std::invalid_argument";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("'a'"), std::string::npos);
  }
}

TEST(ValueTest, CopiesShareTheBox) {
  const Value a = Value::list({1, 2, 3});
  const Value b = a;  // NOLINT(performance-unnecessary-copy-initialization)
  EXPECT_EQ(a.get_if<Value::List>(), b.get_if<Value::List>());
  Value c = b;
  Value d = std::move(c);
  EXPECT_TRUE(c.is_none());  // NOLINT(bugprone-use-after-move): moved-from is none
  EXPECT_EQ(d, a);
}

TEST(ValueTest, UserTypesViaMake) {
  const Value v = Value::make<Shape>(Shape{{1, 3, 224, 224}});
  EXPECT_EQ(v.kind(), Value::Kind::kObject);
  EXPECT_EQ(v.as<Shape>().dims[3], 224);
  EXPECT_EQ(v, Value::make<Shape>(Shape{{1, 3, 224, 224}}));  // T::operator==
  EXPECT_NE(v, Value::make<Shape>(Shape{{1}}));
  EXPECT_NE(v.type_name().find("Shape"), std::string::npos);
  EXPECT_THROW((void)v.as<Opaque>(), BadValueCast);
  EXPECT_THROW((void)v.as<std::string>(), BadValueCast);

  const Value o = Value::make<Opaque>(Opaque{5});
  const Value o_copy = o;  // NOLINT(performance-unnecessary-copy-initialization)
  EXPECT_EQ(o, o_copy);                          // same object: identity
  EXPECT_NE(o, Value::make<Opaque>(Opaque{5}));  // no operator==: identity only
  EXPECT_EQ(o.as<Opaque>().x, 5);
  EXPECT_NE(o.repr().find("Opaque"), std::string::npos);
}

TEST(ValueTest, AsOnRvalueReturnsACopy) {
  static_assert(std::is_same_v<decltype(Value("x").as<std::string>()), std::string>);
  static_assert(std::is_same_v<decltype(std::declval<const Value&>().as<std::string>()),
                               const std::string&>);
  const std::string& s = Value("kept alive").as<std::string>();  // lifetime-extended copy
  EXPECT_EQ(s, "kept alive");
}

TEST(ValueTest, ReprIsPythonLike) {
  EXPECT_EQ(Value(true).repr(), "True");
  EXPECT_EQ(Value(false).repr(), "False");
  EXPECT_EQ(Value(-3).repr(), "-3");
  EXPECT_EQ(Value(2.0).repr(), "2.0");
  EXPECT_EQ(Value(0.1).repr(), "0.1");
  EXPECT_EQ(Value("it's\n").repr(), "'it\\'s\\n'");
  EXPECT_EQ(Value::list({1, "a", Value()}).repr(), "[1, 'a', None]");
  EXPECT_EQ(Value::dict({{"k", Value::list({})}}).repr(), "{'k': []}");
  std::ostringstream os;
  os << Value::list({1.5, "x"});
  EXPECT_EQ(os.str(), "[1.5, 'x']");
}

}  // namespace
}  // namespace nodemeta
