// SPDX-License-Identifier: MIT
// Foundation helpers: the row softmax against a plain scalar loop (the naive baseline) in the same binary.
#include <cmath>
#include <vector>

#include "bench_util.hpp"
#include "kexue/detail/simd.hpp"

using namespace kexue_bench;

namespace {

// 64 rows of `cols` logits: one attention head's worth of query rows.
constexpr Index kRows = 64;

std::vector<float> logits(Index cols) {
  std::vector<float> x(static_cast<std::size_t>(kRows * cols));
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = float((i * 2654435761u) % 1000) * 0.01f - 5.f;
  return x;
}

void BM_softmax_rows(benchmark::State& state) {
  const Index cols = state.range(0);
  auto x = logits(cols);
  // Softmax of a softmax costs the same as the first one, so the buffer is not refreshed between runs.
  for (auto _ : state) {
    for (Index r = 0; r < kRows; ++r) kd::softmax_row(x.data() + r * cols, cols);
    benchmark::ClobberMemory();
  }
  report_bytes(state, double(kRows * cols) * sizeof(float) * 2);
}
BENCHMARK(BM_softmax_rows)->Arg(128)->Arg(2048)->Arg(8192);

void BM_softmax_rows_naive(benchmark::State& state) {
  const Index cols = state.range(0);
  auto x = logits(cols);
  // Softmax of a softmax costs the same as the first one, so the buffer is not refreshed between runs.
  for (auto _ : state) {
    for (Index r = 0; r < kRows; ++r) {
      float* row = x.data() + r * cols;
      float m = row[0];
      for (Index i = 1; i < cols; ++i) m = std::max(m, row[i]);
      float s = 0;
      for (Index i = 0; i < cols; ++i) s += (row[i] = std::exp(row[i] - m));
      for (Index i = 0; i < cols; ++i) row[i] /= s;
    }
    benchmark::ClobberMemory();
  }
  report_bytes(state, double(kRows * cols) * sizeof(float) * 2);
}
BENCHMARK(BM_softmax_rows_naive)->Arg(128)->Arg(2048)->Arg(8192);

}  // namespace

BENCHMARK_MAIN();
