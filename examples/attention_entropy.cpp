// SPDX-License-Identifier: MIT
// Why softmax_plus exists (SPEC 3.4, posts 8823 / 9034 / 9019): the entropy of an attention row grows like
// ln n as the number of keys n grows, so a model trained at n = 512 attends more diffusely at n = 16384.
// bert4keras' softmax_plus multiplies the logits by log_512(max(n, 16)), which keeps the entropy nearly flat;
// squared ReLU is positively homogeneous, so no temperature can help it and its entropy keeps growing.
//
// For random q, k with peaked logits (std 3, as in a trained model rather than at initialisation), this
// prints the mean row entropy of Softmax, SoftmaxPlus and SquaredRelu (relu^2 rows normalised to a
// distribution) for n = 64 .. 16384 keys and writes attention_entropy.svg. It also checks, at every n, that
// the fused kernel's output equals the materialised weights times v.
#include <cmath>
#include <cstdio>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "kexue/attention.hpp"

namespace {

using kexue::Index;
using kexue::Matrix;

constexpr Index kQueries = 32;   // query rows averaged per length
constexpr Index kDim = 64;       // head size
constexpr double kLogitStd = 3;  // std of q.k / sqrt(d)

struct Series {
  const char* name;
  const char* color;
  kexue::Normalization norm;
  std::vector<double> entropy;
};

void write_svg(const std::string& path, const std::vector<Index>& lengths, const std::vector<Series>& series) {
  const double w = 640, h = 400, left = 60, right = 170, top = 30, bottom = 50;
  const double x0 = std::log2(double(lengths.front())), x1 = std::log2(double(lengths.back()));
  const double y1 = std::ceil(std::log(double(lengths.back())));
  auto X = [&](Index n) { return left + (std::log2(double(n)) - x0) / (x1 - x0) * (w - left - right); };
  auto Y = [&](double e) { return top + (1 - e / y1) * (h - top - bottom); };
  std::ofstream f(path);
  f << "<svg xmlns='http://www.w3.org/2000/svg' width='" << w << "' height='" << h << "' font-family='sans-serif' "
    << "font-size='12'>\n<rect width='100%' height='100%' fill='white'/>\n";
  f << "<text x='" << left << "' y='18' font-size='14'>Mean attention entropy vs number of keys (d = " << kDim
    << ", logit std " << kLogitStd << ")</text>\n";
  for (Index n : lengths) {
    f << "<line x1='" << X(n) << "' x2='" << X(n) << "' y1='" << top << "' y2='" << h - bottom
      << "' stroke='#eee'/>\n<text x='" << X(n) << "' y='" << h - bottom + 16 << "' text-anchor='middle'>" << n
      << "</text>\n";
  }
  for (int e = 0; e <= int(y1); e += 2) {
    f << "<text x='" << left - 8 << "' y='" << Y(e) + 4 << "' text-anchor='end'>" << e << "</text>\n";
  }
  f << "<text x='" << (left + w - right) / 2 << "' y='" << h - 12 << "' text-anchor='middle'>keys n (log scale)"
    << "</text>\n<text x='16' y='" << (top + h - bottom) / 2 << "' transform='rotate(-90 16 "
    << (top + h - bottom) / 2 << ")' text-anchor='middle'>entropy (nats)</text>\n";
  // ln n: the entropy of uniform attention, the ceiling every curve lives under.
  f << "<polyline fill='none' stroke='#999' stroke-dasharray='4 3' points='";
  for (Index n : lengths) f << X(n) << "," << Y(std::log(double(n))) << " ";
  f << "'/>\n";
  std::vector<Series> all = series;
  for (std::size_t s = 0; s < all.size(); ++s) {
    f << "<polyline fill='none' stroke-width='2' stroke='" << all[s].color << "' points='";
    for (std::size_t i = 0; i < lengths.size(); ++i) f << X(lengths[i]) << "," << Y(all[s].entropy[i]) << " ";
    f << "'/>\n";
    const double ly = top + 20 + 20 * double(s);
    f << "<line x1='" << w - right + 15 << "' x2='" << w - right + 40 << "' y1='" << ly << "' y2='" << ly
      << "' stroke-width='2' stroke='" << all[s].color << "'/><text x='" << w - right + 46 << "' y='" << ly + 4
      << "'>" << all[s].name << "</text>\n";
  }
  const double ly = top + 20 + 20 * double(all.size());
  f << "<line x1='" << w - right + 15 << "' x2='" << w - right + 40 << "' y1='" << ly << "' y2='" << ly
    << "' stroke='#999' stroke-dasharray='4 3'/><text x='" << w - right + 46 << "' y='" << ly + 4
    << "'>ln n (uniform)</text>\n</svg>\n";
}

}  // namespace

int main() {
  std::vector<Index> lengths;
  for (Index n = 64; n <= 16384; n *= 2) lengths.push_back(n);
  std::vector<Series> series = {{"Softmax", "#1f77b4", kexue::Normalization::Softmax, {}},
                                {"SoftmaxPlus", "#d62728", kexue::Normalization::SoftmaxPlus, {}},
                                {"SquaredRelu", "#2ca02c", kexue::Normalization::SquaredRelu, {}}};
  std::mt19937 gen(2024);
  std::normal_distribution<float> normal(0.f, 1.f);
  // q.k / sqrt(d) has std kLogitStd when q ~ N(0, kLogitStd^2) and k ~ N(0, 1).
  Matrix<float> q(kQueries, kDim);
  for (Index i = 0; i < q.size(); ++i) q.data()[i] = float(kLogitStd) * normal(gen);

  std::printf("mean attention entropy over %td query rows, d = %td, logit std %.0f (ln n = uniform)\n", kQueries,
              kDim, kLogitStd);
  std::printf("%8s %8s %12s %12s %12s\n", "n", "ln n", "Softmax", "SoftmaxPlus", "SquaredRelu");
  double worst_mismatch = 0;
  for (Index n : lengths) {
    Matrix<float> k(n, kDim), v(n, kDim), a(kQueries, n), out(kQueries, kDim);
    for (Index i = 0; i < k.size(); ++i) k.data()[i] = normal(gen);
    for (Index i = 0; i < v.size(); ++i) v.data()[i] = normal(gen);
    std::printf("%8td %8.3f", n, std::log(double(n)));
    for (auto& s : series) {
      kexue::AttentionOptions options;
      options.normalization = s.norm;
      kexue::attention_weights(q, k, a, options);  // materialised: fine for 32 rows
      kexue::Vector<float> h(kQueries);
      kexue::attention_entropy(a, h);
      s.entropy.push_back(double(h.mean()));
      std::printf(" %12.3f", s.entropy.back());
      kexue::attention(q, k, v, out, options);  // the fused kernel never builds `a`
      const Matrix<float> via_weights = a * v;
      worst_mismatch = std::max(worst_mismatch, double((out - via_weights).cwiseAbs().maxCoeff()));
    }
    std::printf("\n");
  }
  const auto change = [&](const Series& s) { return s.entropy.back() - s.entropy.front(); };
  std::printf("entropy change from n = %td to n = %td: Softmax %+.2f, SoftmaxPlus %+.2f, SquaredRelu %+.2f "
              "(ln n itself: %+.2f)\n",
              lengths.front(), lengths.back(), change(series[0]), change(series[1]), change(series[2]),
              std::log(double(lengths.back()) / double(lengths.front())));
  std::printf("fused attention() vs weights * v: max |difference| = %.2e\n", worst_mismatch);
  write_svg("attention_entropy.svg", lengths, series);
  std::printf("wrote attention_entropy.svg\n");
  return worst_mismatch < 1e-4 ? 0 : 1;
}
