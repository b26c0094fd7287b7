# cmake -DFILE=<path> -DGZIP=<1|0> -P check_gzip.cmake: FILE starts with the gzip magic (1f 8b) or not.
file(READ "${FILE}" head LIMIT 2 HEX)
if(GZIP AND NOT head STREQUAL "1f8b")
  message(FATAL_ERROR "${FILE}: expected gzip data, starts with ${head}")
elseif(NOT GZIP AND head STREQUAL "1f8b")
  message(FATAL_ERROR "${FILE}: expected plain JSON, got gzip data")
endif()
