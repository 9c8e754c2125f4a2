# SPDX-License-Identifier: MIT
# Flags for kexue's own targets (tests, benchmarks, examples): never put on the INTERFACE target.
function(kexue_target_flags target)
  target_compile_options(${target} PRIVATE -Wall -Wextra -Wpedantic)
  if(KEXUE_WERROR)
    target_compile_options(${target} PRIVATE -Werror)
  endif()
  target_compile_options(${target} PRIVATE ${KEXUE_ARCH_FLAGS})
  if(KEXUE_SANITIZE)
    target_compile_options(${target} PRIVATE -fsanitize=address,undefined -fno-omit-frame-pointer
                                             -fno-sanitize-recover=all)
    target_link_options(${target} PRIVATE -fsanitize=address,undefined)
  endif()
endfunction()
