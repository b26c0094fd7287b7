// nodemeta/detail/config.h: build switches shared by every nodemeta header.
// Internal: no stability promise; include <nodemeta/nodemeta.h> instead.
#ifndef NODEMETA_DETAIL_CONFIG_H_
#define NODEMETA_DETAIL_CONFIG_H_

#include <memory>

#include <oneapi/tbb/tbb_allocator.h>

#include "nodemeta/export.h"

// NODEMETA_ASSERT(cond, msg): checks a precondition in debug builds (like __TBB_ASSERT).
// Active unless NDEBUG is defined; NODEMETA_ENABLE_ASSERTS=1 forces it on in release builds.
#if !defined(NODEMETA_ENABLE_ASSERTS)
#if defined(NDEBUG)
#define NODEMETA_ENABLE_ASSERTS 0
#else
#define NODEMETA_ENABLE_ASSERTS 1
#endif
#endif

namespace nodemeta::detail {
[[noreturn]] NODEMETA_API void assertion_failed(const char* expr, const char* message,
                                                const char* file, int line) noexcept;
}  // namespace nodemeta::detail

#if NODEMETA_ENABLE_ASSERTS
#define NODEMETA_ASSERT(cond, message)                                                   \
  ((cond) ? static_cast<void>(0)                                                         \
          : ::nodemeta::detail::assertion_failed(#cond, message, __FILE__, __LINE__))
#else
#define NODEMETA_ASSERT(cond, message) static_cast<void>(0)
#endif

namespace nodemeta::detail {

// The allocator of the store's hash map and of every node record.
// Default: oneTBB's tbb_allocator (tbbmalloc when it is installed, else malloc).
// NODEMETA_STD_ALLOCATOR=1 (set by the asan and tsan presets) switches to std::allocator so
// that the sanitizers, which intercept malloc/free but not tbbmalloc's own pools, see every
// allocation: ThreadSanitizer would otherwise miss tbbmalloc's reuse of memory between
// threads, and LeakSanitizer cannot scan tbbmalloc's pools for live pointers.
#if defined(NODEMETA_STD_ALLOCATOR) && NODEMETA_STD_ALLOCATOR
template <class T>
using Allocator = std::allocator<T>;
#else
template <class T>
using Allocator = tbb::tbb_allocator<T>;
#endif

}  // namespace nodemeta::detail

#endif  // NODEMETA_DETAIL_CONFIG_H_
