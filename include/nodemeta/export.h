// nodemeta/export.h: the macros that mark nodemeta's public API for export from its shared
// libraries.
//
// nodemeta's libraries are compiled with hidden symbol visibility (as oneTBB, Abseil and fmt
// are): a shared libnodemeta exports the declarations marked here and nothing else, so its
// internals are neither part of its ABI nor interposable, and its calls to itself bind
// locally. Each library has its own macro:
//
//   NODEMETA_API          libnodemeta         (nodemeta/*.h and the detail entry points that
//                                              its inline code calls)
//   NODEMETA_GRAPH_API    libnodemeta_graph   (nodemeta/graph/*.h)
//   NODEMETA_PASSES_API   libnodemeta_passes  (nodemeta/passes/*.h)
//
// Users never define these. A static build of nodemeta defines NODEMETA_STATIC for itself and
// for every user (CMake's nodemeta::* targets carry it; nodemeta.pc's Cflags say it), and the
// macros are then empty: a shared module that links a static nodemeta keeps nodemeta's
// symbols to itself instead of re-exporting them. Without NODEMETA_STATIC a declaration is
// marked visible whatever the user's own -fvisibility, which a user compiled with
// -fvisibility=hidden (a pybind11 module) needs to link a shared nodemeta.
//
// ELF platforms with GCC or Clang; other compilers get empty macros.
#ifndef NODEMETA_EXPORT_H_
#define NODEMETA_EXPORT_H_

#if defined(NODEMETA_STATIC) || !(defined(__GNUC__) || defined(__clang__))
#define NODEMETA_API
#define NODEMETA_GRAPH_API
#define NODEMETA_PASSES_API
#else
#define NODEMETA_API __attribute__((visibility("default")))
#define NODEMETA_GRAPH_API __attribute__((visibility("default")))
#define NODEMETA_PASSES_API __attribute__((visibility("default")))
#endif

#endif  // NODEMETA_EXPORT_H_
