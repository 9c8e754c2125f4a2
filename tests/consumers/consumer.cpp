// SPDX-License-Identifier: MIT
// What a consumer writes: include the umbrella header, call a kernel, check the result.
#include <kexue/kexue.hpp>

#include <cstdio>

int main() {
  std::printf("kexue %d.%d.%d, SIMD %s\n", KEXUE_VERSION_MAJOR, KEXUE_VERSION_MINOR, KEXUE_VERSION_PATCH,
              kexue::simd_arch());
  kexue::Matrix<float> x(2, 3);
  x << 1, 2, 3, 4, 5, 6;
  return x.sum() == 21.0f ? 0 : 1;
}
