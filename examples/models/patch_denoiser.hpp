// SPDX-License-Identifier: MIT
#pragma once
// Su's patch-diffusion denoiser (posts 9984 and 9119; Keras-DDPM's ddpm-gau.py; SPEC 8, 1.3, 6) on kexue's
// public API, and the DDPM sampling loop around it:
//
//     x = patchify(image) W_in + time_embedding[t]          patches [L, p p C] -> [L, hidden] (no bias)
//     for each layer:  x = x + GAU(RMSNorm(x) * gamma)       Pre-Norm; GAU with biases, softmax, 2-D RoPE
//     eps = unpatchify((RMSNorm(x) * gamma_out) W_out)       [L, hidden] -> [L, p p C] -> image
//
// The GAU is bert4keras' GatedAttentionUnit(units, key_size, normalization='softmax') with its default biases,
// assembled here from kexue's kernels because its rotary positions are 2-D: [u | v | z] = swish(x W + b),
// q = gamma_q z + beta_q, k = gamma_k z + beta_k, then rope_2d on q and k (the first key_size/2 dims rotated
// by the patch row, the rest by the patch column, base 1000), attention(q, k, v) with softmax and scale
// 1/sqrt(key_size), and (u * (A v)) W_o + b_o. RMSNorm is bert4keras' LayerNormalization(zero_mean=False,
// offset=False): eps 1e-7 with a gain. A batch of B images is [B H, W C] (image b in rows [b H, (b + 1) H)).
// Templated on the scalar.
#include <kexue/attention.hpp>
#include <kexue/ddpm.hpp>
#include <kexue/dense.hpp>
#include <kexue/gau.hpp>
#include <kexue/init.hpp>
#include <kexue/norm.hpp>
#include <kexue/patch.hpp>
#include <kexue/random.hpp>
#include <kexue/rope.hpp>

#include <stdexcept>
#include <vector>

#include "glue.hpp"

namespace kexue_models {

/// Sizes (ddpm-gau.py: 128 x 128 x 3 images, patches of 8, hidden 768, units 1536, key_size 128, 24 layers,
/// T = 1000).
struct PatchDenoiserConfig {
  Index height = 16, width = 16, channels = 3, patch = 4;
  Index hidden = 32, units = 64, key_size = 16, layers = 2, timesteps = 1000;
  double rope_base = 1000.0;  // SPEC 1.3: the 2-D RoPE of ddpm-gau.py uses base 1000
  Index patch_values() const { return patch * patch * channels; }
  Index patches() const { return (height / patch) * (width / patch); }
};

template <class T>
struct PatchDenoiserLayer {
  Vector<T> norm_gamma;      ///< [hidden]
  kexue::GauWeights<T> gau;  ///< with b_in, beta_q, beta_k, b_out (bert4keras' use_bias=True)
};

template <class T>
struct PatchDenoiserWeights {
  PatchDenoiserConfig config;
  Matrix<T> patch_in;        ///< [p p C, hidden]
  Matrix<T> time_embedding;  ///< [timesteps, hidden]
  std::vector<PatchDenoiserLayer<T>> layers;
  Vector<T> final_gamma;     ///< [hidden]
  Matrix<T> patch_out;       ///< [hidden, p p C]

  /// Fresh weights: Keras' glorot_uniform for the Dense kernels, uniform(-0.05, 0.05) for the embedding
  /// (Keras' Embedding default), zero biases and offsets, unit gains.
  static PatchDenoiserWeights random(const PatchDenoiserConfig& c, kexue::PhiloxGenerator& gen) {
    PatchDenoiserWeights w;
    w.config = c;
    w.patch_in.resize(c.patch_values(), c.hidden);
    kexue::init_xavier_uniform(w.patch_in, gen);
    w.time_embedding.resize(c.timesteps, c.hidden);
    // U(-a, a) with a = sqrt(3 scale / fan_in) = 0.05.
    kexue::init_variance_scaling(w.time_embedding, 0.05 * 0.05 / 3.0 * double(c.timesteps), kexue::FanMode::FanIn,
                                 kexue::InitDistribution::Uniform, gen);
    for (Index l = 0; l < c.layers; ++l) {
      PatchDenoiserLayer<T> layer;
      layer.norm_gamma = Vector<T>::Ones(c.hidden);
      kexue::GauWeights<T>& g = layer.gau;
      g.w_in.resize(c.hidden, 2 * c.units + c.key_size);
      kexue::init_xavier_uniform(g.w_in, gen);
      g.b_in = Vector<T>::Zero(2 * c.units + c.key_size);
      g.gamma_q = Vector<T>::Ones(c.key_size);
      g.gamma_k = Vector<T>::Ones(c.key_size);
      g.beta_q = Vector<T>::Zero(c.key_size);
      g.beta_k = Vector<T>::Zero(c.key_size);
      g.w_out.resize(c.units, c.hidden);
      kexue::init_xavier_uniform(g.w_out, gen);
      g.b_out = Vector<T>::Zero(c.hidden);
      w.layers.push_back(std::move(layer));
    }
    w.final_gamma = Vector<T>::Ones(c.hidden);
    w.patch_out.resize(c.hidden, c.patch_values());
    kexue::init_xavier_uniform(w.patch_out, gen);
    return w;
  }

  /// The same weights in another scalar type.
  template <class U>
  PatchDenoiserWeights<U> cast() const {
    PatchDenoiserWeights<U> o;
    o.config = config;
    o.patch_in = patch_in.template cast<U>();
    o.time_embedding = time_embedding.template cast<U>();
    for (const auto& l : layers) o.layers.push_back({l.norm_gamma.template cast<U>(), cast_gau<U>(l.gau)});
    o.final_gamma = final_gamma.template cast<U>();
    o.patch_out = patch_out.template cast<U>();
    return o;
  }
};

/// The denoiser eps(x_t, t) and the DDPM sampler around it.
template <class T>
class PatchDenoiser {
 public:
  explicit PatchDenoiser(PatchDenoiserWeights<T> weights)
      : w_(std::move(weights)),
        coords_(kexue::patch_coordinates(w_.config.height, w_.config.width, w_.config.patch)),
        table_(std::max(coords_.grid_height, coords_.grid_width), w_.config.key_size / 2, rope_options()) {
    // Each layer's projections packed once, with their biases (kexue::dense_pack).
    for (const PatchDenoiserLayer<T>& layer : w_.layers)
      packed_.push_back(
          {kexue::dense_pack(layer.gau.w_in, layer.gau.b_in), kexue::dense_pack(layer.gau.w_out, layer.gau.b_out)});
  }

  const PatchDenoiserWeights<T>& weights() const { return w_; }

  /// Noise prediction for a batch of images x_t [B H, W C] at timestep t: eps [B H, W C].
  void predict(const Matrix<T>& images, Index t, Matrix<T>& eps) {
    const PatchDenoiserConfig& c = w_.config;
    if (images.rows() % c.height != 0 || images.cols() != c.width * c.channels)
      throw std::invalid_argument("PatchDenoiser::predict: images must be [B * height, width * channels]");
    if (t < 0 || t >= w_.time_embedding.rows())
      throw std::out_of_range("PatchDenoiser::predict: timestep outside the time embedding");
    const Index batch = images.rows() / c.height, L = c.patches(), rows = batch * L;
    patches_.resize(rows, c.patch_values());
    kexue::patchify(images, c.channels, c.patch, patches_);  // batch b's patches are rows [b L, (b + 1) L)
    x_.noalias() = patches_ * w_.patch_in;
    x_.rowwise() += w_.time_embedding.row(t);
    h_.resize(rows, c.hidden);
    branch_.resize(rows, c.hidden);
    for (std::size_t l = 0; l < w_.layers.size(); ++l) {
      const PatchDenoiserLayer<T>& layer = w_.layers[l];
      kexue::normalize(x_, layer.norm_gamma, Vector<T>(), h_, kexue::NormOptions::ddpm_gau());
      gau_2d(layer.gau, packed_[l], batch, L);
      x_ += branch_;  // Pre-Norm residual
    }
    kexue::normalize(x_, w_.final_gamma, Vector<T>(), h_, kexue::NormOptions::ddpm_gau());
    patches_.noalias() = h_ * w_.patch_out;
    eps.resize(images.rows(), images.cols());
    kexue::unpatchify(patches_, batch * c.height, c.width, c.channels, c.patch, eps);
  }

  /// Su's sampler (Keras-DDPM's sample(); SPEC 6.3): for each t of the descending list, x <- ddpm_step(eps(x,
  /// t)) towards the next entry, with sigma_t^2 = beta_t (FixedLarge), no x0 clipping and noise at the last step
  /// too; skipped steps use diffusers' effective single-step beta. The result is clipped to [-1, 1] (unless
  /// clip is false). noise(z) fills z (same shape as x) with N(0, 1) values for each step.
  template <class NoiseFn>
  void sample(const kexue::DdpmSchedule& schedule, const std::vector<Index>& timesteps, Matrix<T>& x,
              NoiseFn&& noise, bool clip = true) {
    kexue::DdpmStepOptions o = step_options();
    Matrix<T> z(x.rows(), x.cols());
    for (std::size_t i = 0; i < timesteps.size(); ++i) {
      predict(x, timesteps[i], eps_);
      o.prev_t = kexue::previous_timestep(timesteps, i);
      noise(z);
      kexue::ddpm_step(schedule, eps_, timesteps[i], x, z, x, o);
    }
    if (clip) x = x.cwiseMax(T(-1)).cwiseMin(T(1));
  }

  /// The sampler with Philox noise drawn inside ddpm_step (no noise buffer).
  void sample(const kexue::DdpmSchedule& schedule, const std::vector<Index>& timesteps, Matrix<T>& x,
              kexue::PhiloxGenerator& gen, bool clip = true) {
    kexue::DdpmStepOptions o = step_options();
    for (std::size_t i = 0; i < timesteps.size(); ++i) {
      predict(x, timesteps[i], eps_);
      o.prev_t = kexue::previous_timestep(timesteps, i);
      kexue::ddpm_step(schedule, eps_, timesteps[i], x, gen, x, o);
    }
    if (clip) x = x.cwiseMax(T(-1)).cwiseMin(T(1));
  }

  static kexue::DdpmStepOptions step_options() {
    kexue::DdpmStepOptions o;
    o.variance = kexue::Variance::FixedLarge;
    o.clip_sample = false;
    o.final_step_noise = true;
    return o;
  }

 private:
  kexue::RopeOptions rope_options() const {
    kexue::RopeOptions o;
    o.base = w_.config.rope_base;
    return o;
  }

  /// A layer's W_in and W_out with their biases, packed once.
  struct PackedLayer {
    kexue::PackedDense<T> w_in, w_out;
  };

  /// branch = GAU(h) for each image's L patch rows, with 2-D RoPE on q and k.
  void gau_2d(const kexue::GauWeights<T>& g, const PackedLayer& p, Index batch, Index L) {
    const Index e = g.units(), s = g.key_size(), width = 2 * e + s, rows = batch * L;
    uvz_.resize(rows, width);
    kexue::dense(p.w_in, h_, uvz_, kexue::DenseActivation::Swish);  // swish(h W_in + b_in)
    q_ = (uvz_.rightCols(s).array().rowwise() * g.gamma_q.transpose().array()).rowwise() +
         g.beta_q.transpose().array();
    k_ = (uvz_.rightCols(s).array().rowwise() * g.gamma_k.transpose().array()).rowwise() +
         g.beta_k.transpose().array();
    for (Index b = 0; b < batch; ++b) {
      kexue::rope_2d(table_, q_.middleRows(b * L, L), coords_.rows, coords_.cols);
      kexue::rope_2d(table_, k_.middleRows(b * L, L), coords_.rows, coords_.cols);
    }
    av_.resize(rows, e);
    // Each image attends over its own L patches: [B, 1, L, .] views; v is the middle e columns of [u | v | z].
    kexue::attention(kexue::TensorView<const T>::contiguous(q_.data(), batch, 1, L, s),
                     kexue::TensorView<const T>::contiguous(k_.data(), batch, 1, L, s),
                     kexue::TensorView<const T>(uvz_.data() + e, {batch, 1, L, e}, {L * width, 0, width}),
                     kexue::TensorView<T>::contiguous(av_.data(), batch, 1, L, e));
    av_.array() *= uvz_.leftCols(e).array();
    kexue::dense(p.w_out, av_, branch_);  // (u * (A v)) W_out + b_out
  }

  PatchDenoiserWeights<T> w_;
  std::vector<PackedLayer> packed_;
  kexue::PatchCoordinates coords_;
  kexue::RopeTable<T> table_;
  Matrix<T> patches_, x_, h_, branch_, uvz_, q_, k_, av_, eps_;
};

}  // namespace kexue_models
