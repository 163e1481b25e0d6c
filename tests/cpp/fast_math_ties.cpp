// Built with -O2 -ffast-math by tests/test_layer_math.py: the normalized MAX
// map must mark exactly the maxima with 1 when the division is approximate.
#include <inttypes.h>
#include <stdint.h>

#include <cstdio>
#include <vector>

#include "caffe/util/irg_math.hpp"

int main() {
  using caffe::irg::normalized;
  const int mode = caffe::IRGParameter_Normalize_MAX;
  int64_t wrong = 0, plain_wrong = 0, cases = 0;
  uint32_t state = 1701;  // a fixed linear congruential sequence
  for (int trial = 0; trial < 20000; ++trial) {
    std::vector<float> d(64);
    for (size_t k = 0; k < d.size(); ++k) {
      state = state * 1664525u + 1013904223u;
      d[k] = static_cast<float>(state >> 8) / 16777216.f * (1 + trial % 97);
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
  std::printf("cases %" PRId64 " wrong %" PRId64 " plain_division_wrong %"
              PRId64 "\n", cases, wrong, plain_wrong);
  return wrong == 0 ? 0 : 1;
}
