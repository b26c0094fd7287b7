# nodemeta_warnings: the warning flags for nodemeta's own targets (linked PRIVATE, never
# exported, never added to global flags).
add_library(nodemeta_warnings INTERFACE)
target_compile_options(nodemeta_warnings INTERFACE
  -Wall -Wextra -Wpedantic -Wshadow -Wnon-virtual-dtor -Wold-style-cast -Wcast-align
  -Woverloaded-virtual -Wnull-dereference -Wimplicit-fallthrough
  $<$<BOOL:${NODEMETA_WARNINGS_AS_ERRORS}>:-Werror>)
