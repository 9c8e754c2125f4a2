// SPDX-License-Identifier: MIT
// GAU layer forward (issue 4): fp32, D = 768, e = 1536, s = 128 (the paper's and GAU-alpha's base shapes),
// n = 512 and 2048, RoPE on, 1 thread (and 2 threads for scaling). Rows:
//   BM_gau                kexue::gau with a reused workspace (steady state), per normalisation
//   BM_gau_alloc          the allocating overload (scratch allocated per call)
//   BM_gau_bf16           bf16 weights and x (issue 13): x W_in on the bf16 GEMM (vdpbf16ps under AVX512-BF16),
//                         the rest in float; out in float or bf16; act16: GauOptions::bf16_activations (A v and
//                         g W_out on the bf16 GEMM too). Compare with BM_gau's row of the same n in one run.
//   BM_gau_naive          the naive baseline: plain Eigen, materialising the n x n attention matrix
//   BM_gau_flash_attention projections through Eigen, attention step through kexue::attention (the fused
//                         flash kernel with dv = e) instead of gau's tiled GEMMs: the design alternative
// gau() runs all four products on kexue's packed GEMM (detail/gemm.hpp; bench_gemm compares it with Eigen).
// Flops per call: 2 n D (2e + s) (input projection) + 2 n^2 s (q k^T) + 2 n^2 e (A v) + 2 n e D (output),
// the attention part halved when causal. Elementwise work (swish, normalisation, RoPE) is not counted.
#include <cmath>
#include <vector>

#include "bench_util.hpp"
#include "kexue/attention.hpp"
#include "kexue/gau.hpp"
#include "kexue/half.hpp"
#include "kexue/rope.hpp"

using namespace kexue_bench;
using kexue::Matrix;

namespace {

constexpr Index kHidden = 768, kUnits = 1536, kKey = 128;

void fill(float* p, Index size, unsigned seed, float scale) {
  for (Index i = 0; i < size; ++i)
    p[i] = scale * (float((std::size_t(i) * 2654435761u + seed * 40503u) % 2001) * 1e-3f - 1.f);
}

struct Setup {
  kexue::GauWeights<float> w;
  Matrix<float> x, out;
  kexue::RopeTable<float> table;
  explicit Setup(Index n, bool bias = false) : table(n, kKey) {
    w.w_in.resize(kHidden, 2 * kUnits + kKey);
    fill(w.w_in.data(), w.w_in.size(), 1, std::sqrt(3.f / kHidden));
    w.gamma_q = kexue::Vector<float>::Ones(kKey);
    w.gamma_k = kexue::Vector<float>::Ones(kKey);
    w.w_out.resize(kUnits, kHidden);
    fill(w.w_out.data(), w.w_out.size(), 2, std::sqrt(3.f / kUnits));
    if (bias) {
      w.b_in = kexue::Vector<float>::Constant(2 * kUnits + kKey, 0.01f);
      w.beta_q = kexue::Vector<float>::Zero(kKey);
      w.beta_k = kexue::Vector<float>::Zero(kKey);
      w.b_out = kexue::Vector<float>::Zero(kHidden);
    }
    x.resize(n, kHidden);
    fill(x.data(), x.size(), 3, 1.f);
    out.resize(n, kHidden);
  }
};

double gau_flops(Index n, bool causal) {
  const double nn = double(n);
  return 2 * nn * kHidden * (2 * kUnits + kKey) + (causal ? 0.5 : 1.0) * 2 * nn * nn * (kKey + kUnits) +
         2 * nn * kUnits * kHidden;
}

kexue::GauOptions options_for(Index norm, bool causal) {
  kexue::GauOptions o;
  o.attention.normalization = static_cast<kexue::Normalization>(norm);
  o.attention.causal = causal;
  return o;
}

// Args: n, normalization (0 softmax, 1 softmax_plus, 2 squared_relu), causal, threads.
void BM_gau(benchmark::State& state) {
  const Index n = state.range(0);
  const bool causal = state.range(2) != 0;
  const int threads = static_cast<int>(state.range(3));
  set_threads(threads);
  Setup s(n);
  const kexue::GauOptions o = options_for(state.range(1), causal);
  kexue::GauWorkspace<float> ws;
  kexue::gau(s.w, s.x, s.out, ws, o, &s.table);
  for (auto _ : state) {
    kexue::gau(s.w, s.x, s.out, ws, o, &s.table);
    benchmark::DoNotOptimize(s.out.data());
    benchmark::ClobberMemory();
  }
  report_flops(state, gau_flops(n, causal), threads);
  state.counters["workspace_MiB"] = double(ws.bytes()) / (1 << 20);
  set_threads(1);
}
BENCHMARK(BM_gau)
    ->ArgNames({"n", "norm", "causal", "threads"})
    ->Args({512, 2, 0, 1})
    ->Args({2048, 2, 0, 1})
    ->Args({2048, 1, 0, 1})
    ->Args({2048, 0, 0, 1})
    ->Args({2048, 1, 1, 1})
    ->Args({2048, 2, 0, 2})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// Args: n, normalization, out in bf16 (0: float out), bf16 activations (GauOptions::bf16_activations). Same weights
// and x as BM_gau, rounded to bf16.
void BM_gau_bf16(benchmark::State& state) {
  using BF = Eigen::bfloat16;
  const Index n = state.range(0);
  const bool out16 = state.range(2) != 0;
  set_threads(1);
  Setup s(n);
  kexue::GauWeights<BF> w;
  w.w_in.resize(s.w.w_in.rows(), s.w.w_in.cols());
  kexue::convert(s.w.w_in, w.w_in);
  w.w_out.resize(s.w.w_out.rows(), s.w.w_out.cols());
  kexue::convert(s.w.w_out, w.w_out);
  w.gamma_q = s.w.gamma_q.cast<BF>();
  w.gamma_k = s.w.gamma_k.cast<BF>();
  Matrix<BF> x(n, kHidden), out16_m(n, kHidden);
  kexue::convert(s.x, x);
  kexue::GauOptions o = options_for(state.range(1), false);
  o.bf16_activations = state.range(3) != 0;
  kexue::GauWorkspace<BF> ws;
  auto call = [&] {
    if (out16) {
      kexue::gau(w, x, out16_m, ws, o, &s.table);
    } else {
      kexue::gau(w, x, s.out, ws, o, &s.table);
    }
  };
  call();
  for (auto _ : state) {
    call();
    benchmark::DoNotOptimize(s.out.data());
    benchmark::DoNotOptimize(out16_m.data());
    benchmark::ClobberMemory();
  }
  report_flops(state, gau_flops(n, false), 1);
  state.counters["workspace_MiB"] = double(ws.bytes()) / (1 << 20);
}
BENCHMARK(BM_gau_bf16)
    ->ArgNames({"n", "norm", "out16", "act16"})
    ->Args({512, 2, 0, 0})
    ->Args({2048, 2, 0, 0})
    ->Args({2048, 2, 1, 0})
    ->Args({2048, 0, 0, 0})
    ->Args({512, 2, 0, 1})
    ->Args({2048, 2, 0, 1})
    ->Args({2048, 2, 1, 1})
    ->Args({2048, 0, 0, 1})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

void BM_gau_alloc(benchmark::State& state) {
  const Index n = state.range(0);
  Setup s(n);
  const kexue::GauOptions o = options_for(2, false);
  for (auto _ : state) {
    kexue::gau(s.w, s.x, s.out, o, &s.table);
    benchmark::DoNotOptimize(s.out.data());
    benchmark::ClobberMemory();
  }
  report_flops(state, gau_flops(n, false), 1);
}
BENCHMARK(BM_gau_alloc)->ArgNames({"n"})->Arg(512)->Arg(2048)->Unit(benchmark::kMillisecond)->UseRealTime();

// The straightforward Eigen program a user would write: every intermediate materialised, A is n x n.
void BM_gau_naive(benchmark::State& state) {
  const Index n = state.range(0);
  const auto norm = static_cast<kexue::Normalization>(state.range(1));
  Setup s(n);
  Matrix<float> h, q, k, a, g;
  const float scale = 1.f / std::sqrt(float(kKey));
  for (auto _ : state) {
    h = s.x * s.w.w_in;
    h.array() = h.array() / (1.f + (-h.array()).exp());
    q = h.rightCols(kKey).array().rowwise() * s.w.gamma_q.transpose().array();
    k = h.rightCols(kKey).array().rowwise() * s.w.gamma_k.transpose().array();
    for (Index r = 0; r < n; ++r) {
      kexue::rope(s.table, q.row(r), r);
      kexue::rope(s.table, k.row(r), r);
    }
    a = (q * k.transpose()) * scale;
    if (norm == kexue::Normalization::SquaredRelu) {
      a = a.array().max(0.f).square() / float(n);
    } else {
      const float t =
          norm == kexue::Normalization::SoftmaxPlus ? std::log(float(std::max<Index>(n, 16))) / std::log(512.f) : 1.f;
      a *= t;
      for (Index r = 0; r < n; ++r) {
        a.row(r).array() = (a.row(r).array() - a.row(r).maxCoeff()).exp();
        a.row(r) /= a.row(r).sum();
      }
    }
    g = (a * h.middleCols(kUnits, kUnits)).cwiseProduct(h.leftCols(kUnits));
    s.out.noalias() = g * s.w.w_out;
    benchmark::DoNotOptimize(s.out.data());
    benchmark::ClobberMemory();
  }
  report_flops(state, gau_flops(n, false), 1);
}
BENCHMARK(BM_gau_naive)
    ->ArgNames({"n", "norm"})
    ->Args({512, 2})
    ->Args({2048, 2})
    ->Args({2048, 1})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// gau() with its attention step replaced by the fused flash kernel of attention.hpp (q, k: [n, s],
// v: [n, e]); the projections and gating are the same Eigen calls. Measures the design choice of gau.hpp.
void BM_gau_flash_attention(benchmark::State& state) {
  const Index n = state.range(0);
  const auto norm = static_cast<kexue::Normalization>(state.range(1));
  Setup s(n);
  Matrix<float> h(n, 2 * kUnits + kKey), q(n, kKey), k(n, kKey), av(n, kUnits);
  kexue::AttentionOptions ao;
  ao.normalization = norm;
  for (auto _ : state) {
    h.noalias() = s.x * s.w.w_in;
    h.array() = h.array() / (1.f + (-h.array()).exp());
    q = h.rightCols(kKey).array().rowwise() * s.w.gamma_q.transpose().array();
    k = h.rightCols(kKey).array().rowwise() * s.w.gamma_k.transpose().array();
    kexue::rope(s.table, q, 0);
    kexue::rope(s.table, k, 0);
    kexue::attention(q, k, h.middleCols(kUnits, kUnits), av, ao);
    av.array() *= h.leftCols(kUnits).array();
    s.out.noalias() = av * s.w.w_out;
    benchmark::DoNotOptimize(s.out.data());
    benchmark::ClobberMemory();
  }
  report_flops(state, gau_flops(n, false), 1);
}
BENCHMARK(BM_gau_flash_attention)
    ->ArgNames({"n", "norm"})
    ->Args({512, 2})
    ->Args({2048, 2})
    ->Args({2048, 1})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
