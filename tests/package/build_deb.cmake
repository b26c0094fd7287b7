# Builds the Debian packages of a configured, built tree with `cpack -G DEB`, checks their
# names, versions and dependencies, and unpacks them with dpkg-deb -x into ROOT, a throwaway
# root, as dpkg -i would lay them out (without installing anything on this machine).
#   cmake -DCPACK=cpack -DBUILD_DIR=<build> -DWORK_DIR=<scratch> -DROOT=<scratch root>
#         -DVERSION=<x.y.z> -DPACKAGES=<package,...> -P build_deb.cmake
foreach(_var CPACK BUILD_DIR WORK_DIR ROOT VERSION PACKAGES)
  if(NOT DEFINED ${_var})
    message(FATAL_ERROR "build_deb.cmake: -D${_var}= is required")
  endif()
endforeach()
string(REPLACE "," ";" PACKAGES "${PACKAGES}")
file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR} ${ROOT})

include(${CMAKE_CURRENT_LIST_DIR}/run.cmake)

string(TIMESTAMP _start "%s")
run(${CPACK} -G DEB --config ${BUILD_DIR}/CPackConfig.cmake -B ${WORK_DIR})
string(TIMESTAMP _end "%s")
math(EXPR _seconds "${_end} - ${_start}")
message(STATUS "cpack -G DEB: ${_seconds} s")

execute_process(COMMAND dpkg --print-architecture OUTPUT_VARIABLE _arch OUTPUT_STRIP_TRAILING_WHITESPACE)
# What each package must depend on (besides what dpkg-shlibdeps adds for libc and libgcc).
set(_needs_libnodemeta0 "libtbb12" "libsimdjson[0-9]+" "zlib1g" "libstdc\\+\\+6" "libc6")
set(_needs_libnodemeta-dev "libnodemeta0 \\(= ${VERSION}\\)" "libtbb-dev")
set(_needs_nodemeta "libnodemeta0 \\(= ${VERSION}\\)" "libtbb12" "libstdc\\+\\+6")
set(_needs_python3-nodemeta "libnodemeta0 \\(= ${VERSION}\\)" "python3 \\(>= 3")
foreach(_pkg IN LISTS PACKAGES)
  set(_deb ${WORK_DIR}/${_pkg}_${VERSION}_${_arch}.deb)
  if(NOT EXISTS ${_deb})
    file(GLOB _made ${WORK_DIR}/*.deb)
    message(FATAL_ERROR "cpack made no ${_deb}; it made: ${_made}")
  endif()
  run(dpkg-deb -f ${_deb} Package Version Depends)
  message(STATUS "${_pkg}_${VERSION}_${_arch}.deb:\n${out}")
  string(REGEX MATCH "Depends: [^\n]*" _depends "${out}")
  if(NOT out MATCHES "Version: ${VERSION}(\n|$)")
    message(FATAL_ERROR "${_deb}: version is not ${VERSION}:\n${out}")
  endif()
  foreach(_dep IN LISTS _needs_${_pkg})
    if(NOT _depends MATCHES "[:,] ${_dep}")
      message(FATAL_ERROR "${_deb}: Depends lacks ${_dep}:\n${out}")
    endif()
  endforeach()
  run(dpkg-deb -x ${_deb} ${ROOT})
endforeach()
