# Debian packages with CPack: `cpack -G DEB` in a configured, built tree. One package per
# install component, split as Debian splits oneTBB (libtbb12 / libtbb-dev):
#
#   libnodemeta0        runtime  libnodemeta.so.0, libnodemeta_graph.so.0, libnodemeta_passes.so.0
#   libnodemeta-dev     dev      headers, the .so links, CMake package and pkg-config files
#   nodemeta            cli      the nodemeta command and its bundled graph
#   python3-nodemeta    python   the Python package (when it is built)
#
# File names are Debian's: <package>_<version>_<arch>.deb, the version being project(VERSION).
# The libraries' dependencies (libtbb12, libsimdjson14, zlib1g, libstdc++6, libc6, ...) come
# from dpkg-shlibdeps; dependencies between the four packages are exact (= version).
#
# Packages are for shared builds: a static build's libraries have no runtime package.
# For a release, build the release preset with the Debian prefix, so libraries land in the
# multiarch directory:
#   cmake --preset release -DCMAKE_INSTALL_PREFIX=/usr && cmake --build --preset release
#   (cd build/release && cpack -G DEB)
if(NOT BUILD_SHARED_LIBS)
  message(STATUS "nodemeta: static build, no Debian packages (cpack -G DEB needs BUILD_SHARED_LIBS=ON)")
  return()
endif()

set(NODEMETA_PACKAGE_CONTACT "nodemeta maintainers" CACHE STRING
    "Maintainer field of the Debian packages (Name <email>)")

set(CPACK_PACKAGE_NAME nodemeta)
set(CPACK_PACKAGE_VENDOR "nodemeta")
set(CPACK_PACKAGE_CONTACT "${NODEMETA_PACKAGE_CONTACT}")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "${PROJECT_DESCRIPTION}")
set(CPACK_RESOURCE_FILE_README "${PROJECT_SOURCE_DIR}/README.md")
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_STRIP_FILES ON)  # the debug preset's binaries carry full debug info
set(CPACK_GENERATOR DEB)
set(CPACK_SOURCE_GENERATOR "")

set(CPACK_DEB_COMPONENT_INSTALL ON)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_ENABLE_COMPONENT_DEPENDS ON)
# dpkg-shlibdeps resolves the nodemeta libraries that the command and the Python module need
# from the build tree (they are in another package than the binaries that load them).
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS_PRIVATE_DIRS "")
foreach(_lib nodemeta nodemeta_graph nodemeta_passes)
  if(TARGET ${_lib})
    get_target_property(_dir ${_lib} LIBRARY_OUTPUT_DIRECTORY)
    if(NOT _dir)
      get_target_property(_dir ${_lib} BINARY_DIR)
    endif()
    list(APPEND CPACK_DEBIAN_PACKAGE_SHLIBDEPS_PRIVATE_DIRS ${_dir})
  endif()
endforeach()
# libnodemeta0 gets a shlibs file, so packages built against it depend on it by SONAME.
set(CPACK_DEBIAN_PACKAGE_GENERATE_SHLIBS ON)

set(CPACK_DEBIAN_RUNTIME_PACKAGE_NAME libnodemeta${PROJECT_VERSION_MAJOR})
set(CPACK_DEBIAN_RUNTIME_PACKAGE_SECTION libs)
set(CPACK_DEBIAN_DEV_PACKAGE_NAME libnodemeta-dev)
set(CPACK_DEBIAN_DEV_PACKAGE_SECTION libdevel)
# The headers include oneTBB's; the CMake package finds TBB (find_dependency).
set(CPACK_DEBIAN_DEV_PACKAGE_DEPENDS "libtbb-dev")
set(CPACK_DEBIAN_CLI_PACKAGE_NAME nodemeta)
set(CPACK_DEBIAN_CLI_PACKAGE_SECTION devel)
set(CPACK_DEBIAN_PYTHON_PACKAGE_NAME python3-nodemeta)
set(CPACK_DEBIAN_PYTHON_PACKAGE_SECTION python)

set(CPACK_COMPONENTS_ALL runtime dev)
if(TARGET nodemeta_cli)
  list(APPEND CPACK_COMPONENTS_ALL cli)
endif()
if(TARGET nodemeta_python)
  # The extension is built for one CPython (_core.cpython-311-*.so): that minor version only.
  set(_major ${NODEMETA_PYTHON_VERSION_MAJOR})
  math(EXPR _next_minor "${NODEMETA_PYTHON_VERSION_MINOR} + 1")
  set(CPACK_DEBIAN_PYTHON_PACKAGE_DEPENDS
      "python3 (>= ${_major}.${NODEMETA_PYTHON_VERSION_MINOR}), python3 (<< ${_major}.${_next_minor})")
  set(CPACK_DEBIAN_PYTHON_PACKAGE_SUGGESTS "python3-torch")  # nodemeta.fx
  list(APPEND CPACK_COMPONENTS_ALL python)
endif()

include(CPack)

cpack_add_component(runtime DISPLAY_NAME "nodemeta libraries"
  DESCRIPTION "Thread-safe metadata store for compiler graph nodes on oneTBB: the shared libraries (core, graph files, passes).")
cpack_add_component(dev DISPLAY_NAME "nodemeta development files" DEPENDS runtime
  DESCRIPTION "Headers, CMake package (find_package(nodemeta)) and pkg-config files (nodemeta, nodemeta-graph, nodemeta-passes) for the nodemeta libraries.")
cpack_add_component(cli DISPLAY_NAME "nodemeta command" DEPENDS runtime
  DESCRIPTION "The nodemeta command: runs nodemeta's passes on a graph file (nodemeta run) or shows its node metadata (nodemeta inspect); with a bundled graph.")
cpack_add_component(python DISPLAY_NAME "nodemeta for Python" DEPENDS runtime
  DESCRIPTION "The nodemeta Python package: a drop-in NodeMetadata for torch.fx graphs over the C++ store, and nodemeta's passes from Python (nodemeta.fx).")
