// nodemeta/errors.h: WriteResult and the exception types nodemeta throws, nothing else.
//
// Every exception derives from a standard one, so callers (and pybind11) can catch by the
// standard type, and every message names the key or the types involved.
#ifndef NODEMETA_ERRORS_H_
#define NODEMETA_ERRORS_H_

#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <typeinfo>

#include "nodemeta/export.h"

namespace nodemeta {

// The outcome of NodeMetadata::try_set(): expected outcomes are values, not exceptions.
enum class WriteResult : std::uint8_t {
  kInserted,            // the key was absent and now holds the value
  kUpdated,             // the key was present (and not protected); its value was replaced
  kRejectedProtected,   // the key is protected; nothing was written
};

// "inserted", "updated", "rejected_protected".
NODEMETA_API std::string_view to_string(WriteResult result) noexcept;

// Reading a key the node does not hold: operator[] and at(). Like Python's KeyError.
// what(): "key 'custom' not found".
class NODEMETA_API KeyError : public std::out_of_range {
 public:
  explicit KeyError(std::string_view key);
  const std::string& key() const noexcept { return key_; }

 private:
  std::string key_;
};

// Writing or erasing a protected key after the node was built (set, erase, update, and
// NodeEditor::set/erase inside edit). what() is exactly the PyTorch original's message:
// "Could not override node key: val".
class NODEMETA_API ProtectedKeyError : public std::runtime_error {
 public:
  explicit ProtectedKeyError(std::string_view key);
  const std::string& key() const noexcept { return key_; }

 private:
  std::string key_;
};

// Value::as<T>() on a value that holds another type.
// what(): "value holds std::string, not std::int64_t".
class NODEMETA_API BadValueCast : public std::bad_cast {
 public:
  BadValueCast(std::string held, std::string requested);
  const char* what() const noexcept override { return message_.c_str(); }
  const std::string& held() const noexcept { return held_; }
  const std::string& requested() const noexcept { return requested_; }

 private:
  std::string held_;
  std::string requested_;
  std::string message_;
};

// An update()/edit() whose callback's own work keeps changing what the callback read, so
// that its commit can never succeed: an update(k) callback that writes k, an edit()
// callback that writes its node outside the NodeEditor (thrown after the run in which
// the callback's thread made such a write, or after 256 runs in a row invalidated by
// other threads). Writes inside callbacks are otherwise allowed: callbacks hold no lock,
// and no write is refused for being made inside one (before issue 21 every write was).
class NODEMETA_API ReentrancyError : public std::logic_error {
 public:
  using std::logic_error::logic_error;
};

}  // namespace nodemeta

#endif  // NODEMETA_ERRORS_H_
