# Configures, builds and installs this source tree on its own: core, graph, passes and the
# nodemeta command (no tests, benchmarks or Python package), unoptimised and without debug
# information, with BUILD_SHARED_LIBS=SHARED, into PREFIX (libraries in PREFIX/LIBDIR). The
# package tests build one with the other library type than the build they belong to.
#   cmake -DSOURCE_DIR=<src> -DBUILD_DIR=<dir> -DPREFIX=<dir> -DGENERATOR=Ninja -DCXX=g++
#         -DTBB_DIR=<dir> -DSHARED=<ON|OFF> -DLIBDIR=<lib> -P build_install.cmake
foreach(_var SOURCE_DIR BUILD_DIR PREFIX GENERATOR CXX TBB_DIR SHARED LIBDIR)
  if(NOT DEFINED ${_var})
    message(FATAL_ERROR "build_install.cmake: -D${_var}= is required")
  endif()
endforeach()
file(REMOVE_RECURSE ${PREFIX})

function(run step)
  string(TIMESTAMP _start "%s")
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE _rc OUTPUT_VARIABLE _out ERROR_VARIABLE _out)
  string(TIMESTAMP _end "%s")
  math(EXPR _seconds "${_end} - ${_start}")
  if(NOT _rc EQUAL 0)
    message(FATAL_ERROR "${step} failed (exit ${_rc}):\n${_out}")
  endif()
  message(STATUS "${step}: ${_seconds} s")
endfunction()

run(configure ${CMAKE_COMMAND} -S ${SOURCE_DIR} -B ${BUILD_DIR} -G ${GENERATOR}
    -DCMAKE_CXX_COMPILER=${CXX} -DCMAKE_BUILD_TYPE= -DCMAKE_INSTALL_PREFIX=${PREFIX}
    -DBUILD_SHARED_LIBS=${SHARED} -DTBB_DIR=${TBB_DIR} -DCMAKE_INSTALL_LIBDIR=${LIBDIR}
    -DNODEMETA_BUILD_TESTS=OFF -DNODEMETA_BUILD_BENCHMARKS=OFF -DNODEMETA_BUILD_PYTHON=OFF)
run(build ${CMAKE_COMMAND} --build ${BUILD_DIR})
run(install ${CMAKE_COMMAND} --install ${BUILD_DIR})
