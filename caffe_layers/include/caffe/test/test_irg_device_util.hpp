#ifndef CAFFE_TEST_TEST_IRG_DEVICE_UTIL_HPP_
#define CAFFE_TEST_TEST_IRG_DEVICE_UTIL_HPP_

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "gtest/gtest.h"

#include "caffe/blob.hpp"
#include "caffe/common.hpp"
#include "caffe/layer.hpp"

// Helpers for the tests that run an IRG layer on the GPU and on the CPU with
// the same inputs and compare the two.

namespace caffe {
namespace irg_test {

// One pass of a layer on one device: the top's data and the bottoms' diffs,
// copied out so that the other device's pass can be compared with them.
template <typename Dtype>
struct Pass {
  vector<Dtype> top;
  vector<vector<Dtype> > bottom_diff;
};

// Sets up `layer` in mode `brew` and runs Forward, then Backward with the top
// diff `top_diff` (which must fit the top), into a Pass. The blobs are the
// same for both devices; Caffe's SyncedMemory moves them.
template <typename Dtype>
Pass<Dtype> RunOn(Caffe::Brew brew, Layer<Dtype>* layer,
    const vector<Blob<Dtype>*>& bottom, Blob<Dtype>* top,
    const vector<Dtype>& top_diff) {
  const Caffe::Brew previous = Caffe::mode();
  Caffe::set_mode(brew);
  vector<Blob<Dtype>*> top_vec(1, top);
  layer->SetUp(bottom, top_vec);
  layer->Forward(bottom, top_vec);
  CHECK_EQ(static_cast<int>(top_diff.size()), top->count());
  std::copy(top_diff.begin(), top_diff.end(), top->mutable_cpu_diff());
  layer->Backward(top_vec, vector<bool>(bottom.size(), true), bottom);
  Pass<Dtype> pass;
  pass.top.assign(top->cpu_data(), top->cpu_data() + top->count());
  for (int i = 0; i < static_cast<int>(bottom.size()); ++i) {
    const Dtype* d = bottom[i]->cpu_diff();
    pass.bottom_diff.push_back(vector<Dtype>(d, d + bottom[i]->count()));
  }
  Caffe::set_mode(previous);
  return pass;
}

// |got - want| <= tol * max|want| for every entry: the devices sum in
// different orders, so their results differ by rounding relative to the
// magnitudes summed, which the largest entry bounds.
template <typename Dtype>
void ExpectNearRelative(const vector<Dtype>& want, const vector<Dtype>& got,
    const double tol, const std::string& what) {
  ASSERT_EQ(want.size(), got.size()) << what;
  double scale = 0;
  for (size_t k = 0; k < want.size(); ++k) {
    scale = std::max(scale, std::fabs(static_cast<double>(want[k])));
  }
  int reported = 0;
  for (size_t k = 0; k < want.size() && reported < 5; ++k) {
    const double diff = std::fabs(static_cast<double>(got[k]) - want[k]);
    if (!(diff <= tol * scale)) {
      ADD_FAILURE() << what << ": entry " << k << " is " << got[k]
          << " on the GPU, " << want[k] << " on the CPU (|diff| " << diff
          << " > " << tol << " x max|cpu| " << scale << ")";
      ++reported;
    }
  }
}

// The tolerance for comparing the devices. `sums` is the longest sum behind
// an entry (D for a distance, N for a bottom gradient); the rounding error of
// such a sum grows like sqrt(sums) epsilons of its terms, and a factor of 64
// covers the few sums chained in one entry (Gram, distance, normalizer,
// coefficients, GEMM) with room for unlucky orders.
template <typename Dtype>
double DeviceTolerance(const int sums) {
  const double eps =
      sizeof(Dtype) == 4 ? 1.1920929e-07 : 2.220446049250313e-16;
  return 64 * std::sqrt(static_cast<double>(std::max(sums, 16))) * eps;
}

}  // namespace irg_test
}  // namespace caffe

#endif  // CAFFE_TEST_TEST_IRG_DEVICE_UTIL_HPP_
