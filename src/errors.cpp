#include "nodemeta/errors.h"

#include <cstdio>
#include <cstdlib>

#include "nodemeta/detail/config.h"

namespace nodemeta {

std::string_view to_string(WriteResult result) noexcept {
  switch (result) {
    case WriteResult::kInserted:
      return "inserted";
    case WriteResult::kUpdated:
      return "updated";
    case WriteResult::kRejectedProtected:
      return "rejected_protected";
  }
  return "unknown";
}

KeyError::KeyError(std::string_view key)
    : std::out_of_range("key '" + std::string(key) + "' not found"), key_(key) {}

ProtectedKeyError::ProtectedKeyError(std::string_view key)
    : std::runtime_error("Could not override node key: " + std::string(key)), key_(key) {}

BadValueCast::BadValueCast(std::string held, std::string requested)
    : held_(std::move(held)),
      requested_(std::move(requested)),
      message_("value holds " + held_ + ", not " + requested_) {}

namespace detail {
void assertion_failed(const char* expr, const char* message, const char* file, int line) noexcept {
  std::fprintf(stderr, "%s:%d: nodemeta assertion failed: %s (%s)\n", file, line, message, expr);
  std::fflush(stderr);
  std::abort();
}
}  // namespace detail

}  // namespace nodemeta
