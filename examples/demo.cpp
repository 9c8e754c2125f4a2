// SPDX-License-Identifier: MIT
// The first thing the demo prints: which build of kexue this is and what SIMD it runs on.
#include <kexue/kexue.hpp>

#include <cstdio>

int main() {
  std::printf("kexue %d.%d.%d  SIMD: %s\n", KEXUE_VERSION_MAJOR, KEXUE_VERSION_MINOR, KEXUE_VERSION_PATCH,
              kexue::simd_arch());
  return 0;
}
