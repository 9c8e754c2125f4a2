# SPDX-License-Identifier: MIT
# The `docs` target's driver, run as `cmake -DDOXYGEN=... -DDOXYFILE=... -DHEADER_DIR=... -DLOG=... -DWERROR=ON|OFF
# -P KexueDocs.cmake`: runs doxygen, then checks that every public header (HEADER_DIR/*.hpp) has a `/// @file`
# comment (doxygen itself does not warn about an undocumented file: such a header gets no page and its leading
# comment lands on namespace kexue). Every warning is printed as `file:line: warning: text` and also written to
# LOG; with WERROR the target fails when there is any, after all of them have been printed.
execute_process(COMMAND "${DOXYGEN}" "${DOXYFILE}" RESULT_VARIABLE _rc ERROR_VARIABLE _warnings)
file(GLOB _headers "${HEADER_DIR}/*.hpp")
list(SORT _headers)
foreach(_header IN LISTS _headers)
  file(STRINGS "${_header}" _file_command REGEX "^/// *[@\\\\]file( |$)")
  if(NOT _file_command)
    string(APPEND _warnings
      "${_header}:1: warning: public header without a `/// @file` comment (its page is missing from the reference)\n")
  endif()
endforeach()
file(WRITE "${LOG}" "${_warnings}")
if(_warnings)
  message(NOTICE "${_warnings}")
endif()
# With WERROR the Doxyfile says WARN_AS_ERROR = FAIL_ON_WARNINGS (doxygen prints them all, then exits non-zero);
# without it a non-zero exit is a failure of doxygen itself.
if(_warnings AND WERROR)
  message(FATAL_ERROR "kexue docs: warnings above (also in ${LOG}); -DKEXUE_DOCS_WERROR=OFF renders anyway")
elseif(NOT _rc EQUAL 0)
  message(FATAL_ERROR "kexue docs: doxygen failed (exit code ${_rc})")
elseif(_warnings)
  message(NOTICE "kexue docs: rendered with the warnings above (also in ${LOG})")
endif()
