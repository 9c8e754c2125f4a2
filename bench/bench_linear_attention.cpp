// SPDX-License-Identifier: MIT
// Linear attention and FLASH mixed-chunk attention on the shape: fp32, 8 heads, d = dv = 64, n = 2048 and
// 8192, 1 and 2 threads (args: n, threads). Naive baselines in the same binary: a scalar recurrent loop (causal)
// and plain Eigen GEMMs (non-causal). GFLOPS / peak_frac count the flops the chunked algorithm executes;
// useful_GFLOPS counts the recurrent form's 4 n d dv per head (what any exact algorithm must do).
#include <cmath>
#include <vector>

#include "bench_util.hpp"
#include "kexue/detail/parallel.hpp"
#include "kexue/flash.hpp"
#include "kexue/linear_attention.hpp"

using namespace kexue_bench;

namespace {

constexpr Index kHeads = 8, kD = 64, kDv = 64;

std::vector<float> values(Index n, unsigned seed) {
  std::vector<float> x(static_cast<std::size_t>(n));
  unsigned s = seed * 2654435761u + 1;
  for (auto& v : x) {
    s = s * 1664525u + 1013904223u;
    v = float(s >> 8) / float(1u << 24) * 2.f - 1.f;
  }
  return x;
}

struct Inputs {
  Index n;
  std::vector<float> q, k, v, out;
  explicit Inputs(Index n_)
      : n(n_),
        q(values(kHeads * n_ * kD, 1)),
        k(values(kHeads * n_ * kD, 2)),
        v(values(kHeads * n_ * kDv, 3)),
        out(static_cast<std::size_t>(kHeads * n_ * kDv)) {}
  kexue::TensorView<const float> tq() const {
    return kexue::TensorView<const float>::contiguous(q.data(), 1, kHeads, n, kD);
  }
  kexue::TensorView<const float> tk() const {
    return kexue::TensorView<const float>::contiguous(k.data(), 1, kHeads, n, kD);
  }
  kexue::TensorView<const float> tv() const {
    return kexue::TensorView<const float>::contiguous(v.data(), 1, kHeads, n, kDv);
  }
  kexue::TensorView<float> tout() { return kexue::TensorView<float>::contiguous(out.data(), 1, kHeads, n, kDv); }
};

double useful_flops(Index n) { return double(kHeads) * (4.0 * n * kD * kDv + 4.0 * n * kD); }

void report_linear(benchmark::State& state, Index n, bool causal, int threads) {
  const double c = double(kd::kLinearChunk);
  const double alg =
      causal ? double(kHeads) * (4.0 * n * kD * kDv + n * c * (kD + kDv) + 4.0 * n * kD) : useful_flops(n);
  report_flops(state, alg, threads);
  state.counters["useful_GFLOPS"] =
      benchmark::Counter(useful_flops(n) / 1e9, benchmark::Counter::kIsIterationInvariantRate);
}

void BM_linear_causal(benchmark::State& state) {
  const Index n = state.range(0);
  const int threads = int(state.range(1));
  set_threads(threads);
  Inputs in(n);
  kexue::LinearAttentionOptions o;
  o.causal = true;
  for (auto _ : state) {
    kexue::linear_attention(in.tq(), in.tk(), in.tv(), in.tout(), o);
    benchmark::ClobberMemory();
  }
  report_linear(state, n, true, threads);
}
BENCHMARK(BM_linear_causal)
    ->Args({2048, 2})
    ->Args({8192, 1})
    ->Args({8192, 2})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

void BM_linear_causal_double_state(benchmark::State& state) {
  const Index n = state.range(0);
  const int threads = int(state.range(1));
  set_threads(threads);
  Inputs in(n);
  kexue::LinearAttentionOptions o;
  o.causal = true;
  o.double_state = true;
  for (auto _ : state) {
    kexue::linear_attention(in.tq(), in.tk(), in.tv(), in.tout(), o);
    benchmark::ClobberMemory();
  }
  report_linear(state, n, true, threads);
}
BENCHMARK(BM_linear_causal_double_state)->Args({8192, 2})->UseRealTime()->Unit(benchmark::kMillisecond);

void BM_linear_noncausal(benchmark::State& state) {
  const Index n = state.range(0);
  const int threads = int(state.range(1));
  set_threads(threads);
  Inputs in(n);
  for (auto _ : state) {
    kexue::linear_attention(in.tq(), in.tk(), in.tv(), in.tout());
    benchmark::ClobberMemory();
  }
  report_linear(state, n, false, threads);
}
BENCHMARK(BM_linear_noncausal)
    ->Args({2048, 2})
    ->Args({8192, 1})
    ->Args({8192, 2})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

// Decoding: one token per call through the batched streaming form (8 heads, per-head double states), 1 thread.
void BM_linear_decode_step(benchmark::State& state) {
  set_threads(1);
  Inputs in(1);
  std::vector<kexue::LinearAttentionState<float>> states(kHeads, kexue::LinearAttentionState<float>(kD, kDv));
  for (auto _ : state) {
    kexue::linear_attention(in.tq(), in.tk(), in.tv(), in.tout(), states);
    benchmark::ClobberMemory();
  }
  report_flops(state, useful_flops(1), 1);
}
BENCHMARK(BM_linear_decode_step)->Unit(benchmark::kMicrosecond);

float phi(float x) { return x > 0 ? x + 1 : std::exp(x); }

// Naive causal baseline: the recurrence of SPEC 5.2, one token at a time, plain loops (the compiler vectorises
// the inner loops as it can).
void BM_linear_causal_naive(benchmark::State& state) {
  const Index n = state.range(0);
  const int threads = int(state.range(1));
  set_threads(threads);
  Inputs in(n);
  for (auto _ : state) {
    kd::parallel_for(kHeads, [&](Index h) {
      std::vector<float> s(kD * kDv, 0.f), z(kD, 0.f), pq(kD), pk(kD);
      const float* q = in.q.data() + h * n * kD;
      const float* k = in.k.data() + h * n * kD;
      const float* v = in.v.data() + h * n * kDv;
      float* o = in.out.data() + h * n * kDv;
      for (Index i = 0; i < n; ++i) {
        for (Index p = 0; p < kD; ++p) {
          pq[p] = phi(q[i * kD + p]);
          pk[p] = phi(k[i * kD + p]);
        }
        for (Index p = 0; p < kD; ++p) {
          z[p] += pk[p];
          for (Index c = 0; c < kDv; ++c) s[p * kDv + c] += pk[p] * v[i * kDv + c];
        }
        float den = 1e-6f;
        for (Index p = 0; p < kD; ++p) den += pq[p] * z[p];
        for (Index c = 0; c < kDv; ++c) o[i * kDv + c] = 0;
        for (Index p = 0; p < kD; ++p)
          for (Index c = 0; c < kDv; ++c) o[i * kDv + c] += pq[p] * s[p * kDv + c];
        for (Index c = 0; c < kDv; ++c) o[i * kDv + c] /= den;
      }
    });
    benchmark::ClobberMemory();
  }
  report_flops(state, useful_flops(n), threads);
}
BENCHMARK(BM_linear_causal_naive)->Args({8192, 2})->UseRealTime()->Unit(benchmark::kMillisecond);

// Plain-Eigen non-causal baseline: phi by unaryExpr, then two Eigen GEMMs (the "Eigen GEMM where it wins" check).
void BM_linear_noncausal_eigen(benchmark::State& state) {
  const Index n = state.range(0);
  const int threads = int(state.range(1));
  set_threads(threads);
  Inputs in(n);
  using M = kexue::Matrix<float>;
  for (auto _ : state) {
    kd::parallel_for(kHeads, [&](Index h) {
      Eigen::Map<const M> q(in.q.data() + h * n * kD, n, kD), k(in.k.data() + h * n * kD, n, kD),
          v(in.v.data() + h * n * kDv, n, kDv);
      Eigen::Map<M> o(in.out.data() + h * n * kDv, n, kDv);
      const M pq = q.unaryExpr([](float x) { return phi(x); });
      const M pk = k.unaryExpr([](float x) { return phi(x); });
      const M s = pk.transpose() * v;
      const Eigen::VectorXf z = pk.colwise().sum().transpose();
      o.noalias() = pq * s;
      const Eigen::VectorXf den = (pq * z).array() + 1e-6f;
      o.array().colwise() /= den.array();
    });
    benchmark::ClobberMemory();
  }
  report_flops(state, useful_flops(n), threads);
}
BENCHMARK(BM_linear_noncausal_eigen)->Args({8192, 2})->UseRealTime()->Unit(benchmark::kMillisecond);

// FLASH mixed-chunk attention: s = e = 64, chunk 256.
void run_flash(benchmark::State& state, bool causal) {
  const Index n = state.range(0);
  const int threads = int(state.range(1));
  set_threads(threads);
  constexpr Index c = 256;
  Inputs a(n), b(n);
  kexue::FlashOptions o;
  o.causal = causal;
  o.chunk_size = c;
  for (auto _ : state) {
    kexue::mixed_chunk_attention(a.tq(), a.tk(), b.tq(), b.tk(), a.tv(), b.tout(), o);
    benchmark::ClobberMemory();
  }
  // quadratic part 2 n c (s + e) (half when causal), linear part 2 n s e twice.
  const double quad = 2.0 * n * c * (kD + kDv) * (causal ? 0.5 : 1.0);
  report_flops(state, double(kHeads) * (quad + 4.0 * n * kD * kDv), threads);
}
void BM_flash_noncausal(benchmark::State& state) { run_flash(state, false); }
void BM_flash_causal(benchmark::State& state) { run_flash(state, true); }
BENCHMARK(BM_flash_noncausal)->Args({8192, 2})->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_flash_causal)->Args({8192, 2})->UseRealTime()->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
