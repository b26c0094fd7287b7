// nodemeta/detail/journal_access.h: what the passes' journal (nodemeta::passes::PassContext)
// needs from the store beyond NodeMetadata's public calls. Internal: no stability promise.
//
// A journaled write holds the journal's per-node lock across the store's write, so it must
// not run a value's destructor there (design.md clause 9: no destructor under a lock of
// nodemeta's): write() and erase() here are NodeMetadata::try_set()/erase() that leave the
// collection of retired values to a later collect(), called once the journal lock is
// released. restore() is undo's per-key compare-and-restore, atomic under the node's lock.
#ifndef NODEMETA_DETAIL_JOURNAL_ACCESS_H_
#define NODEMETA_DETAIL_JOURNAL_ACCESS_H_

#include <optional>

#include "nodemeta/errors.h"
#include "nodemeta/export.h"
#include "nodemeta/key.h"
#include "nodemeta/node_metadata.h"
#include "nodemeta/value.h"

namespace nodemeta::detail {

struct NODEMETA_API JournalAccess {
  // NodeMetadata::try_set() and erase() (same results, same exceptions), except that the
  // calling thread releases none of the values retired so far: no destructor runs inside.
  static WriteResult write(NodeMetadata& node, Key key, Value&& value);
  static bool erase(NodeMetadata& node, Key key);

  enum class Restore {
    kRestored,   // the key held `expected` (or was absent, expected nullopt): now `old`
    kChanged,    // the key holds something else: left as it is
    kProtected,  // the key is protected: left as it is
  };
  // Under the node's write lock: if `key` still holds `expected` (the same value: same
  // kind and bits, a boxed value the very same box; nullopt: absent), puts `old` back
  // (nullopt: erases the key) and empties `old`; otherwise changes nothing. Releases no
  // retired value (no destructor runs inside). May throw std::bad_alloc (growing the node),
  // and whatever the node's lock throws; the node is then unchanged.
  static Restore restore(NodeMetadata& node, Key key, const std::optional<Value>& expected,
                         std::optional<Value>& old);

  // Releases what is due of this thread's retired values (their destructors run here):
  // what write(), erase() and restore() left. Call with no lock held.
  static void collect() noexcept;
};

}  // namespace nodemeta::detail

#endif  // NODEMETA_DETAIL_JOURNAL_ACCESS_H_
