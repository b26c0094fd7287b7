#include "nodemeta/value.h"

#include <gtest/gtest.h>

#include <array>
#include <atomic>
#include <bit>
#include <cstdint>
#include <deque>
#include <limits>
#include <list>
#include <map>
#include <memory>
#include <memory_resource>
#include <mutex>
#include <optional>
#include <sstream>
#include <stack>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <variant>
#include <vector>

namespace nodemeta {
namespace {

struct Shape {
  std::vector<int> dims;
  bool operator==(const Shape&) const = default;
};
struct Opaque {
  int x = 0;
};

// A string long enough to live on the heap, so a read through a dangling reference into a
// freed box is a heap-use-after-free that AddressSanitizer reports.
constexpr const char* kLong = "a string long enough to defeat the small-string buffer";

Value make_list() { return Value::list({kLong, 2}); }
Value make_dict() { return Value::dict({{"shape", Value::list({1, 3})}, {"name", kLong}}); }
const Value make_const_list() { return make_list(); }  // NOLINT(readability-const-return-type)

// The representation the store packs (detail::ValueAccess) and the stated limits.
static_assert(sizeof(Value) == 16);
// A box's reference count cannot wrap: 2^64 copies cannot exist at once (each takes 16
// bytes), while 2^32 could (64 GiB).
static_assert(std::is_same_v<detail::ValueBox::RefCount, std::uint64_t>);
static_assert(std::atomic<detail::ValueBox::RefCount>::is_always_lock_free);

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
  EXPECT_EQ(Value(static_cast<unsigned long long>(INT64_MAX)).as<std::int64_t>(), INT64_MAX);
  EXPECT_THROW((void)Value(static_cast<unsigned long long>(INT64_MAX) + 1), std::overflow_error);
  EXPECT_THROW((void)Value(std::numeric_limits<std::size_t>::max()), std::overflow_error);
  EXPECT_EQ(Value(std::numeric_limits<std::uint32_t>::max()).as<std::int64_t>(), 4294967295);
  try {
    Value v(std::numeric_limits<std::uint64_t>::max());
    FAIL() << "expected std::overflow_error";
  } catch (const std::overflow_error& e) {
    EXPECT_NE(std::string(e.what()).find("18446744073709551615"), std::string::npos);
  }
}

// Only bool, the standard integer types (not the character types), floating point and
// strings convert; everything that used to slip into bool through a standard conversion is
// a compile error.
enum UnscopedColor { kRed, kGreen };
enum class ScopedColor { kRed, kGreen };
struct Member {
  int x;
};
template <class T>
constexpr bool kConverts = std::is_convertible_v<T, Value> && std::is_constructible_v<Value, T>;
template <class T>
constexpr bool kRejected = !std::is_convertible_v<T, Value> && !std::is_constructible_v<Value, T>;

static_assert(kConverts<bool>);
static_assert(kConverts<short> && kConverts<unsigned short>);
static_assert(kConverts<int> && kConverts<unsigned>);
static_assert(kConverts<long> && kConverts<unsigned long>);
static_assert(kConverts<long long> && kConverts<unsigned long long>);
static_assert(kConverts<std::int16_t> && kConverts<std::int32_t> && kConverts<std::int64_t>);
static_assert(kConverts<std::uint16_t> && kConverts<std::uint32_t> && kConverts<std::uint64_t>);
static_assert(kConverts<std::size_t> && kConverts<std::ptrdiff_t>);
static_assert(kConverts<const int&> && kConverts<int&>);
static_assert(kConverts<float> && kConverts<double> && kConverts<long double>);
static_assert(kConverts<const char*> && kConverts<char*>);
static_assert(kConverts<const char (&)[5]> && kConverts<char (&)[5]>);  // literals, buffers
static_assert(kConverts<std::string> && kConverts<const std::string&> && kConverts<std::string&>);
static_assert(kConverts<std::string_view>);
static_assert(kConverts<Value> && kConverts<const Value&>);
// What NodeMetadata::set(Key, Value) is called with: md.set("k", 1), md.set("k", 2.5),
// md.set("k", "text"), md.set("k", true), md.set("k", std::string(...)).
static_assert(std::is_convertible_v<int, Value>);
static_assert(std::is_convertible_v<double, Value>);
static_assert(std::is_convertible_v<const char (&)[5], Value>);
static_assert(std::is_convertible_v<bool, Value>);
static_assert(std::is_convertible_v<std::string, Value>);

static_assert(kRejected<char> && kRejected<const char&>);  // Value(',') was Value(true)
static_assert(kRejected<signed char> && kRejected<unsigned char>);
static_assert(kRejected<std::int8_t> && kRejected<std::uint8_t>);
static_assert(kRejected<wchar_t> && kRejected<char8_t>);
static_assert(kRejected<char16_t> && kRejected<char32_t>);
static_assert(kRejected<int*> && kRejected<const int*> && kRejected<void*>);  // Value(&x) was true
static_assert(kRejected<const void*> && kRejected<const Value*>);
static_assert(kRejected<const char8_t*> && kRejected<const wchar_t*> && kRejected<const char16_t*>);
static_assert(kRejected<const char8_t (&)[3]>);  // u8"ab"
static_assert(kRejected<void (*)()> && kRejected<int Member::*>);
static_assert(kRejected<std::nullptr_t>);  // not bool, not a null const char* that throws
static_assert(kRejected<UnscopedColor> && kRejected<ScopedColor>);  // Value(kGreen) was true
__extension__ typedef __int128 Int128;  // __extension__: no -Wpedantic warning
__extension__ typedef unsigned __int128 UInt128;
static_assert(kRejected<Int128> && kRejected<UInt128>);  // under -std=c++20, 1 << 70 was True
static_assert(kRejected<Value::List> && kRejected<Value::Dict>);    // list() and dict()
static_assert(kRejected<std::vector<bool>::reference>);  // a proxy: write Value(bool(bits[i]))
static_assert(kRejected<Member> && kRejected<std::optional<Value>>);

TEST(ValueTest, ScalarsRoundTrip) {
  EXPECT_EQ(Value(true).as<bool>(), true);
  EXPECT_EQ(Value(false).as<bool>(), false);
  EXPECT_EQ(Value(2.5).as<double>(), 2.5);
  EXPECT_EQ(Value(1.5f).as<double>(), 1.5);
  EXPECT_EQ(Value("abc").as<std::string>(), "abc");
  EXPECT_EQ(Value(std::string("xyz")).as<std::string>(), "xyz");
  EXPECT_EQ(Value(std::string_view("sv")).as<std::string>(), "sv");
  char buffer[] = "buf";
  EXPECT_EQ(Value(buffer).as<std::string>(), "buf");
  EXPECT_EQ(Value(std::pmr::string("pmr")).as<std::string>(), "pmr");  // via std::string_view
  EXPECT_EQ(Value(static_cast<long double>(0.5)).as<double>(), 0.5);
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

// make<T> takes user types only: anything a Value could not hand back as that T (make<int>
// was accepted, but as<int> did not compile, as<std::int64_t> threw, and it was != Value(1))
// is a static_assert with a message (tests/unit/value_compile_fail.cmake checks them);
// Value::kCanMake<T> says which, for generic code.
static_assert(Value::kCanMake<Shape> && Value::kCanMake<Opaque>);
static_assert(Value::kCanMake<std::vector<int>> && Value::kCanMake<std::vector<double>>);
static_assert(Value::kCanMake<std::unique_ptr<int>> && Value::kCanMake<std::shared_ptr<int>>);
static_assert(Value::kCanMake<std::array<int, 3>> && Value::kCanMake<std::optional<int>>);
static_assert(!Value::kCanMake<int> && !Value::kCanMake<long long> && !Value::kCanMake<unsigned>);
static_assert(!Value::kCanMake<float> && !Value::kCanMake<long double>);
static_assert(!Value::kCanMake<bool> && !Value::kCanMake<char> && !Value::kCanMake<char8_t>);
static_assert(!Value::kCanMake<Int128> && !Value::kCanMake<UInt128>);
static_assert(!Value::kCanMake<UnscopedColor> && !Value::kCanMake<ScopedColor>);
static_assert(!Value::kCanMake<int*> && !Value::kCanMake<const Shape*> && !Value::kCanMake<void*>);
static_assert(!Value::kCanMake<void (*)()> && !Value::kCanMake<int Member::*>);
static_assert(!Value::kCanMake<std::nullptr_t>);
static_assert(!Value::kCanMake<int[3]> && !Value::kCanMake<std::string_view>);
static_assert(!Value::kCanMake<std::int64_t> && !Value::kCanMake<double>);  // built-in kinds
static_assert(!Value::kCanMake<std::string> && !Value::kCanMake<Value::List>);
static_assert(!Value::kCanMake<Value::Dict> && !Value::kCanMake<Value>);
static_assert(!Value::kCanMake<const Shape> && !Value::kCanMake<Shape&>);
static_assert(!Value::kCanMake<volatile Shape> && !Value::kCanMake<void>);

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

// "operator== of T when it has one, identity otherwise" also for the standard library's
// element-wise comparisons, whose operator== exists (std::equality_comparable says yes) even
// when the elements have none, and fails to compile only once instantiated.
struct NoEq {
  int x = 0;
};
static_assert(std::equality_comparable<std::vector<NoEq>>);  // the trap

// Two separately built objects holding the same T{args} compare like T's operator==; a
// type without a usable one compares by identity (only copies of one Value are equal).
template <class T, class... Args>
bool equal_when_built_twice(Args... args) {
  const Value a = Value::make<T>(args...);
  const Value a_copy = a;  // NOLINT(performance-unnecessary-copy-initialization)
  EXPECT_EQ(a, a_copy) << "a Value always equals its copies";
  EXPECT_NE(a, Value::make<NoEq>()) << "different types never compare equal";
  return a == Value::make<T>(args...);
}

TEST(ValueTest, StdTypesOfElementsWithoutEqualityCompareByIdentity) {
  EXPECT_FALSE(equal_when_built_twice<std::vector<NoEq>>(std::size_t{2}));
  EXPECT_FALSE(equal_when_built_twice<std::vector<std::vector<NoEq>>>(std::size_t{2}));
  EXPECT_FALSE((equal_when_built_twice<std::array<NoEq, 2>>()));
  EXPECT_FALSE(equal_when_built_twice<std::deque<NoEq>>(std::size_t{1}));
  EXPECT_FALSE(equal_when_built_twice<std::list<NoEq>>(std::size_t{1}));
  EXPECT_FALSE((equal_when_built_twice<std::map<std::string, NoEq>>()));
  EXPECT_FALSE((equal_when_built_twice<std::unordered_map<int, std::vector<NoEq>>>()));
  EXPECT_FALSE((equal_when_built_twice<std::pair<int, NoEq>>()));
  EXPECT_FALSE((equal_when_built_twice<std::tuple<int, std::string, NoEq>>()));
  EXPECT_FALSE(equal_when_built_twice<std::optional<std::vector<NoEq>>>());
  EXPECT_FALSE((equal_when_built_twice<std::variant<int, NoEq>>()));
  EXPECT_FALSE(equal_when_built_twice<std::stack<NoEq>>());
  EXPECT_FALSE(equal_when_built_twice<std::mutex>());  // neither ==, nor copyable, nor movable
}

// A range of itself (as a JSON library's value type is): the look-through stops there.
struct Tree {
  using value_type = Tree;
  std::vector<Tree> children;
  auto begin() const { return children.begin(); }
  auto end() const { return children.end(); }
  bool operator==(const Tree&) const = default;
};

TEST(ValueTest, StdTypesOfComparableElementsCompareByValue) {
  EXPECT_TRUE(equal_when_built_twice<Tree>());
  EXPECT_TRUE(equal_when_built_twice<std::vector<int>>(std::size_t{2}));
  EXPECT_TRUE(equal_when_built_twice<std::vector<Shape>>(std::size_t{2}));
  EXPECT_TRUE((equal_when_built_twice<std::array<std::string, 2>>()));
  EXPECT_TRUE((equal_when_built_twice<std::map<std::string, std::vector<int>>>()));
  EXPECT_TRUE((equal_when_built_twice<std::pair<int, std::string>>()));
  EXPECT_TRUE((equal_when_built_twice<std::tuple<int, Shape>>()));
  EXPECT_TRUE(equal_when_built_twice<std::optional<Shape>>());
  EXPECT_TRUE((equal_when_built_twice<std::variant<int, std::string>>()));
  EXPECT_TRUE(equal_when_built_twice<std::stack<int>>());
  EXPECT_NE(Value::make<std::vector<int>>(std::vector<int>{1, 2}),
            Value::make<std::vector<int>>(std::vector<int>{1, 3}));
}

// A move-only (or immovable) T is stored in place and read through const T&; on an rvalue,
// as<T>() would have to copy, so it does not compile (it is deleted) rather than dangle.
template <class V, class T>
concept CanAs = requires(V&& v) { std::forward<V>(v).template as<T>(); };
static_assert(CanAs<const Value&, std::unique_ptr<int>> && CanAs<Value&, std::unique_ptr<int>>);
static_assert(!CanAs<Value, std::unique_ptr<int>> && !CanAs<const Value, std::unique_ptr<int>>);
static_assert(CanAs<const Value&, std::mutex> && !CanAs<Value, std::mutex>);
static_assert(CanAs<Value, std::shared_ptr<int>> && CanAs<Value, Shape>);

TEST(ValueTest, MoveOnlyUserTypesAreReadThroughConstRef) {
  const Value v = Value::make<std::unique_ptr<int>>(std::make_unique<int>(7));
  EXPECT_EQ(*v.as<std::unique_ptr<int>>(), 7);
  ASSERT_NE(v.get_if<std::unique_ptr<int>>(), nullptr);
  const Value copy = v;  // NOLINT(performance-unnecessary-copy-initialization)
  EXPECT_EQ(copy.as<std::unique_ptr<int>>().get(), v.as<std::unique_ptr<int>>().get());
  EXPECT_EQ(v, copy);
  EXPECT_NE(v, Value::make<std::unique_ptr<int>>(std::make_unique<int>(7)));  // unique_ptr's ==
}

TEST(ValueTest, AsOnRvalueReturnsACopy) {
  static_assert(std::is_same_v<decltype(Value("x").as<std::string>()), std::string>);
  static_assert(std::is_same_v<decltype(std::declval<const Value&>().as<std::string>()),
                               const std::string&>);
  const std::string& s = Value("kept alive").as<std::string>();  // lifetime-extended copy
  EXPECT_EQ(s, "kept alive");
  const std::string& from_const = make_const_list().at(0).as<std::string>();
  EXPECT_EQ(from_const, kLong);
  const Value::List& list = make_const_list().as<Value::List>();  // a const rvalue copies too
  ASSERT_EQ(list.size(), 2u);
  EXPECT_EQ(list[0].as<std::string>(), kLong);
}

// Accessors that would hand out a reference or pointer into a temporary's box return copies
// (at, find, as) or do not compile (get_if).
template <class V>
using AtIndex = decltype(std::declval<V>().at(std::size_t{0}));
template <class V>
using AtKey = decltype(std::declval<V>().at(std::string_view("k")));
template <class V>
using Find = decltype(std::declval<V>().find("k"));
static_assert(std::is_same_v<AtIndex<const Value&>, const Value&>);
static_assert(std::is_same_v<AtIndex<Value&>, const Value&>);
static_assert(std::is_same_v<AtIndex<Value>, Value>);
static_assert(std::is_same_v<AtIndex<const Value>, Value>);
static_assert(std::is_same_v<AtKey<const Value&>, const Value&>);
static_assert(std::is_same_v<AtKey<Value>, Value>);
static_assert(std::is_same_v<AtKey<const Value>, Value>);
static_assert(std::is_same_v<Find<const Value&>, const Value*>);
static_assert(std::is_same_v<Find<Value>, std::optional<Value>>);
static_assert(std::is_same_v<Find<const Value>, std::optional<Value>>);
template <class V>
using AsString = decltype(std::declval<V>().template as<std::string>());
static_assert(std::is_same_v<AsString<const Value&>, const std::string&>);
static_assert(std::is_same_v<AsString<Value>, std::string>);
static_assert(std::is_same_v<AsString<const Value>, std::string>);

template <class V, class T>
concept CanGetIf = requires(V&& v) { std::forward<V>(v).template get_if<T>(); };
static_assert(CanGetIf<const Value&, std::int64_t>);
static_assert(CanGetIf<Value&, std::string>);
static_assert(!CanGetIf<Value, std::int64_t>);
static_assert(!CanGetIf<Value, std::string>);
static_assert(!CanGetIf<const Value, Value::List>);

// n["shape"].at(0) with n["shape"] returning a Value by copy, as NodeMetadata's operator[] does.
TEST(ValueTest, AtOnAnRvalueReturnsACopy) {
  const Value& first = make_list().at(0);  // a lifetime-extended copy, not into a dead box
  EXPECT_EQ(first.as<std::string>(), kLong);
  const Value& shape = make_dict().at("shape");
  EXPECT_EQ(shape, Value::list({1, 3}));
  const Value& from_const = make_const_list().at(0);  // a const rvalue is a temporary too
  EXPECT_EQ(from_const.as<std::string>(), kLong);
  const std::string& name = make_dict().at("name").as<std::string>();
  EXPECT_EQ(name, kLong);
  const Value& nested = Value::list({make_list()}).at(0).at(0);
  EXPECT_EQ(nested.as<std::string>(), kLong);
  // Through a std::optional such as NodeMetadata::get returns: operator* on the temporary
  // optional is an rvalue, so this copies too; operator-> is not (see value.h).
  const Value& through_optional = (*std::optional<Value>(make_list())).at(0);
  EXPECT_EQ(through_optional.as<std::string>(), kLong);
  static_assert(
      std::is_same_v<decltype(std::declval<std::optional<Value>>()->at(0)), const Value&>);
}

TEST(ValueTest, FindOnAnRvalueReturnsACopy) {
  auto name = make_dict().find("name");
  ASSERT_TRUE(name);
  EXPECT_EQ(name->as<std::string>(), kLong);
  EXPECT_FALSE(make_dict().find("missing"));
  EXPECT_FALSE(make_list().find("name"));  // not a dict
}

// Values are equal iff they are indistinguishable: doubles compare by bit pattern, with
// every NaN the same NaN, so == is an equivalence relation (v == v even for NaN) and
// 0.0 != -0.0 (their reprs differ), in lists and dicts too, shared box or not.
const double kNaN = std::numeric_limits<double>::quiet_NaN();
const double kInf = std::numeric_limits<double>::infinity();

TEST(ValueTest, DoublesCompareAsIndistinguishableNaNEqualsNaNAndSignedZerosDiffer) {
  const Value nan(kNaN);
  EXPECT_EQ(nan, nan);
  EXPECT_EQ(nan, Value(kNaN));
  EXPECT_EQ(nan, Value(-kNaN));
  EXPECT_EQ(nan, Value(std::numeric_limits<double>::signaling_NaN()));
  EXPECT_EQ(nan, Value(std::numeric_limits<float>::quiet_NaN()));
  EXPECT_EQ(nan, Value(std::bit_cast<double>(std::uint64_t{0x7ff0000000000123})));  // payload
  EXPECT_NE(nan, Value(kInf));
  EXPECT_NE(Value(0.0), Value(-0.0));
  EXPECT_EQ(Value(-0.0), Value(-0.0));
  EXPECT_NE(Value(kInf), Value(-kInf));
  EXPECT_EQ(Value(0.1 + 0.2), Value(0.1 + 0.2));
  EXPECT_NE(Value(0.1 + 0.2), Value(0.3));
  // Every NaN is held as the one quiet NaN, so for the inline kinds, equal Values have equal
  // representations (what a store comparing detail::ValueAccess::Rep bits relies on).
  EXPECT_EQ(std::bit_cast<std::uint64_t>(Value(-kNaN).as<double>()),
            std::bit_cast<std::uint64_t>(kNaN));
  EXPECT_EQ(detail::ValueAccess::release(Value(-kNaN)).bits,
            detail::ValueAccess::release(Value(std::numeric_limits<double>::signaling_NaN())).bits);
}

TEST(ValueTest, EqualityOfDoublesHoldsInListsAndDictsWithOrWithoutSharedBoxes) {
  const Value list = Value::list({kNaN, -0.0, Value::list({kNaN})});
  EXPECT_EQ(list, list);                                             // the same box
  EXPECT_EQ(list, Value::list({-kNaN, -0.0, Value::list({kNaN})}));  // built separately
  EXPECT_EQ(list, Value::list(list.as<Value::List>()));  // a new box sharing the elements
  EXPECT_NE(list, Value::list({kNaN, 0.0, Value::list({kNaN})}));

  const Value dict = Value::dict({{"x", kNaN}, {"z", -0.0}, {"l", list}});
  EXPECT_EQ(dict, dict);
  EXPECT_EQ(dict, Value::dict({{"l", Value::list({kNaN, -0.0, Value::list({kNaN})})},
                               {"z", -0.0},
                               {"x", kNaN}}));
  EXPECT_EQ(dict, Value::dict(dict.as<Value::Dict>()));  // items() round trip
  EXPECT_NE(dict, Value::dict({{"x", kNaN}, {"z", 0.0}, {"l", list}}));
}

TEST(ValueTest, EqualValuesHaveEqualReprsAndUnequalOnesDiffer) {
  const std::vector<Value> values = {
      Value(0.0), Value(-0.0), Value(kNaN), Value(-kNaN), Value(kInf), Value(-kInf), Value(1.0),
      Value(1), Value(true), Value(), Value("nan"), Value::list({kNaN}), Value::list({-kNaN}),
      Value::list({0.0}), Value::list({-0.0}), Value::dict({{"k", -0.0}}),
      Value::dict({{"k", 0.0}}), Value::dict({{"k", kNaN}})};
  for (const Value& a : values) {
    for (const Value& b : values) {
      const bool same_text = a.repr() == b.repr() && a.type_name() == b.type_name();
      EXPECT_EQ(a == b, same_text) << a << " vs " << b;
    }
  }
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
