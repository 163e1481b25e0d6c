// Built with -O2 -ffast-math by tests/test_layers.py: the normalized MAX map
// must mark exactly the maxima with 1 when the division is approximate.
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "caffe/util/irg_math.hpp"

int main() {
  using caffe::irg::normalized;
  const int mode = caffe::IRGParameter_Normalize_MAX;
  long wrong = 0, plain_wrong = 0, cases = 0;
  std::srand(1701);
  for (int trial = 0; trial < 20000; ++trial) {
    std::vector<float> d(64);
    for (size_t k = 0; k < d.size(); ++k) {
      d[k] = static_cast<float>(std::rand()) / RAND_MAX * (1 + trial % 97);
    }
    d[trial % 64] = d[(trial * 7) % 64];  // sometimes a tie
    float m = 0;
    for (size_t k = 0; k < d.size(); ++k) m = d[k] > m ? d[k] : m;
    const float inv = 1 / m;
    for (size_t k = 0; k < d.size(); ++k) {
      const bool is_max = d[k] == m;
      wrong += (normalized(d[k], m, mode) == 1.f) != is_max;
      plain_wrong += (d[k] * inv == 1.f) != is_max;
      ++cases;
    }
  }
  std::printf("cases %ld wrong %ld plain_division_wrong %ld\n", cases, wrong,
              plain_wrong);
  return wrong == 0 ? 0 : 1;
}
