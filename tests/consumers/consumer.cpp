// SPDX-License-Identifier: MIT
// What a consumer writes: include the umbrella header, call kernels, check the result.
#include <kexue/kexue.hpp>

#include <cmath>
#include <cstdio>

int main() {
  std::printf("kexue %d.%d.%d, SIMD %s\n", KEXUE_VERSION_MAJOR, KEXUE_VERSION_MINOR, KEXUE_VERSION_PATCH,
              kexue::simd_arch());
  const kexue::Index n = 5, d = 8;
  kexue::Matrix<float> q = kexue::Matrix<float>::Random(n, d), k = kexue::Matrix<float>::Random(n, d);
  kexue::Matrix<float> v = kexue::Matrix<float>::Random(n, d), out(n, d);
  const float norm_before = q.norm();
  kexue::RopeTable<float> table(n, d);
  kexue::rope(table, q);
  kexue::rope(table, k);
  kexue::AttentionOptions options;
  options.causal = true;
  kexue::attention(q, k, v, out, options);
  // RoPE is a rotation; causal row 0 sees only key 0, so its output is v's row 0.
  const bool ok = std::abs(q.norm() - norm_before) < 1e-4f && (out.row(0) - v.row(0)).norm() < 1e-5f;
  std::printf("rope + causal attention: %s\n", ok ? "ok" : "WRONG");
  return ok ? 0 : 1;
}
