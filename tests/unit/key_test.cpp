#include "nodemeta/key.h"

#include <gtest/gtest.h>

#include <barrier>
#include <bit>
#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>
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

// Many threads interning the same fresh names at once must agree on one id per name.
TEST(KeyTest, ConcurrentInterningAgrees) {
  constexpr int kThreads = 4;
  constexpr int kNames = 500;
  std::vector<std::vector<std::uint32_t>> ids(kThreads, std::vector<std::uint32_t>(kNames));
  std::barrier start(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      start.arrive_and_wait();
      for (int i = 0; i < kNames; ++i) {
        // Threads walk the names in different orders to collide on first sightings.
        const int n = (t % 2 == 0) ? i : kNames - 1 - i;
        ids[t][n] = Key("key_test.concurrent." + std::to_string(n)).id();
      }
    });
  }
  for (auto& th : threads) th.join();
  for (int n = 0; n < kNames; ++n) {
    for (int t = 1; t < kThreads; ++t) EXPECT_EQ(ids[t][n], ids[0][n]) << "name " << n;
    const std::string name = "key_test.concurrent." + std::to_string(n);
    EXPECT_EQ(Key(name).id(), ids[0][n]);
    EXPECT_EQ(Key(name).name(), name);
  }
  EXPECT_GE(Key::interned_count(), static_cast<std::size_t>(kNames));
}

}  // namespace
}  // namespace nodemeta
