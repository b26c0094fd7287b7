// tests/support/keys.h: keys whose ids lie past the first 64-bit word of a store's protected
// set (include/nodemeta/detail/protected_set.h), so tests reach its large-id part too.
#ifndef NODEMETA_TESTS_SUPPORT_KEYS_H_
#define NODEMETA_TESTS_SUPPORT_KEYS_H_

#include <cstdint>
#include <stdexcept>
#include <string>

#include <nodemeta/key.h>

namespace nodemeta::test {

// Ids below this are in the protected set's first word; ids from it on, past it.
inline constexpr std::uint32_t kFirstLargeKeyId = 64;

// The key `name` with an id >= kFirstLargeKeyId. Key ids are dense, in order of first use
// in the process, so this first interns padding names ("<name>.pad.<i>") until the ids
// reach kFirstLargeKeyId. Throws std::logic_error if `name` was already interned with a
// smaller id.
inline Key large_id_key(const std::string& name) {
  for (int i = 0; Key(name + ".pad." + std::to_string(i)).id() < kFirstLargeKeyId; ++i) {
  }
  const Key key(name);
  if (key.id() < kFirstLargeKeyId) {
    throw std::logic_error("large_id_key: '" + name + "' was interned earlier, with the small id " +
                           std::to_string(key.id()));
  }
  return key;
}

}  // namespace nodemeta::test

#endif  // NODEMETA_TESTS_SUPPORT_KEYS_H_
