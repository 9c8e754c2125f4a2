// SPDX-License-Identifier: MIT
// Norms (kexue/norm.hpp) on [4096, 4096] float (64 MiB per matrix: far beyond the caches), issue 14's target
// shape. Rows: layer_norm and rms_norm (x read once, out written once), the Pre-Norm residual forms
// add_layer_norm / add_rms_norm with sum (x and residual read, sum and out written) and the Post-Norm forms
// without sum (x and residual read, out written), each with 1 and 2 threads. Bytes counted are the DRAM
// traffic of the data (gamma and beta are 16 KiB and stay in cache); bw_frac is against bench_peak's
// single-thread triad, so a 2-thread row can exceed 1.
// BM_norm_bf16: the same forms on Eigen::bfloat16 x / residual / out / sum with bf16 gamma and beta (torch's bf16
// LayerNorm), bytes counted as 2 per element and stream, so GBps and bw_frac compare with the float rows.
// Same binary, as the baseline: a plain scalar two-pass loop (what a straightforward port would write).
#include <cmath>
#include <string>
#include <vector>

#include "bench_util.hpp"
#include "kexue/norm.hpp"

using namespace kexue_bench;

namespace {

constexpr Index kRows = 4096, kCols = 4096;

using Map = Eigen::Map<kexue::Matrix<float>, Eigen::Aligned64>;

// 64-byte aligned, as torch's and Eigen's (AVX-512) allocators give.
kexue::detail::AlignedVector<float> data(Index n, unsigned salt) {
  kexue::detail::AlignedVector<float> x(static_cast<std::size_t>(n));
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = float(((i + salt) * 2654435761u) % 2000) * 1e-3f - 1.f;
  return x;
}

enum Form : int { kLayer, kRms, kAddLayerPre, kAddRmsPre, kAddLayerPost, kAddRmsPost };
const char* const kNames[] = {"layer_norm", "rms_norm", "add_layer_norm pre (sum kept)", "add_rms_norm pre (sum kept)",
                              "add_layer_norm post", "add_rms_norm post"};
// Matrices read or written per element.
const int kStreams[] = {2, 2, 4, 4, 3, 3};

void BM_norm(benchmark::State& state) {
  const Form form = static_cast<Form>(state.range(0));
  const int threads = static_cast<int>(state.range(1));
  set_threads(threads);
  const Index n = kRows * kCols;
  auto xb = data(n, 1), rb = data(n, 2), ob = data(n, 3), sb = data(n, 4);
  const Map x(xb.data(), kRows, kCols), r(rb.data(), kRows, kCols), out(ob.data(), kRows, kCols),
      sum(sb.data(), kRows, kCols);
  const kexue::Vector<float> gamma = kexue::Vector<float>::LinSpaced(kCols, 0.5f, 1.5f);
  const kexue::Vector<float> beta = kexue::Vector<float>::LinSpaced(kCols, -0.1f, 0.1f);
  // Inputs are never overwritten, so every iteration does the same work.
  for (auto _ : state) {
    switch (form) {
      case kLayer: kexue::layer_norm(x, gamma, beta, out); break;
      case kRms: kexue::rms_norm(x, gamma, out); break;
      case kAddLayerPre: kexue::add_layer_norm(x, r, gamma, beta, out, sum); break;
      case kAddRmsPre: kexue::add_rms_norm(x, r, gamma, out, sum); break;
      case kAddLayerPost: kexue::add_layer_norm(x, r, gamma, beta, out); break;
      case kAddRmsPost: kexue::add_rms_norm(x, r, gamma, out); break;
    }
    benchmark::ClobberMemory();
  }
  state.SetLabel(std::string(kNames[form]) + " threads " + std::to_string(threads));
  report_bytes(state, double(n) * sizeof(float) * kStreams[form]);
}
BENCHMARK(BM_norm)
    ->ArgsProduct({{kLayer, kRms, kAddLayerPre, kAddRmsPre, kAddLayerPost, kAddRmsPost}, {1, 2}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// 64-byte aligned 16-bit data with the values of data(n, salt), rounded.
kexue::detail::AlignedVector<Eigen::bfloat16> data_bf16(Index n, unsigned salt) {
  const auto f = data(n, salt);
  kexue::detail::AlignedVector<Eigen::bfloat16> h(f.size());
  for (std::size_t i = 0; i < f.size(); ++i) h[i] = kexue::detail::from_float<Eigen::bfloat16>(f[i]);
  return h;
}

void BM_norm_bf16(benchmark::State& state) {
  using H = Eigen::bfloat16;
  using MapH = Eigen::Map<kexue::Matrix<H>, Eigen::Aligned64>;
  const Form form = static_cast<Form>(state.range(0));
  const int threads = static_cast<int>(state.range(1));
  set_threads(threads);
  const Index n = kRows * kCols;
  auto xb = data_bf16(n, 1), rb = data_bf16(n, 2), ob = data_bf16(n, 3), sb = data_bf16(n, 4);
  const MapH x(xb.data(), kRows, kCols), r(rb.data(), kRows, kCols), out(ob.data(), kRows, kCols),
      sum(sb.data(), kRows, kCols);
  kexue::Vector<H> gamma(kCols), beta(kCols);
  for (Index j = 0; j < kCols; ++j) {
    gamma[j] = kexue::detail::from_float<H>(0.5f + float(j) / float(kCols));
    beta[j] = kexue::detail::from_float<H>(-0.1f + 0.2f * float(j) / float(kCols));
  }
  for (auto _ : state) {
    switch (form) {
      case kLayer: kexue::layer_norm(x, gamma, beta, out); break;
      case kRms: kexue::rms_norm(x, gamma, out); break;
      case kAddLayerPre: kexue::add_layer_norm(x, r, gamma, beta, out, sum); break;
      case kAddRmsPre: kexue::add_rms_norm(x, r, gamma, out, sum); break;
      case kAddLayerPost: kexue::add_layer_norm(x, r, gamma, beta, out); break;
      case kAddRmsPost: kexue::add_rms_norm(x, r, gamma, out); break;
    }
    benchmark::ClobberMemory();
  }
  state.SetLabel(std::string("bf16 ") + kNames[form] + " threads " + std::to_string(threads));
  report_bytes(state, double(n) * sizeof(H) * kStreams[form]);
}
BENCHMARK(BM_norm_bf16)
    ->ArgsProduct({{kLayer, kRms, kAddLayerPre, kAddRmsPre, kAddLayerPost, kAddRmsPost}, {1, 2}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// The naive baseline: scalar layer_norm, float accumulation, a two-pass loop per row, one thread.
void BM_layer_norm_naive(benchmark::State& state) {
  const Index n = kRows * kCols;
  auto xb = data(n, 1), ob = data(n, 3);
  std::vector<float> gamma(kCols, 1.f), beta(kCols, 0.f);
  for (auto _ : state) {
    for (Index i = 0; i < kRows; ++i) {
      const float* x = xb.data() + i * kCols;
      float* y = ob.data() + i * kCols;
      float mean = 0, var = 0;
      for (Index j = 0; j < kCols; ++j) mean += x[j];
      mean /= float(kCols);
      for (Index j = 0; j < kCols; ++j) var += (x[j] - mean) * (x[j] - mean);
      const float inv = 1.f / std::sqrt(var / float(kCols) + 1e-5f);
      for (Index j = 0; j < kCols; ++j) y[j] = (x[j] - mean) * inv * gamma[std::size_t(j)] + beta[std::size_t(j)];
    }
    benchmark::ClobberMemory();
  }
  report_bytes(state, double(n) * sizeof(float) * 2);
}
BENCHMARK(BM_layer_norm_naive)->Unit(benchmark::kMillisecond)->UseRealTime();

// The ceiling for one read and one write with ordinary stores: out = 2 x, one thread, same buffers and bytes as
// BM_norm's plain forms (a store to a line not in cache first reads it, so this moves 3 bytes per 2 counted).
void BM_scale_ceiling(benchmark::State& state) {
  set_threads(1);
  const Index n = kRows * kCols;
  auto xb = data(n, 1), ob = data(n, 3);
  const Map x(xb.data(), kRows, kCols), out(ob.data(), kRows, kCols);
  for (auto _ : state) {
    const_cast<Map&>(out).noalias() = 2.f * x;
    benchmark::ClobberMemory();
  }
  report_bytes(state, double(n) * sizeof(float) * 2);
}
BENCHMARK(BM_scale_ceiling)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
