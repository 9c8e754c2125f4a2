// SPDX-License-Identifier: MIT
// This machine's limits: fp32 FMA peak (one thread and all threads) and triad memory bandwidth. Every kernel
// benchmark reports its fraction of these.
#include <vector>

#include "bench_util.hpp"

using namespace kexue_bench;

namespace {

void BM_fma_peak(benchmark::State& state) {
  const int threads = static_cast<int>(state.range(0));
  using B = kd::Batch<float>;
  constexpr int kChains = 10;  // see measure_fma_peak_one_thread
  constexpr long kInner = 100000;
  for (auto _ : state) {
#if defined(_OPENMP)
#pragma omp parallel num_threads(threads)
#endif
    {
      B acc[kChains];
      for (int c = 0; c < kChains; ++c) acc[c] = B(float(c) * 1e-3f);
      const B a(0.999999f), b(1e-7f);
      for (long r = 0; r < kInner; ++r)
        for (int c = 0; c < kChains; ++c) acc[c] = xsimd::fma(acc[c], a, b);
      B s = acc[0];
      for (int c = 1; c < kChains; ++c) s += acc[c];
      benchmark::DoNotOptimize(s);
    }
  }
  const double flops = double(threads) * kInner * kChains * B::size * 2.0;
  state.counters["GFLOPS"] = benchmark::Counter(flops / 1e9, benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel(kexue::simd_arch());
}
BENCHMARK(BM_fma_peak)->Arg(1)->Arg(2)->UseRealTime();

void BM_triad(benchmark::State& state) {
  const int threads = static_cast<int>(state.range(0));
  const Index n = Index(1) << 24;  // 3 x 64 MiB: out of every cache
  std::vector<float> a(n, 1.f), b(n, 2.f), c(n, 3.f);
  for (auto _ : state) {
#if defined(_OPENMP)
#pragma omp parallel for num_threads(threads) schedule(static)
#endif
    for (Index i = 0; i < n; ++i) a[i] = b[i] + 0.5f * c[i];
    benchmark::ClobberMemory();
  }
  state.counters["GBps"] =
      benchmark::Counter(double(n) * 3 * sizeof(float) / 1e9, benchmark::Counter::kIsIterationInvariantRate);
  (void)threads;
}
BENCHMARK(BM_triad)->Arg(1)->Arg(2)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
