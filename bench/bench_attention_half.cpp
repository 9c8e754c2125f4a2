// SPDX-License-Identifier: MIT
// kexue::attention with 16-bit storage (issue 13 item 2) beside the float kernel, in one binary so that ratios come
// from one run. Arg "kv": 0 float, 1 Eigen::half, 2 Eigen::bfloat16.
// - BM_attention_half_decode: one decoding step, 8 query heads, GQA 8/2, d = 64, m cached keys, causal, K/V of the
//   given type, q and out float (the KV-cache case); 1 thread. Bytes = the K and V caches once (bandwidth-bound).
//   m = 1048576: a 1 GiB float cache (512 MiB in 16 bits), past any L3, so the step reads DRAM.
// - BM_attention_half_prefill: 8 heads x n x 64, K/V of the given type, q and out float, 1 thread.
// - BM_attention_half_qkv: 8 heads x n x 64 with q, k, v all of the given type (out float), 1 thread.
// - BM_attention_half_qkv_pairs: the bf16 row of BM_attention_half_qkv with the bf16-pairs products forced off (0:
//   q, k, v widened to float, float FMAs) or on (1: q k^T and P V as bf16 pairs, vdpbf16ps where the build has
//   AVX512-BF16, else widened in the micro-kernel); the default is 1 only where kPreferBf16Dot.
#include <cstdint>
#include <optional>
#include <vector>

#include "bench_util.hpp"
#include "kexue/attention.hpp"

using namespace kexue_bench;

namespace {

constexpr Index kHeads = 8;
constexpr Index kDim = 64;

template <class T>
kd::AlignedVector<T> filled(std::size_t size, unsigned seed) {
  kd::AlignedVector<T> x(size);
  for (std::size_t i = 0; i < size; ++i) x[i] = T(float(((i + seed) * 2654435761u) % 2001) * 1e-3f - 1.f);
  return x;
}

template <class Q, class S>
void run_case(benchmark::State& state, Index kv_heads, Index n, Index m, bool causal,
              std::optional<bool> bf16_pairs = std::nullopt) {
  const auto q = filled<Q>(static_cast<std::size_t>(kHeads * n * kDim), 1);
  const auto k = filled<S>(static_cast<std::size_t>(kv_heads * m * kDim), 7);
  const auto v = filled<S>(k.size(), 13);
  kd::AlignedVector<float> out(q.size());
  const auto tq = kexue::TensorView<const Q>::contiguous(q.data(), 1, kHeads, n, kDim);
  const auto tk = kexue::TensorView<const S>::contiguous(k.data(), 1, kv_heads, m, kDim);
  const auto tv = kexue::TensorView<const S>::contiguous(v.data(), 1, kv_heads, m, kDim);
  const auto to = kexue::TensorView<float>::contiguous(out.data(), 1, kHeads, n, kDim);
  kexue::AttentionOptions opt;
  opt.causal = causal;
  for (auto _ : state) {
    kexue::detail::attention_batched<Q, S, float>(tq, tk, tv, nullptr, to, opt, bf16_pairs);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  report_bytes(state, double(k.size() + v.size()) * sizeof(S));
  report_flops(state, 4.0 * double(n) * double(m) * kDim * kHeads * (causal && n == m ? 0.5 : 1.0), 1);
}

template <class F>
void by_kv(long kv, F&& f) {
  if (kv == 0)
    f(float());
  else if (kv == 1)
    f(Eigen::half());
  else
    f(Eigen::bfloat16());
}

void BM_attention_half_decode(benchmark::State& state) {
  set_threads(1);
  by_kv(state.range(0), [&](auto s) { run_case<float, decltype(s)>(state, 2, 1, state.range(1), true); });
}
// kv first within each m, so the float row and its 16-bit rows are neighbours in the output.
BENCHMARK(BM_attention_half_decode)
    ->ArgNames({"kv", "m"})
    ->ArgsProduct({{0, 1, 2}, {4096, 32768, 1048576}})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();

void BM_attention_half_prefill(benchmark::State& state) {
  set_threads(1);
  const Index n = state.range(1);
  by_kv(state.range(0), [&](auto s) { run_case<float, decltype(s)>(state, kHeads, n, n, false); });
}
BENCHMARK(BM_attention_half_prefill)
    ->ArgNames({"kv", "n"})
    ->ArgsProduct({{0, 1, 2}, {2048}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

void BM_attention_half_qkv(benchmark::State& state) {
  set_threads(1);
  const Index n = state.range(1);
  by_kv(state.range(0), [&](auto s) {
    using S = decltype(s);
    run_case<S, S>(state, kHeads, n, n, false);
  });
}
BENCHMARK(BM_attention_half_qkv)
    ->ArgNames({"kv", "n"})
    ->ArgsProduct({{0, 2}, {2048}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

void BM_attention_half_qkv_pairs(benchmark::State& state) {
  set_threads(1);
  const Index n = state.range(1);
  state.SetLabel(kd::kPreferBf16Dot ? "default: pairs" : "default: widened");
  run_case<Eigen::bfloat16, Eigen::bfloat16>(state, kHeads, n, n, false, state.range(0) != 0);
}
BENCHMARK(BM_attention_half_qkv_pairs)
    ->ArgNames({"pairs", "n"})
    ->ArgsProduct({{0, 1}, {2048}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace
BENCHMARK_MAIN();
