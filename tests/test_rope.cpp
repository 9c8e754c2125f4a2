// SPDX-License-Identifier: MIT
// Tests of kexue/rope.hpp.

#include "kexue/rope.hpp"

#include <vector>

#include "support.hpp"

using kexue::Index;
using kexue::Matrix;
using kexue::RopeLayout;
using kexue::RopeOptions;
using kexue::RopeTable;

TEST_CASE("rope: SPEC 1.2 derived test vectors (interleaved, base 10000)", "[rope]") {
  {
    RopeTable<double> table(8, 4);
    Matrix<double> x(1, 4);
    x << 1, 2, 3, 4;
    kexue::rope(table, x, 1);
    const double want[] = {-1.1426396637, 1.9220755965, 2.9598506679, 4.0297995017};
    for (int j = 0; j < 4; ++j) CHECK(x(0, j) == Approx(want[j]).margin(1e-9));
  }
  {
    RopeTable<float> table(8, 6);
    Matrix<float> x(1, 6);
    x << 0.5f, -1.f, 2.f, 0.25f, 1.f, 1.f;
    kexue::rope(table, x, 3);
    const double want[] = {-0.3538762402, 1.0605525006, 1.9459418730, 0.5251763769, 0.9935158539, 1.0064423720};
    for (int j = 0; j < 6; ++j) CHECK(x(0, j) == Approx(want[j]).margin(1e-6));
  }
  {
    RopeTable<double> table(16, 4);
    Matrix<double> q(1, 4), k(1, 4);
    q << 0.3, -0.7, 1.1, 0.2;
    k << -0.4, 0.9, 0.5, -1.3;
    Matrix<double> q5 = q, k9 = k, q0 = q, k4 = k;
    kexue::rope(table, q5, 5);
    kexue::rope(table, k9, 9);
    kexue::rope(table, q0, 0);
    kexue::rope(table, k4, 4);
    CHECK(q5.row(0).dot(k9.row(0)) == Approx(0.8336164029).margin(1e-9));
    CHECK(q0.row(0).dot(k4.row(0)) == Approx(0.8336164029).margin(1e-9));
  }
}
