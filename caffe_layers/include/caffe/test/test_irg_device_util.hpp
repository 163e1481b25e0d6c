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
#include "caffe/syncedmem.hpp"
#include "caffe/util/math_functions.hpp"

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

// Overwrites n values on the device `brew` computes on with a sentinel, so
// that an output a pass fails to write cannot pass for the other device's
// (the blobs are shared, and SyncedMemory would carry that one over).
template <typename Dtype>
void Poison(Caffe::Brew brew, const int n, SyncedMemory* mem) {
  const Dtype sentinel = Dtype(12345.678);
#ifndef CPU_ONLY
  if (brew == Caffe::GPU) {
    caffe_gpu_set(n, sentinel, static_cast<Dtype*>(mem->mutable_gpu_data()));
    return;
  }
#endif
  caffe_set(n, sentinel, static_cast<Dtype*>(mem->mutable_cpu_data()));
}

// Sets up `layer` in mode `brew` and runs Forward, then Backward with the top
// diff `top_diff` (which must fit the top), into a Pass. The blobs are the
// same for both devices; every output is poisoned first on this pass's
// device, so each device's result is its own.
template <typename Dtype>
Pass<Dtype> RunOn(Caffe::Brew brew, Layer<Dtype>* layer,
    const vector<Blob<Dtype>*>& bottom, Blob<Dtype>* top,
    const vector<Dtype>& top_diff) {
  const Caffe::Brew previous = Caffe::mode();
  Caffe::set_mode(brew);
  vector<Blob<Dtype>*> top_vec(1, top);
  layer->SetUp(bottom, top_vec);
  Poison<Dtype>(brew, top->count(), top->data().get());
  layer->Forward(bottom, top_vec);
  CHECK_EQ(static_cast<int>(top_diff.size()), top->count());
  std::copy(top_diff.begin(), top_diff.end(), top->mutable_cpu_diff());
  for (int i = 0; i < static_cast<int>(bottom.size()); ++i) {
    Poison<Dtype>(brew, bottom[i]->count(), bottom[i]->diff().get());
  }
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

// |got - want| <= tol * max(max|want|, floor) for every entry: the devices
// sum in different orders, so their results differ by rounding relative to
// the magnitudes summed. The largest entry bounds those, except where the
// terms cancel (a gradient that is exactly 0, or nearly, by symmetry): there
// the caller's `floor`, the size of the terms, does.
template <typename Dtype>
void ExpectNearRelative(const vector<Dtype>& want, const vector<Dtype>& got,
    const double tol, const std::string& what, const double floor = 0) {
  ASSERT_EQ(want.size(), got.size()) << what;
  double scale = floor;
  for (size_t k = 0; k < want.size(); ++k) {
    scale = std::max(scale, std::fabs(static_cast<double>(want[k])));
  }
  int reported = 0;
  for (size_t k = 0; k < want.size() && reported < 5; ++k) {
    const double diff = std::fabs(static_cast<double>(got[k]) - want[k]);
    if (!(diff <= tol * scale)) {
      ADD_FAILURE() << what << ": entry " << k << " is " << got[k]
          << " on the GPU, " << want[k] << " on the CPU (|diff| " << diff
          << " > " << tol << " x " << scale << ")";
      ++reported;
    }
  }
}

// The size of the terms summed into one bottom-gradient entry of an IRG
// layer, for ExpectNearRelative's floor: `raw` are the distances the layer
// normalizes (squared or not, from a normalize: NONE pass), m their
// normalizer, so that dL/dq is at most max|g| / m (over 2 d_min where the
// distances are not squared); `count` terms of that times `max_x`.
inline double TermScale(const vector<double>& raw, const int normalize,
    const bool squared, const double max_g, const double max_x,
    const int count) {
  double m = 0, sum = 0, d_min = 0;
  for (size_t k = 0; k < raw.size(); ++k) {
    m = std::max(m, raw[k]);
    sum += raw[k];
    if (raw[k] > 0) d_min = d_min > 0 ? std::min(d_min, raw[k]) : raw[k];
  }
  if (normalize == IRGParameter_Normalize_MEAN) m = sum / raw.size();
  if (normalize == IRGParameter_Normalize_NONE || !(m > 0)) m = 1;
  double h = max_g / m;
  if (!squared && d_min > 0) h /= 2 * d_min;
  return 4. * count * h * max_x;
}

template <typename Dtype>
double MaxAbs(const Dtype* x, const int n) {
  double out = 0;
  for (int k = 0; k < n; ++k) {
    out = std::max(out, std::fabs(static_cast<double>(x[k])));
  }
  return out;
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
