# tests/fuzz/common.sh: sourced by run.sh and run_loader.sh (from the repository root).
# Compiles library sources for libFuzzer + ASAN + UBSAN with clang, two at a time, each only
# when it or a header changed since its object.
cxx=$(command -v clang++-14 || command -v clang++)
common=(-std=c++20 -g -O1 -fno-omit-frame-pointer -DNODEMETA_STD_ALLOCATOR=1 -DNODEMETA_ENABLE_ASSERTS=1
        -Iinclude -Itests -fno-sanitize-recover=undefined)

# The sources an add_library(NAME ...) block of a CMakeLists.txt lists, with `prefix` put
# before each bare file name: core_sources / graph_sources below.
library_sources() {  # cmakelists name prefix
  sed -n "/^add_library($2\$/,/)/p" "$1" | grep -o '[A-Za-z0-9_/]*\.cpp' | sed "s|^|$3|"
}

# build_objects OBJDIR SOURCE...: sets the array `objs` to the objects, building stale ones.
build_objects() {
  local dir=$1 src obj
  shift
  mkdir -p "$dir"
  objs=()
  for src in "$@"; do
    obj="$dir/$(echo "${src%.cpp}" | tr / _).o"
    objs+=("$obj")
    if [ ! -f "$obj" ] || [ "$src" -nt "$obj" ] || [ -n "$(find include src -newer "$obj" -name '*.h' -print -quit)" ]; then
      "$cxx" "${common[@]}" -fsanitize=fuzzer-no-link,address,undefined -c "$src" -o "$obj" &
      while [ "$(jobs -rp | wc -l)" -ge 2 ]; do wait -n; done
    fi
  done
  wait
}
