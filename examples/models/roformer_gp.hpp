// SPDX-License-Identifier: MIT
#pragma once
// A RoFormerV2 / GAU-alpha encoder with a GlobalPointer head (posts 9052, 9019, 8373; SPEC 2, 3.1-3.2, 7.1),
// written on kexue's public API. The architecture is bert4keras' GAU_alpha (ZhuiyiTechnology/GAU-alpha):
//
//     x = token_embedding[ids] + segment_embedding[segment_ids]
//     x = x / sqrt(mean(x^2) + 1e-7)                       Embedding-Norm (RMSNorm without parameters)
//     for each layer:  x = RMSNorm(x + GAU(x))             Post-Norm; GAU without biases, softmax_plus, RoPE
//     scores = GlobalPointer(x)                            [types * n, n]; spans = cells > 0
//
// Padding: keys past `length` are masked in every GAU (bert4keras' attention mask from token ids != 0) and
// GlobalPointer masks rows and columns past `length`; padded query rows are computed like any other row.
// Templated on the scalar (float or double).
#include <kexue/gau.hpp>
#include <kexue/global_pointer.hpp>
#include <kexue/init.hpp>
#include <kexue/norm.hpp>
#include <kexue/random.hpp>
#include <kexue/rope.hpp>

#include <vector>

#include "glue.hpp"

namespace kexue_models {

/// Sizes of the encoder (GAU-alpha base: hidden 768, units 1536, key_size 128, 24 layers; head_size 64).
struct RoformerGpConfig {
  Index vocab = 32, segments = 2, hidden = 32, units = 64, key_size = 16, layers = 2;
  Index entity_types = 2, head_size = 16;
};

/// Weights of the encoder and its GlobalPointer head.
template <class T>
struct RoformerGpWeights {
  Matrix<T> token_embedding;            ///< [vocab, hidden]
  Matrix<T> segment_embedding;          ///< [segments, hidden]
  std::vector<kexue::GauWeights<T>> layers;  ///< w_in [hidden, 2 units + key_size], gammas [key_size], w_out; no biases
  kexue::GlobalPointerWeights<T> pointer;    ///< w [hidden, 2 types head_size], b [2 types head_size]

  /// Fresh weights as bert4keras initialises GAU-alpha: the RoFormerV2 truncated normal with order 3 for the
  /// embeddings and GAU kernels, ScaleOffset gammas 1; GlobalPointer's Dense lecun_normal with a zero bias.
  static RoformerGpWeights random(const RoformerGpConfig& c, kexue::PhiloxGenerator& gen) {
    RoformerGpWeights w;
    w.token_embedding.resize(c.vocab, c.hidden);
    w.segment_embedding.resize(c.segments, c.hidden);
    kexue::init_roformer_v2(w.token_embedding, c.layers, 3.0, gen);
    kexue::init_roformer_v2(w.segment_embedding, c.layers, 3.0, gen);
    for (Index l = 0; l < c.layers; ++l) {
      kexue::GauWeights<T> g;
      g.w_in.resize(c.hidden, 2 * c.units + c.key_size);
      g.w_out.resize(c.units, c.hidden);
      kexue::init_roformer_v2(g.w_in, c.layers, 3.0, gen);
      kexue::init_roformer_v2(g.w_out, c.layers, 3.0, gen);
      g.gamma_q = Vector<T>::Ones(c.key_size);
      g.gamma_k = Vector<T>::Ones(c.key_size);
      w.layers.push_back(std::move(g));
    }
    w.pointer.heads = c.entity_types;
    w.pointer.head_size = c.head_size;
    w.pointer.w.resize(c.hidden, 2 * c.entity_types * c.head_size);
    kexue::init_lecun_normal(w.pointer.w, gen);
    w.pointer.b = Vector<T>::Zero(2 * c.entity_types * c.head_size);
    return w;
  }

  /// The same weights in another scalar type (e.g. float weights from a double master copy).
  template <class U>
  RoformerGpWeights<U> cast() const {
    RoformerGpWeights<U> o;
    o.token_embedding = token_embedding.template cast<U>();
    o.segment_embedding = segment_embedding.template cast<U>();
    for (const auto& g : layers) o.layers.push_back(cast_gau<U>(g));
    o.pointer.w = pointer.w.template cast<U>();
    o.pointer.b = pointer.b.template cast<U>();
    o.pointer.heads = pointer.heads;
    o.pointer.head_size = pointer.head_size;
    return o;
  }
};

/// The encoder + GlobalPointer, ready to run sequences of up to max_length tokens.
template <class T>
class RoformerGp {
 public:
  RoformerGp(RoformerGpWeights<T> weights, Index max_length)
      : w_(std::move(weights)),
        gau_table_(max_length, w_.layers.at(0).key_size()),  // bert4keras: sinusoidal, interleaved, base 10000
        gp_table_(max_length, w_.pointer.head_size) {
    options_.attention.normalization = kexue::Normalization::SoftmaxPlus;  // GAU-alpha: softmax_plus
    // Packed once here, not on every gau() call (at n = 128 packing was a sixth of the encoder's time).
    for (const kexue::GauWeights<T>& layer : w_.layers) packed_.push_back(kexue::gau_pack(layer));
  }

  const RoformerGpWeights<T>& weights() const { return w_; }

  /// Last hidden layer [n, hidden] of a sequence of n token ids (segment ids: empty for all 0); tokens
  /// [length, n) are padding.
  void encode(const std::vector<int>& tokens, const std::vector<int>& segments, Index length, Matrix<T>& hidden) {
    const std::vector<int> zeros(tokens.size(), 0);
    embed(w_.token_embedding, tokens, hidden, &w_.segment_embedding, segments.empty() ? &zeros : &segments);
    const Vector<T> none;  // RMSNorm without scale: zero_mean=False, scale=False, offset=False
    kexue::rms_norm(hidden, none, hidden, kexue::kKerasEpsilon);
    branch_.resize(hidden.rows(), hidden.cols());
    kexue::GauOptions o = options_;
    o.attention.key_length = length;
    for (const kexue::GauPackedWeights<T>& layer : packed_) {
      kexue::gau(layer, hidden, branch_, workspace_, o, &gau_table_);
      kexue::add_rms_norm(hidden, branch_, none, hidden, kexue::kKerasEpsilon);  // Post-Norm: x = Norm(x + F(x))
    }
  }

  /// GlobalPointer scores [types * n, n] of hidden states [n, hidden]: type a in rows [a n, (a + 1) n),
  /// row = start, column = end, -inf where end < start or either is at or past length.
  void score(const Matrix<T>& hidden, Index length, Matrix<T>& scores) const {
    scores.resize(w_.pointer.heads * hidden.rows(), hidden.rows());
    kexue::global_pointer(w_.pointer, gp_table_, hidden, scores, length);
  }

  /// Entities of a [CLS] ... [SEP] sequence: every (type, start, end) with a positive score, spans touching
  /// [CLS] (position 0) or [SEP] (position length - 1) excluded, as bojone/GlobalPointer's recognize().
  std::vector<kexue::Span> recognize(const std::vector<int>& tokens, const std::vector<int>& segments,
                                     Index length, double threshold = 0.0) {
    encode(tokens, segments, length, hidden_);
    score(hidden_, length, scores_);
    kexue::DecodeOptions d;
    d.threshold = threshold;
    d.exclude_boundary_tokens = true;
    d.length = length;
    return kexue::decode_spans(scores_, w_.pointer.heads, d);
  }

 private:
  RoformerGpWeights<T> w_;
  std::vector<kexue::GauPackedWeights<T>> packed_;  // w_.layers packed for gau()
  kexue::RopeTable<T> gau_table_, gp_table_;
  kexue::GauOptions options_;
  kexue::GauWorkspace<T> workspace_;
  Matrix<T> branch_, hidden_, scores_;
};

}  // namespace kexue_models
