# SPDX-License-Identifier: MIT
# Debian 12's xsimd package links a target named `xtl` without depending on it.
# xsimd only needs xtl for optional complex-number support, so an empty target is enough.
if(TARGET xsimd AND NOT TARGET xtl)
  get_target_property(_kexue_xsimd_links xsimd INTERFACE_LINK_LIBRARIES)
  if(_kexue_xsimd_links MATCHES "(^|;)xtl(;|$)")
    add_library(xtl INTERFACE IMPORTED)
  endif()
endif()
