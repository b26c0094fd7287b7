// nodemeta/detail/config.h: build switches shared by every nodemeta header.
// Internal: no stability promise; include <nodemeta/nodemeta.h> instead.
#ifndef NODEMETA_DETAIL_CONFIG_H_
#define NODEMETA_DETAIL_CONFIG_H_

#include <cstddef>
#include <memory>
#include <type_traits>

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
//
// NODEMETA_FAULT_INJECTION=1 (set by the debug preset only, never by release) puts a fault
// point in front of every tbb_allocator allocation: a test installs a hook that throws
// std::bad_alloc at the allocation it chooses (tests/faults/, docs/design.md "Failing
// allocations on purpose"). std::allocator allocates through operator new, which that test
// replaces, so the sanitizer presets need no fault point. Without the macro Allocator is
// exactly tbb::tbb_allocator: nothing is compiled in.
#if defined(NODEMETA_STD_ALLOCATOR) && NODEMETA_STD_ALLOCATOR
template <class T>
using Allocator = std::allocator<T>;
#elif defined(NODEMETA_FAULT_INJECTION) && NODEMETA_FAULT_INJECTION
// Called with the size of every allocation the store makes; may throw std::bad_alloc.
using AllocationHook = void (*)(std::size_t bytes);
// Installs `hook` (nullptr: none) for every thread. Test builds only.
NODEMETA_API void set_allocation_hook(AllocationHook hook) noexcept;
NODEMETA_API void allocation_fault_point(std::size_t bytes);

template <class T>
class Allocator {
 public:
  using value_type = T;
  using propagate_on_container_move_assignment = std::true_type;
  using is_always_equal = std::true_type;

  Allocator() noexcept = default;
  template <class U>
  Allocator(const Allocator<U>& /*unused*/) noexcept {}

  [[nodiscard]] T* allocate(std::size_t n) {
    allocation_fault_point(n * sizeof(T));
    return tbb::tbb_allocator<T>().allocate(n);
  }
  void deallocate(T* p, std::size_t n) noexcept { tbb::tbb_allocator<T>().deallocate(p, n); }

  template <class U>
  bool operator==(const Allocator<U>& /*unused*/) const noexcept {
    return true;
  }
};
#else
template <class T>
using Allocator = tbb::tbb_allocator<T>;
#endif

}  // namespace nodemeta::detail

#endif  // NODEMETA_DETAIL_CONFIG_H_
