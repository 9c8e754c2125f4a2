// SPDX-License-Identifier: MIT
// kexue::attention beside ggml's CPU flash attention (ggml_flash_attn_ext, the kernel under llama.cpp), same
// shapes, same buffers, one thread, in one binary built with one set of instruction-set flags, so each ggml / kexue
// ratio comes from one run. Built only when KEXUE_GGML_DIR names a ggml source tree (bench/compare_ggml.py does it
// and prints the table); ggml itself is never part of this repository.
//
// Rows (Google Benchmark), each run once for ggml and once for kexue:
//   prefill  8 heads x n x 64, q f32, K and V f32 or f16, non-causal or causal (ggml: an explicit -inf mask)
//   decode   one query row per head, GQA 8/2, m cached keys (f32 or f16), the KV-cache step
// Each row checks its own library's output once before timing, against a float64 reference on a sample of query
// rows (counter max_err: the largest |out - ref|); ggml's result is permuted ([n][heads][d]) and read as such. On
// its one-row path (decode) ggml rounds q to fp16 for an f16 K and accumulates P V in fp16, so expect ~1e-2 there;
// kexue computes in float from the stored values (~1e-6). A row never constructs the other library's state.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "bench_util.hpp"
#include "ggml-cpu.h"
#include "ggml.h"
#include "kexue/attention.hpp"

using namespace kexue_bench;

namespace {

constexpr Index kHeads = 8;
constexpr Index kDim = 64;

enum class Kv { f32, f16 };

struct Shape {
  Index heads, kv_heads, n, m;
  bool causal;
  Kv kv;
};

// Deterministic values in [-1, 1), the same for both libraries.
float value(std::size_t i, unsigned seed) { return float(((i + seed) * 2654435761u) % 2001) * 1e-3f - 1.f; }

// The inputs of one shape, shared by both libraries: q f32; K and V in f32 or fp16 (Eigen::half and ggml_fp16_t
// are both IEEE binary16 bit patterns, so one buffer serves both).
struct Inputs {
  Shape s;
  kd::AlignedVector<float> q, k32, v32;
  kd::AlignedVector<Eigen::half> k16, v16;
  kd::AlignedVector<float> out_kexue, out_ggml;

  explicit Inputs(const Shape& shape) : s(shape) {
    q.resize(std::size_t(s.heads * s.n * kDim));
    for (std::size_t i = 0; i < q.size(); ++i) q[i] = value(i, 1);
    const std::size_t kv = std::size_t(s.kv_heads * s.m * kDim);
    if (s.kv == Kv::f32) {
      k32.resize(kv);
      v32.resize(kv);
      for (std::size_t i = 0; i < kv; ++i) k32[i] = value(i, 7), v32[i] = value(i, 13);
    } else {
      k16.resize(kv);
      v16.resize(kv);
      for (std::size_t i = 0; i < kv; ++i) k16[i] = Eigen::half(value(i, 7)), v16[i] = Eigen::half(value(i, 13));
    }
    out_kexue.resize(q.size());
    out_ggml.resize(q.size());
  }

  double kv_bytes() const {
    return double(s.kv_heads * s.m * kDim) * 2 * (s.kv == Kv::f32 ? sizeof(float) : sizeof(Eigen::half));
  }
  double flops() const {
    return 4.0 * double(s.n) * double(s.m) * kDim * double(s.heads) * (s.causal && s.n == s.m ? 0.5 : 1.0);
  }
};

template <class S>
void kexue_run(const Inputs& in, const S* k, const S* v, float* out) {
  const auto& s = in.s;
  const auto tq = kexue::TensorView<const float>::contiguous(in.q.data(), 1, s.heads, s.n, kDim);
  const auto tk = kexue::TensorView<const S>::contiguous(k, 1, s.kv_heads, s.m, kDim);
  const auto tv = kexue::TensorView<const S>::contiguous(v, 1, s.kv_heads, s.m, kDim);
  const auto to = kexue::TensorView<float>::contiguous(out, 1, s.heads, s.n, kDim);
  kexue::AttentionOptions opt;
  opt.causal = s.causal;
  kexue::attention(tq, tk, tv, to, opt);
}

void kexue_call(Inputs& in) {
  if (in.s.kv == Kv::f32)
    kexue_run(in, in.k32.data(), in.v32.data(), in.out_kexue.data());
  else
    kexue_run(in, in.k16.data(), in.v16.data(), in.out_kexue.data());
}

// One ggml graph over the caller's buffers (a no_alloc context: ggml allocates no tensor data), its work buffer
// and a one-thread threadpool, built once and computed on every iteration.
class GgmlAttention {
 public:
  explicit GgmlAttention(Inputs& in) {
    ggml_cpu_init();
    const auto& s = in.s;
    ggml_init_params params{};
    params.mem_size = ggml_tensor_overhead() * 16 + ggml_graph_overhead() + (1 << 16);
    params.no_alloc = true;
    ctx_ = ggml_init(params);
    if (ctx_ == nullptr) throw std::runtime_error("ggml_init failed");
    const ggml_type kv_type = s.kv == Kv::f32 ? GGML_TYPE_F32 : GGML_TYPE_F16;
    // ggml's ne[] lists dimensions innermost first: q [d, n, heads, 1] is kexue's contiguous (1, heads, n, d).
    ggml_tensor* q = ggml_new_tensor_4d(ctx_, GGML_TYPE_F32, kDim, s.n, s.heads, 1);
    ggml_tensor* k = ggml_new_tensor_4d(ctx_, kv_type, kDim, s.m, s.kv_heads, 1);
    ggml_tensor* v = ggml_new_tensor_4d(ctx_, kv_type, kDim, s.m, s.kv_heads, 1);
    q->data = in.q.data();
    k->data = s.kv == Kv::f32 ? static_cast<void*>(in.k32.data()) : static_cast<void*>(in.k16.data());
    v->data = s.kv == Kv::f32 ? static_cast<void*>(in.v32.data()) : static_cast<void*>(in.v16.data());
    ggml_tensor* mask = nullptr;
    if (s.causal) {
      // [m, n] f16, 0 where query i sees key j <= i + (m - n) (kexue's bottom-right alignment), -inf elsewhere.
      mask = ggml_new_tensor_4d(ctx_, GGML_TYPE_F16, s.m, s.n, 1, 1);
      mask_.resize(std::size_t(s.m * s.n));
      for (Index i = 0; i < s.n; ++i)
        for (Index j = 0; j < s.m; ++j)
          mask_[std::size_t(i * s.m + j)] = ggml_fp32_to_fp16(j <= i + (s.m - s.n) ? 0.f : -INFINITY);
      mask->data = mask_.data();
    }
    out_ = ggml_flash_attn_ext(ctx_, q, k, v, mask, 1.f / std::sqrt(float(kDim)), 0.f, 0.f);
    out_->data = in.out_ggml.data();
    graph_ = ggml_new_graph(ctx_);
    ggml_build_forward_expand(graph_, out_);
    ggml_threadpool_params tp = ggml_threadpool_params_default(1);
    pool_ = ggml_threadpool_new(&tp);
    plan_ = ggml_graph_plan(graph_, 1, pool_);
    work_.resize(plan_.work_size + 64);
    plan_.work_data = work_.data();
  }
  GgmlAttention(const GgmlAttention&) = delete;
  GgmlAttention& operator=(const GgmlAttention&) = delete;
  ~GgmlAttention() {
    ggml_threadpool_free(pool_);
    ggml_free(ctx_);
  }

  void operator()() {
    if (ggml_graph_compute(graph_, &plan_) != GGML_STATUS_SUCCESS) throw std::runtime_error("ggml_graph_compute");
  }

 private:
  ggml_context* ctx_ = nullptr;
  ggml_tensor* out_ = nullptr;
  ggml_cgraph* graph_ = nullptr;
  ggml_threadpool* pool_ = nullptr;
  ggml_cplan plan_{};
  std::vector<ggml_fp16_t> mask_;
  std::vector<std::uint8_t> work_;
};

// Largest |out - ref| over a sample of query rows of every head, ref in float64 from the stored inputs (K and V as
// stored: fp16 values are exact in double). permuted: out is ggml's [n][heads][d], else kexue's [heads][n][d].
double max_error(const Inputs& in, const float* out, bool permuted) {
  const auto& s = in.s;
  const Index group = s.heads / s.kv_heads;
  const double scale = 1.0 / std::sqrt(double(kDim));
  auto key = [&](Index h, Index j, Index c) {
    const std::size_t at = std::size_t((h * s.m + j) * kDim + c);
    return s.kv == Kv::f32 ? double(in.k32[at]) : double(float(in.k16[at]));
  };
  auto val = [&](Index h, Index j, Index c) {
    const std::size_t at = std::size_t((h * s.m + j) * kDim + c);
    return s.kv == Kv::f32 ? double(in.v32[at]) : double(float(in.v16[at]));
  };
  double worst = 0;
  std::vector<double> logits(static_cast<std::size_t>(s.m)), ref(static_cast<std::size_t>(kDim));
  const Index step = std::max<Index>(1, s.n / 7);
  for (Index h = 0; h < s.heads; ++h)
    for (Index i = s.n - 1; i >= 0; i -= step) {  // the last row (every key) and 6-7 more
      const Index kh = h / group, visible = s.causal ? std::min(s.m, i + 1 + (s.m - s.n)) : s.m;
      double mx = -INFINITY, sum = 0;
      for (Index j = 0; j < visible; ++j) {
        double dot = 0;
        for (Index c = 0; c < kDim; ++c) dot += double(in.q[std::size_t((h * s.n + i) * kDim + c)]) * key(kh, j, c);
        logits[std::size_t(j)] = scale * dot;
        mx = std::max(mx, scale * dot);
      }
      std::fill(ref.begin(), ref.end(), 0.0);
      for (Index j = 0; j < visible; ++j) {
        const double p = std::exp(logits[std::size_t(j)] - mx);
        sum += p;
        for (Index c = 0; c < kDim; ++c) ref[std::size_t(c)] += p * val(kh, j, c);
      }
      for (Index c = 0; c < kDim; ++c) {
        const std::size_t at =
            permuted ? std::size_t((i * s.heads + h) * kDim + c) : std::size_t((h * s.n + i) * kDim + c);
        worst = std::max(worst, std::abs(double(out[at]) - ref[std::size_t(c)] / sum));
      }
    }
  return worst;
}

void run(benchmark::State& state, const Shape& shape, bool use_ggml) {
  set_threads(1);
  Inputs in(shape);
  std::unique_ptr<GgmlAttention> ggml_call;
  if (use_ggml) ggml_call = std::make_unique<GgmlAttention>(in);
  auto call = [&] {
    if (use_ggml)
      (*ggml_call)();
    else
      kexue_call(in);
  };
  call();
  state.counters["max_err"] = max_error(in, use_ggml ? in.out_ggml.data() : in.out_kexue.data(), use_ggml);
  for (auto _ : state) {
    call();
    benchmark::ClobberMemory();
  }
  report_flops(state, in.flops(), 1);
  if (shape.n == 1) report_bytes(state, in.kv_bytes());
}

// Arg 0 library (0 ggml, 1 kexue), arg 1 K/V type (0 f32, 1 f16), then the shape.
void BM_prefill(benchmark::State& state) {
  const Index n = state.range(2);
  run(state, Shape{kHeads, kHeads, n, n, state.range(3) != 0, Kv(state.range(1))}, state.range(0) == 0);
}
BENCHMARK(BM_prefill)
    ->ArgNames({"kexue", "f16", "n", "causal"})
    ->ArgsProduct({{0, 1}, {0, 1}, {2048}, {0, 1}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(BM_prefill)
    ->ArgNames({"kexue", "f16", "n", "causal"})
    ->ArgsProduct({{0, 1}, {1}, {8192}, {0}})
    ->Iterations(2)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

void BM_decode(benchmark::State& state) {
  run(state, Shape{kHeads, 2, 1, state.range(2), true, Kv(state.range(1))}, state.range(0) == 0);
}
BENCHMARK(BM_decode)
    ->ArgNames({"kexue", "f16", "m"})
    ->ArgsProduct({{0, 1}, {0, 1}, {4096, 32768}})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();

}  // namespace
BENCHMARK_MAIN();
