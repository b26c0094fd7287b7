#include "nodemeta/key.h"

#include <gtest/gtest.h>

#include <barrier>
#include <bit>
#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <optional>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

namespace nodemeta {
namespace {

static_assert(sizeof(Key) == 4);
static_assert(std::is_trivially_copyable_v<Key>);
static_assert(keys::val.id() == 1 && keys::stack_trace.id() == 2 && keys::nn_module_stack.id() == 3 &&
              keys::debug_handle.id() == 4 && keys::tensor_meta.id() == 5);
static_assert(keys::val.valid());
static_assert(!std::bit_cast<Key>(std::uint32_t{0}).valid());
static_assert(!(std::bit_cast<Key>(std::uint32_t{0}) == keys::val));

constexpr std::string_view kInvalidName = "<invalid nodemeta::Key>";

// A namespace-scope Key read by an earlier static initialiser, before its own constructor
// has run: the case id 0 is reserved for. (Strictly, reading an object before its lifetime
// starts is undefined; in practice it reads the zero-initialised storage, which is what a
// user in another translation unit gets.)
extern const Key kDefinedLater;
const Key* const kDefinedLaterAddress = &kDefinedLater;
const std::uint32_t kDefinedLaterIdBeforeConstruction = kDefinedLaterAddress->id();
const bool kDefinedLaterValidBeforeConstruction = kDefinedLaterAddress->valid();
const Key kDefinedLater{"key_test.defined_later"};

TEST(KeyTest, SameNameSameId) {
  const Key a("key_test.same");
  const Key b(std::string("key_test.same"));
  const Key c(std::string_view("key_test.same"));
  const char* p = "key_test.same";
  const Key d(p);
  EXPECT_EQ(a, b);
  EXPECT_EQ(a, c);
  EXPECT_EQ(a, d);
  EXPECT_EQ(a.id(), b.id());
  EXPECT_EQ(a.name(), "key_test.same");
}

TEST(KeyTest, DifferentNamesDifferentIds) {
  const Key a("key_test.a");
  const Key b("key_test.b");
  EXPECT_FALSE(a == b);
  EXPECT_EQ(b.name(), "key_test.b");
}

TEST(KeyTest, PredefinedKeysAreTheOriginalsProtectedKeys) {
  EXPECT_EQ(keys::val, Key("val"));
  EXPECT_EQ(keys::stack_trace, Key("stack_trace"));
  EXPECT_EQ(keys::nn_module_stack, Key("nn_module_stack"));
  EXPECT_EQ(keys::debug_handle, Key("debug_handle"));
  EXPECT_EQ(keys::tensor_meta, Key("tensor_meta"));
  EXPECT_EQ(keys::val, Key(std::string("val")));
  EXPECT_EQ(keys::tensor_meta, Key(std::string_view("tensor_meta")));
  EXPECT_EQ(keys::tensor_meta.name(), "tensor_meta");
  EXPECT_EQ(keys::val.name(), "val");
  const std::vector<Key> expected{keys::val, keys::stack_trace, keys::nn_module_stack,
                                  keys::debug_handle, keys::tensor_meta};
  EXPECT_EQ(default_protected_keys(), expected);
}

TEST(KeyTest, PredefinedIdsAreOneToFiveAndInternedNamesStartAtSix) {
  for (std::uint32_t id = 1; id <= 5; ++id) EXPECT_TRUE(Key(static_cast<detail::PredefinedKey>(id)).valid());
  EXPECT_EQ(detail::key_name(1), "val");
  EXPECT_EQ(detail::key_name(5), "tensor_meta");
  const Key k("key_test.first_user_name");
  EXPECT_GE(k.id(), 6u);
  EXPECT_GE(Key::interned_count(), 6u);
}

TEST(KeyTest, ZeroInitialisedKeyIsInvalidNotVal) {
  const Key zero = std::bit_cast<Key>(std::uint32_t{0});
  EXPECT_FALSE(zero.valid());
  EXPECT_EQ(zero.id(), 0u);
  EXPECT_FALSE(zero == keys::val);
  EXPECT_EQ(zero.name(), kInvalidName);

  // Storage cleared byte by byte, as static storage is before its initialiser runs.
  Key cleared = keys::val;
  std::memset(static_cast<void*>(&cleared), 0, sizeof cleared);
  EXPECT_FALSE(cleared.valid());
  EXPECT_EQ(cleared.name(), kInvalidName);

  // Every constructor gives a valid Key.
  EXPECT_TRUE(Key("key_test.valid").valid());
  EXPECT_TRUE(Key(std::string("key_test.valid")).valid());
  EXPECT_TRUE(Key("").valid());
}

TEST(KeyTest, StaticKeyReadBeforeItsConstructorIsInvalid) {
  EXPECT_EQ(kDefinedLaterIdBeforeConstruction, 0u);
  EXPECT_FALSE(kDefinedLaterValidBeforeConstruction);
  EXPECT_TRUE(kDefinedLater.valid());
  EXPECT_EQ(kDefinedLater.name(), "key_test.defined_later");
}

TEST(KeyTest, KeyNameIsSafeForAnyId) {
  const Key k("key_test.any_id");
  EXPECT_EQ(detail::key_name(k.id()), "key_test.any_id");
  const std::uint32_t max = std::numeric_limits<std::uint32_t>::max();
  for (std::uint32_t id : {0u, k.id() + 100'000u, 1u << 20, 1u << 31, max - 1, max}) {
    EXPECT_EQ(detail::key_name(id), kInvalidName) << id;
    EXPECT_EQ(std::bit_cast<Key>(id).name(), kInvalidName) << id;
  }
}

TEST(KeyTest, EmptyNameIsKept) {
  EXPECT_EQ(Key("").name(), "");
  EXPECT_EQ(Key(""), Key(std::string()));
  EXPECT_EQ(Key(""), Key(std::string_view()));
  EXPECT_FALSE(Key("") == Key(" "));
}

TEST(KeyTest, NameWithNulIsRejectedWithTheNameEscaped) {
  const std::size_t before = Key::interned_count();
  const std::string with_nul("tensor_meta\0copy", 16);
  for (int via_view = 0; via_view < 2; ++via_view) {
    try {
      const Key k = via_view ? Key(std::string_view(with_nul)) : Key(with_nul);
      ADD_FAILURE() << "interned " << k.name();
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find(R"('tensor_meta\x00copy')"), std::string::npos) << e.what();
    }
  }
  EXPECT_THROW(Key(std::string(1, '\0')), std::invalid_argument);
  // Quotes, backslashes and other bytes are escaped too, so the message is unambiguous.
  try {
    (void)Key(std::string("it's\\\n\0", 7));
    ADD_FAILURE();
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find(R"('it\'s\\\x0a\x00')"), std::string::npos) << e.what();
  }
  EXPECT_EQ(Key::interned_count(), before);  // a rejected name takes no id
}

TEST(KeyTest, CStringsAndCharArraysEndAtTheirFirstNul) {
  // As in C: the name is the bytes before the first NUL.
  EXPECT_EQ(Key("key_test.cut\0tail").name(), "key_test.cut");
  const char* p = "key_test.cut\0tail";
  EXPECT_EQ(Key(p), Key("key_test.cut"));
  char buf[32] = "abc";  // 28 NULs after "abc"
  EXPECT_EQ(Key(buf).name(), "abc");
  EXPECT_EQ(Key(buf), Key("abc"));
  // An array without a NUL is read to its end and no further (a `const char*` would overrun).
  const char raw[3] = {'x', 'y', 'z'};
  EXPECT_EQ(Key(raw).name(), "xyz");
}

TEST(KeyTest, LiteralPointerAndStringAgree) {
  const Key from_literal("key_test.agree");
  const char* pointer = "key_test.agree";
  char* mutable_pointer = const_cast<char*>(pointer);
  const std::string str = "key_test.agree";
  EXPECT_EQ(Key(pointer), from_literal);
  EXPECT_EQ(Key(mutable_pointer), from_literal);
  EXPECT_EQ(Key(str), from_literal);
  EXPECT_EQ(Key(std::string_view(str)), from_literal);
  EXPECT_EQ(Key(str.c_str()), from_literal);
  EXPECT_EQ(Key(std::string(str)), from_literal);
}

TEST(KeyTest, ChangingBufferGivesTheCurrentName) {
  // The same array, and the same pointer, with different contents: the Key follows the
  // contents, never the address.
  char buf[16];
  std::strcpy(buf, "key_test.buf1");
  const Key a(buf);
  std::strcpy(buf, "key_test.buf2");
  const Key b(buf);
  EXPECT_FALSE(a == b);
  EXPECT_EQ(a.name(), "key_test.buf1");
  EXPECT_EQ(b.name(), "key_test.buf2");

  const char* p = buf;
  std::strcpy(buf, "a");
  const Key c(p);
  std::strcpy(buf, "b");
  const Key d(p);
  EXPECT_EQ(c.name(), "a");
  EXPECT_EQ(d.name(), "b");
  std::strcpy(buf, "a");
  EXPECT_EQ(Key(buf), c);
  EXPECT_EQ(Key(p), c);
}

TEST(KeyTest, NullNameThrows) {
  const char* null_name = nullptr;
  EXPECT_THROW(Key{null_name}, std::invalid_argument);
  char* null_mutable = nullptr;
  EXPECT_THROW(Key{null_mutable}, std::invalid_argument);
}

TEST(KeyTest, HashIsTheId) {
  const Key k("key_test.hash");
  EXPECT_EQ(std::hash<Key>{}(k), k.id());
}

TEST(KeyTest, LongNamesAndNamesOfEveryShortLength) {
  // Every length the hash and the comparison treat differently (0-3, 4-7, 8-16, > 16), with
  // names that differ only in their last or first byte.
  std::vector<Key> made;
  std::vector<std::string> names;
  for (std::size_t len = 1; len <= 70; ++len) {
    for (char last : {'a', 'b'}) {
      std::string name(len, 'k');
      name.back() = last;
      names.push_back(name);
      name.front() = static_cast<char>(last + 2);
      names.push_back(name);
    }
  }
  names.push_back(std::string(100'000, 'L'));
  for (const std::string& n : names) made.emplace_back(n);
  for (std::size_t i = 0; i < names.size(); ++i) {
    EXPECT_EQ(made[i].name(), names[i]);
    EXPECT_EQ(Key(names[i]), made[i]);
    for (std::size_t j = i + 1; j < names.size() && j < i + 8; ++j) {
      if (names[i] != names[j]) {
        EXPECT_FALSE(made[i] == made[j]) << names[i] << " vs " << names[j];
      }
    }
  }
}

// Many threads interning the same fresh names at once, each through a different
// constructor (and looking them up with Key::find before and after), must agree on one id
// per name; the table grows many times meanwhile, and
// names read before the growth stay valid (same bytes, same address).
TEST(KeyTest, ConcurrentInterningThroughEveryConstructorAgreesWhileTheTableGrows) {
  constexpr int kThreads = 8;
  constexpr int kNames = 6000;  // enough to double the table several times
  static int run = 0;  // fresh names on every run, --gtest_repeat included
  const std::string prefix = "key_test.concurrent." + std::to_string(run++) + ".";
  const Key early("key_test.concurrent.early");
  const std::string_view early_name = early.name();
  const std::size_t count_before = Key::interned_count();

  std::vector<std::string> names;
  for (int n = 0; n < kNames; ++n) names.push_back(prefix + std::to_string(n));
  std::vector<std::vector<std::uint32_t>> ids(kThreads, std::vector<std::uint32_t>(kNames));
  std::vector<std::uint32_t> literal_ids(kThreads);
  std::barrier start(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      char buf[64];
      start.arrive_and_wait();
      // A fresh name through the literal fast path, from every thread at once.
      literal_ids[t] = Key("key_test.concurrent.fresh_literal").id();
      for (int i = 0; i < kNames; ++i) {
        // Threads walk the names in different orders to collide on first sightings.
        const int n = (t % 2 == 0) ? i : kNames - 1 - i;
        const std::string& name = names[n];
        // Key::find never interns: before, the name is absent or already has its one id.
        const std::optional<Key> seen = Key::find(name);
        std::uint32_t id = 0;
        switch ((t + i) % 4) {
          case 0: id = Key(name).id(); break;
          case 1: id = Key(std::string_view(name)).id(); break;
          case 2: id = Key(name.c_str()).id(); break;
          case 3:
            std::memcpy(buf, name.c_str(), name.size() + 1);
            id = Key(buf).id();
            break;
        }
        ids[t][n] = id;
        if (seen) {
          EXPECT_EQ(seen->id(), id);
        }
        const std::optional<Key> after = Key::find(name);
        EXPECT_TRUE(after.has_value() && after->id() == id);
        // Lookups of older names while the table grows under them.
        if (i % 64 == 0) {
          EXPECT_EQ(Key("key_test.concurrent.early"), early);
          EXPECT_EQ(Key("val"), keys::val);
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  const bool literal_was_fresh = literal_ids[0] >= count_before + 1;  // first run only
  for (int t = 1; t < kThreads; ++t) EXPECT_EQ(literal_ids[t], literal_ids[0]);
  EXPECT_EQ(detail::key_name(literal_ids[0]), "key_test.concurrent.fresh_literal");
  for (int n = 0; n < kNames; ++n) {
    for (int t = 1; t < kThreads; ++t) ASSERT_EQ(ids[t][n], ids[0][n]) << "name " << n;
    EXPECT_TRUE(Key(names[n]).valid());
    EXPECT_EQ(Key(names[n]).id(), ids[0][n]);
    EXPECT_EQ(detail::key_name(ids[0][n]), names[n]);
  }
  // One id per name, none lost, none doubled.
  EXPECT_EQ(Key::interned_count(), count_before + kNames + (literal_was_fresh ? 1 : 0));
  EXPECT_EQ(early.name().data(), early_name.data());
  EXPECT_EQ(early.name(), "key_test.concurrent.early");
  EXPECT_EQ(early_name, "key_test.concurrent.early");
}


TEST(KeyTest, FindNeverInterns) {
  const std::size_t before = Key::interned_count();
  EXPECT_FALSE(Key::find("key_test.find.never-interned-name").has_value());
  EXPECT_FALSE(Key::find(std::string_view("a\0b", 3)).has_value());
  EXPECT_EQ(Key::interned_count(), before);
  const Key k("key_test.find.interned");
  ASSERT_TRUE(Key::find("key_test.find.interned").has_value());
  EXPECT_EQ(*Key::find("key_test.find.interned"), k);
  EXPECT_EQ(*Key::find("val"), keys::val);  // predefined names are found too
  EXPECT_EQ(*Key::find("tensor_meta"), keys::tensor_meta);
}

}  // namespace
}  // namespace nodemeta
