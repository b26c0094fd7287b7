# run(<command> <args>...): runs a command (in ${RUN_WORKING_DIRECTORY} when that is set) and
# stops the calling script with the command, its exit status and its output when it fails;
# its standard output (stripped) is left in `out`. Shared by the package test scripts.
function(run)
  set(_wd)
  if(DEFINED RUN_WORKING_DIRECTORY)
    set(_wd WORKING_DIRECTORY ${RUN_WORKING_DIRECTORY})
  endif()
  execute_process(COMMAND ${ARGN} ${_wd} RESULT_VARIABLE _rc OUTPUT_VARIABLE _out ERROR_VARIABLE _err
                  OUTPUT_STRIP_TRAILING_WHITESPACE)
  if(NOT _rc EQUAL 0)
    list(JOIN ARGN " " _cmd)
    message(FATAL_ERROR "${_cmd}: exit ${_rc}\n${_out}\n${_err}")
  endif()
  set(out "${_out}" PARENT_SCOPE)
endfunction()
