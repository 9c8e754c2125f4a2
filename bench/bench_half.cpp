// SPDX-License-Identifier: MIT
// kexue::convert throughput at 64 MiB of floats (16 Mi elements: out of every cache), float -> fp16 / bf16 and
// back, one thread, in GB/s of bytes read plus bytes written, beside the same run's triad (bench_peak's loop, the
// bandwidth every kernel reports bw_frac against). The target: convert at >= 80% of the triad.
#include "kexue/half.hpp"

#include <vector>

#include "bench_util.hpp"

using namespace kexue_bench;

namespace {

constexpr Index kN = Index(1) << 24;  // 64 MiB of floats

template <class H>
void BM_convert_narrow(benchmark::State& state) {
  std::vector<float> src(kN);
  for (Index i = 0; i < kN; ++i) src[std::size_t(i)] = float(i % 1000) * 0.37f - 100.0f;
  std::vector<H> dst(kN);
  Eigen::Map<const kexue::Vector<float>> s(src.data(), kN);
  Eigen::Map<kexue::Vector<H>> d(dst.data(), kN);
  for (auto _ : state) {
    kexue::convert(s, d);
    benchmark::ClobberMemory();
  }
  report_bytes(state, double(kN) * (sizeof(float) + sizeof(H)));
  state.SetLabel(kexue::simd_arch());
}
BENCHMARK_TEMPLATE(BM_convert_narrow, Eigen::half)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_TEMPLATE(BM_convert_narrow, Eigen::bfloat16)->Unit(benchmark::kMillisecond)->UseRealTime();

template <class H>
void BM_convert_widen(benchmark::State& state) {
  std::vector<H> src(kN);
  for (Index i = 0; i < kN; ++i) src[std::size_t(i)] = kexue::detail::from_float<H>(float(i % 1000) * 0.37f - 100.0f);
  std::vector<float> dst(kN);
  Eigen::Map<const kexue::Vector<H>> s(src.data(), kN);
  Eigen::Map<kexue::Vector<float>> d(dst.data(), kN);
  for (auto _ : state) {
    kexue::convert(s, d);
    benchmark::ClobberMemory();
  }
  report_bytes(state, double(kN) * (sizeof(float) + sizeof(H)));
  state.SetLabel(kexue::simd_arch());
}
BENCHMARK_TEMPLATE(BM_convert_widen, Eigen::half)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_TEMPLATE(BM_convert_widen, Eigen::bfloat16)->Unit(benchmark::kMillisecond)->UseRealTime();

/// bench_peak's triad (3 x 64 MiB, one thread), in this run for a same-run ratio.
void BM_triad(benchmark::State& state) {
  std::vector<float> a(kN, 1.f), b(kN, 2.f), c(kN, 3.f);
  for (auto _ : state) {
    for (Index i = 0; i < kN; ++i) a[std::size_t(i)] = b[std::size_t(i)] + 0.5f * c[std::size_t(i)];
    benchmark::ClobberMemory();
  }
  report_bytes(state, double(kN) * 3 * sizeof(float));
}
BENCHMARK(BM_triad)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
