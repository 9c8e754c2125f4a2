// SPDX-License-Identifier: MIT
// Fused attention (issue 4 shapes): fp32, d = dv = 64, 8 heads, n = m in {512, 2048, 8192}, the three
// normalisations, causal and not, 1 and 2 threads; a KV-cache decode step (n = 1 against m cached keys: GQA 8/2,
// MQA 8/1, MHA 8/8); a key mask with finite vs NaN values in the hidden keys' v rows; and the naive baseline in
// the same binary: plain Eigen materialising S = q k^T, a row softmax, then S v. Long context: one head at
// n = 32768 and 131072, and a decode step against 1,048,576 cached keys (BM_attention_long, BM_attention_decode/1048576).
// Flops: 4 n m d per head (two GEMM-like products), halved for causal (n = m).
#include <sys/resource.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "bench_util.hpp"
#include "kexue/attention.hpp"

using namespace kexue_bench;

namespace {

constexpr Index kHeads = 8;
constexpr Index kDim = 64;

struct Inputs {
  kd::AlignedVector<float> q, k, v, out;  // 64-byte aligned, as torch's allocator and Eigen's (under AVX-512) give
  Index heads, kv_heads, n, m;
  Inputs(Index heads_, Index kv_heads_, Index n_, Index m_) : heads(heads_), kv_heads(kv_heads_), n(n_), m(m_) {
    q.resize(static_cast<std::size_t>(heads * n * kDim));
    k.resize(static_cast<std::size_t>(kv_heads * m * kDim));
    v.resize(k.size());
    out.resize(q.size());
    auto fill = [](kd::AlignedVector<float>& x, unsigned seed) {
      for (std::size_t i = 0; i < x.size(); ++i)
        x[i] = float(((i + seed) * 2654435761u) % 2001) * 1e-3f - 1.f;  // uniform-ish in [-1, 1]
    };
    fill(q, 1);
    fill(k, 7);
    fill(v, 13);
  }
  kexue::TensorView<const float> tq() const { return kexue::TensorView<const float>::contiguous(q.data(), 1, heads, n, kDim); }
  kexue::TensorView<const float> tk() const {
    return kexue::TensorView<const float>::contiguous(k.data(), 1, kv_heads, m, kDim);
  }
  kexue::TensorView<const float> tv() const {
    return kexue::TensorView<const float>::contiguous(v.data(), 1, kv_heads, m, kDim);
  }
  kexue::TensorView<float> to() { return kexue::TensorView<float>::contiguous(out.data(), 1, heads, n, kDim); }
};

/// The timed loop every attention row shares: one call of the batched attention per iteration.
void time_attention(benchmark::State& state, Inputs& in, const kexue::AttentionOptions& opt) {
  for (auto _ : state) {
    kexue::attention(in.tq(), in.tk(), in.tv(), in.to(), opt);
    benchmark::DoNotOptimize(in.out.data());
    benchmark::ClobberMemory();
  }
}

long max_rss_kib() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_maxrss;
}

// Args: n, normalization (0 softmax, 1 softmax_plus, 2 squared_relu), causal, threads.
void BM_attention(benchmark::State& state) {
  const Index n = state.range(0);
  const auto norm = static_cast<kexue::Normalization>(state.range(1));
  const bool causal = state.range(2) != 0;
  const int threads = static_cast<int>(state.range(3));
  set_threads(threads);
  Inputs in(kHeads, kHeads, n, n);
  kexue::AttentionOptions opt;
  opt.normalization = norm;
  opt.causal = causal;
  // High-water mark of the process before and after the first call: the call's own memory beyond its
  // inputs and outputs (only visible if it exceeds every earlier peak of this process, so an upper bound
  // of 0 here means "less than what the process had already used").
  const long rss0 = max_rss_kib();
  kexue::attention(in.tq(), in.tk(), in.tv(), in.to(), opt);
  const long rss1 = max_rss_kib();
  time_attention(state, in, opt);
  const double flops = 4.0 * double(n) * double(n) * kDim * kHeads * (causal ? 0.5 : 1.0);
  report_flops(state, flops, threads);
  state.counters["call_extra_MiB"] = double(rss1 - rss0) / 1024.0;
  set_threads(1);
}

void attention_args(benchmark::internal::Benchmark* b) {
  for (long n : {512, 2048, 8192})
    for (long norm : {0, 1, 2}) b->Args({n, norm, 0, 1});
  for (long n : {2048, 8192}) b->Args({n, 0, 1, 1});
  b->Args({2048, 0, 0, 2});
  b->Args({2048, 0, 1, 2});
  b->Args({8192, 0, 0, 2});
  b->ArgNames({"n", "norm", "causal", "threads"});
}
BENCHMARK(BM_attention)->Apply(attention_args)->Unit(benchmark::kMillisecond)->UseRealTime();

// The masks of post 9529 (SPEC 7.3) beside the causal row: fp32, 8 heads, d = 64, n = m, softmax, 1 thread. Flops
// count the (query, key) pairs each mask keeps, as the causal row does (n^2 / 2 for causal and reverse causal;
// p^2 + (n^2 - p^2) / 2 for UniLM with a source of p = n / 4 tokens), so equal GFLOP/s means the masked key tiles
// are skipped as well as causal's. mixed: causal on heads 0, 2, 4, 6 and reverse causal on 1, 3, 5, 7.
// Args: n, mask (0 causal, 1 reverse causal, 2 UniLM, 3 mixed heads).
void BM_attention_masks(benchmark::State& state) {
  const Index n = state.range(0);
  const int kind = int(state.range(1));
  set_threads(1);
  Inputs in(kHeads, kHeads, n, n);
  kexue::AttentionOptions opt;
  std::vector<std::int32_t> seg(static_cast<std::size_t>(n), 0);
  const Index p = n / 4;
  for (Index j = p; j < n; ++j) seg[static_cast<std::size_t>(j)] = 1;
  std::vector<kexue::HeadDirection> dirs;
  for (Index h = 0; h < kHeads; ++h)
    dirs.push_back(h % 2 ? kexue::HeadDirection::ReverseCausal : kexue::HeadDirection::Causal);
  double pairs = 0.5 * double(n) * double(n);
  switch (kind) {
    case 0: opt.causal = true; break;
    case 1: opt.reverse_causal = true; break;
    case 2:
      opt.segments = kexue::SegmentIds(seg);
      pairs = double(p) * double(p) + 0.5 * (double(n) * double(n) - double(p) * double(p));
      break;
    default: opt.head_directions = kexue::HeadDirections(dirs); break;
  }
  time_attention(state, in, opt);
  report_flops(state, 4.0 * pairs * kDim * kHeads, 1);
}
void BM_attention_unilm(benchmark::State& state) {
  state.SetLabel("UniLM, source n/4");
  BM_attention_masks(state);
}
void BM_attention_reverse_causal(benchmark::State& state) { BM_attention_masks(state); }
BENCHMARK(BM_attention_masks)
    ->ArgNames({"n", "mask"})
    ->Args({2048, 0})
    ->Args({2048, 3})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(BM_attention_reverse_causal)->ArgNames({"n", "mask"})->Args({2048, 1})->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_attention_unilm)->ArgNames({"n", "mask"})->Args({2048, 2})->Unit(benchmark::kMillisecond)->UseRealTime();

// Causal prefill with grouped-query attention: 8 query heads sharing kv_heads K/V heads, n = m, d = 64, 1 thread
// (the shape of ONNX Runtime's GroupQueryAttention prefill and of a LLaMA-style prompt).
void BM_attention_gqa_prefill(benchmark::State& state) {
  const Index kv_heads = state.range(0), n = state.range(1);
  set_threads(1);
  Inputs in(kHeads, kv_heads, n, n);
  kexue::AttentionOptions opt;
  opt.causal = true;
  time_attention(state, in, opt);
  report_flops(state, 2.0 * double(n) * double(n) * kDim * kHeads, 1);
}
BENCHMARK(BM_attention_gqa_prefill)
    ->ArgNames({"kv_heads", "n"})
    ->Args({2, 2048})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// A key mask (every 7th key hidden, as scattered padding tokens are), 1 thread, n = m = 2048, softmax. Arg 1: the
// hidden keys' v rows hold NaN, so every partially masked key tile runs the masked P V product (select instead
// of multiply) that keeps them out of the rows; arg 0: finite garbage there, the plain product. The gap is the
// cost of the guarantee that hidden keys never reach an output when they are not finite.
void BM_attention_keymask(benchmark::State& state) {
  const Index n = 2048;
  const bool poisoned = state.range(0) != 0;
  set_threads(1);
  Inputs in(kHeads, kHeads, n, n);
  std::vector<unsigned char> mask(static_cast<std::size_t>(n));
  for (Index j = 0; j < n; ++j) mask[std::size_t(j)] = j % 7 != 3;
  for (Index h = 0; h < kHeads; ++h)
    for (Index j = 0; j < n; ++j)
      if (!mask[std::size_t(j)] && poisoned)
        for (Index e = 0; e < kDim; ++e) in.v[std::size_t((h * n + j) * kDim + e)] = std::nanf("");
  for (auto _ : state) {
    kexue::attention(in.tq(), in.tk(), in.tv(), kexue::KeyMask(mask.data(), n), in.to());
    benchmark::DoNotOptimize(in.out.data());
    benchmark::ClobberMemory();
  }
  report_flops(state, 4.0 * double(n) * double(n) * kDim * kHeads, 1);
}
BENCHMARK(BM_attention_keymask)
    ->ArgName("nan_in_hidden_v")
    ->Arg(0)
    ->Arg(1)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// One decoding step: a single new query per head against m cached keys, 8 query heads sharing 2 KV heads
// (grouped-query attention). Memory-bound: it reads the whole cache once (bw_frac: against bench_peak's triad).
// m = 1,048,576 is the long-context case (1 GiB of K and V); call_extra_MiB is the call's memory growth.
void BM_attention_decode(benchmark::State& state) {
  const Index m = state.range(0);
  set_threads(1);
  Inputs in(kHeads, 2, 1, m);
  kexue::AttentionOptions opt;
  opt.causal = true;
  const long rss0 = max_rss_kib();
  time_attention(state, in, opt);
  const long rss1 = max_rss_kib();
  report_flops(state, 4.0 * double(m) * kDim * kHeads, 1);
  report_bytes(state, double(in.k.size() + in.v.size()) * sizeof(float));
  state.counters["call_extra_MiB"] = double(rss1 - rss0) / 1024.0;
}
BENCHMARK(BM_attention_decode)->Arg(4096)->Arg(16384)->Arg(1 << 20)->Unit(benchmark::kMicrosecond)->UseRealTime();

// One decoding step for the three ways 8 query heads share the cache: GQA 8/2, MQA 8/1 and MHA 8/8 (kv_heads),
// m = 4096 and 32768 cached keys, 1 thread. The grouped decode path reads each K and V row once per KV head
// (once for all the query heads of its group), so bytes = the whole cache once; flops = 4 m d per query head.
void BM_attention_decode_heads(benchmark::State& state) {
  const Index kv_heads = state.range(0), m = state.range(1);
  set_threads(1);
  Inputs in(kHeads, kv_heads, 1, m);
  kexue::AttentionOptions opt;
  opt.causal = true;
  time_attention(state, in, opt);
  report_flops(state, 4.0 * double(m) * kDim * kHeads, 1);
  report_bytes(state, double(in.k.size() + in.v.size()) * sizeof(float));
}
BENCHMARK(BM_attention_decode_heads)
    ->ArgNames({"kv_heads", "m"})
    ->Args({2, 4096})
    ->Args({1, 4096})
    ->Args({8, 4096})
    ->Args({2, 32768})
    ->Args({1, 32768})
    ->Args({8, 32768})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();

// Long context (issue 16): one head, n = m in {32768, 131072}, non-causal softmax, 1 thread. The call's memory is
// O(n): its inputs and outputs plus the fixed per-thread scratch of attention_kernel.hpp (at most ~110 KiB at
// d = 64); call_extra_MiB is the process's high-water mark growth over the first call (0 = nothing measurable
// beyond what the inputs already took). n = 131072 is 4.4 TFLOP: one iteration, tens of seconds.
void BM_attention_long(benchmark::State& state) {
  const Index n = state.range(0);
  set_threads(1);
  Inputs in(1, 1, n, n);
  const long rss0 = max_rss_kib();
  time_attention(state, in, kexue::AttentionOptions());
  const long rss1 = max_rss_kib();
  report_flops(state, 4.0 * double(n) * double(n) * kDim, 1);
  state.counters["call_extra_MiB"] = double(rss1 - rss0) / 1024.0;
}
BENCHMARK(BM_attention_long)->ArgName("n")->Arg(32768)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_attention_long)->ArgName("n")->Arg(131072)->Iterations(1)->Unit(benchmark::kSecond)->UseRealTime();

// Naive baseline: per head, S = scale q k^T with Eigen's GEMM (materialised n x n), row softmax, O = S v.
void BM_attention_naive_eigen(benchmark::State& state) {
  const Index n = state.range(0);
  set_threads(1);
  Inputs in(kHeads, kHeads, n, n);
  using M = kexue::Matrix<float>;
  M s(n, n);
  const float scale = 1.0f / std::sqrt(float(kDim));
  for (auto _ : state) {
    for (Index h = 0; h < kHeads; ++h) {
      Eigen::Map<const M> q(in.q.data() + h * n * kDim, n, kDim), k(in.k.data() + h * n * kDim, n, kDim),
          v(in.v.data() + h * n * kDim, n, kDim);
      Eigen::Map<M> o(in.out.data() + h * n * kDim, n, kDim);
      s.noalias() = scale * (q * k.transpose());
      for (Index r = 0; r < n; ++r) {
        auto row = s.row(r);
        const float mx = row.maxCoeff();
        row = (row.array() - mx).exp();
        row /= row.sum();
      }
      o.noalias() = s * v;
    }
    benchmark::DoNotOptimize(in.out.data());
    benchmark::ClobberMemory();
  }
  report_flops(state, 4.0 * double(n) * double(n) * kDim * kHeads, 1);
}
BENCHMARK(BM_attention_naive_eigen)->Arg(512)->Arg(2048)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
