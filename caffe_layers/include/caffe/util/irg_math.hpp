#ifndef CAFFE_UTIL_IRG_MATH_HPP_
#define CAFFE_UTIL_IRG_MATH_HPP_

#include <stdint.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <sstream>
#include <string>
#include <vector>

#include "caffe/blob.hpp"
#include "caffe/proto/caffe.pb.h"
#include "caffe/util/device_alternate.hpp"
#include "caffe/util/math_functions.hpp"

// Per-element math of the IRG layers (BatchEuclideanMap, BatchEuclideanVector).
// Each function is used by the CPU loops and by the CUDA kernels alike, so the
// CPU tests cover the arithmetic the GPU runs; the kernels themselves, launch
// code and reductions, are in irg_kernels.cuh and the layers' .cu files.
#ifdef __CUDACC__
#define IRG_HOST_DEVICE __host__ __device__
#else
#define IRG_HOST_DEVICE
#endif

namespace caffe {
namespace irg {

// Slots of the layers' small state blob `norm_`.
enum NormSlot {
  kNormalizer = 0,   // m: the divisor applied in Forward (1 for NONE)
  kDLossDNorm = 1,   // dL/dm, computed at the start of Backward
  kNormWeight = 2,   // dm/dd for an entry in m (1/#ties, 1/#entries)
  kNumNormSlots = 3
};

// dL/dm * dm/dd for an entry in the normalizer; 0 where the gradient does not
// flow through m (RELEASED, or no normalizer). `norm` is the state blob.
template <typename Dtype>
IRG_HOST_DEVICE inline Dtype normalizer_share(const Dtype* norm,
    const int mode, const bool exact) {
  return exact && mode != IRGParameter_Normalize_NONE
      ? norm[kDLossDNorm] * norm[kNormWeight] : Dtype(0);
}

// Host-side helpers for the layers' error messages: "Type layer 'name'" and
// "bottom[i] 'blob' (shape)", so a failed CHECK says which net element is
// wrong.
inline std::string describe_layer(const char* type, const LayerParameter& p) {
  return std::string(type) + " layer '" + p.name() + "'";
}

template <typename Dtype>
std::string describe_bottom(const LayerParameter& p, const int i,
    const vector<Blob<Dtype>*>& bottom) {
  std::ostringstream out;
  out << "bottom[" << i << "]";
  if (i < p.bottom_size()) out << " '" << p.bottom(i) << "'";
  if (i < static_cast<int>(bottom.size())) {
    out << " (" << bottom[i]->shape_string() << ")";
  }
  return out.str();
}

// CHECKs that the N x N matrices of a batch of `num` instances (bottom[0])
// fit a Caffe blob, whose count is an int: N <= 46340. Past it Caffe's own
// Reshape would abort with a message that names no layer.
template <typename Dtype>
void check_pair_count(const std::string& layer, const LayerParameter& p,
    const vector<Blob<Dtype>*>& bottom, const int num) {
  CHECK_LE(static_cast<int64_t>(num) * num, INT_MAX) << layer << ": "
      << describe_bottom(p, 0, bottom) << " has N = " << num
      << " instances; its N x N distance matrix would exceed the " << INT_MAX
      << " entries a Caffe blob holds (N <= 46340)";
}

// Sets a state blob's data (or diff) on the device that the current mode
// computes on, so that a GPU pass finds it there instead of copying it from
// the host. Call it when the blob is (re)shaped, not in every pass.
template <typename Dtype>
inline void fill_on_device(const Dtype value, Blob<Dtype>* blob,
    const bool diff = false) {
#ifndef CPU_ONLY
  if (Caffe::mode() == Caffe::GPU) {
    caffe_gpu_set(blob->count(), value,
        diff ? blob->mutable_gpu_diff() : blob->mutable_gpu_data());
    return;
  }
#endif
  caffe_set(blob->count(), value,
      diff ? blob->mutable_cpu_diff() : blob->mutable_cpu_data());
}

// Below tolerance * (|x_i|^2 + |x_j|^2) a squared distance taken from the Gram
// matrix is mostly rounding error (it cancels), so it is recomputed directly
// from the two instances. The rounding error of K_ii + K_jj - 2 K_ij grows
// like sqrt(D) machine epsilons of the norms (each Gram entry is a sum of D
// rounded products), so the threshold grows with it: 128 sqrt(D) epsilons
// (1024 at D <= 64) keeps the modelled error of a distance just above the
// threshold near 1/128 of it at every D, instead of 0.07% at D = 64 but
// 9-15% at D = 25,088 with a fixed threshold. Computed once per layer call.
template <typename Dtype> IRG_HOST_DEVICE inline Dtype machine_epsilon();
template <> IRG_HOST_DEVICE inline float machine_epsilon<float>() {
  return 1.1920929e-07f;
}
template <> IRG_HOST_DEVICE inline double machine_epsilon<double>() {
  return 2.220446049250313e-16;
}
template <typename Dtype>
inline Dtype gram_tolerance(const int dim) {
  return Dtype(128) * machine_epsilon<Dtype>()
      * std::sqrt(static_cast<Dtype>(std::max(dim, 64)));
}

// Eight independent partial sums: a single accumulator is a dependency chain
// the compiler may not reorder, so the loop would not vectorize.
template <typename Dtype>
IRG_HOST_DEVICE inline Dtype direct_squared_distance(const Dtype* a,
    const Dtype* b, const int dim) {
  Dtype acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int k = 0;
  for (; k + 8 <= dim; k += 8) {
    for (int u = 0; u < 8; ++u) {
      const Dtype diff = a[k + u] - b[k + u];
      acc[u] += diff * diff;
    }
  }
  Dtype q = 0;
  for (; k < dim; ++k) {
    const Dtype diff = a[k] - b[k];
    q += diff * diff;
  }
  return q + ((acc[0] + acc[1]) + (acc[2] + acc[3]))
      + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

// Distance of instances i != j from their Gram entries (`tolerance` from
// gram_tolerance(dim)); the caller sets the diagonal to exactly 0 itself.
template <typename Dtype>
IRG_HOST_DEVICE inline Dtype pair_distance(const Dtype gram_ii,
    const Dtype gram_jj, const Dtype gram_ij, const Dtype* x_i,
    const Dtype* x_j, const int dim, const Dtype tolerance,
    const bool squared) {
  const Dtype norms = gram_ii + gram_jj;
  Dtype q = norms - 2 * gram_ij;
  if (q <= tolerance * norms) {
    q = direct_squared_distance(x_i, x_j, dim);
  }
  return squared ? q : sqrt(q);
}

// The largest value below 1: 1 - epsilon / 2.
template <typename Dtype>
IRG_HOST_DEVICE inline Dtype below_one() {
  return Dtype(1) - machine_epsilon<Dtype>() / 2;
}

// a = d / m. For MAX the pairs that attain the maximum are decided on the
// distances, before dividing (d >= m: m is one of the d), and get exactly 1;
// every other entry stays below 1. So in_normalizer's a == 1 finds exactly the
// maxima even where the division is approximate (--use_fast_math,
// -ffast-math: d * (1 / m) need not give 1 for d == m, nor stay below 1 for
// d < m). A zero normalizer gives 0.
template <typename Dtype>
IRG_HOST_DEVICE inline Dtype normalized(const Dtype d, const Dtype m,
    const int mode) {
  if (!(m > 0)) return Dtype(0);
  if (mode != IRGParameter_Normalize_MAX) return d / m;
  if (d >= m) return Dtype(1);
  const Dtype a = d / m;
  return a < below_one<Dtype>() ? a : below_one<Dtype>();
}

// Whether an entry of the normalized output took part in the normalizer: for
// MAX the maxima (exactly 1, see normalized), for MEAN every off-diagonal
// entry.
template <typename Dtype>
IRG_HOST_DEVICE inline bool in_normalizer(const int mode, const Dtype a,
    const bool diagonal) {
  return mode == IRGParameter_Normalize_MAX ? a == Dtype(1)
      : mode == IRGParameter_Normalize_MEAN ? !diagonal : false;
}

// dL/dq for one distance, where q is the squared distance, given the upstream
// gradient g of the normalized output a = d / m and the normalizer terms.
// `dl_dm_share` is dL/dm * dm/dd for this entry (0 for RELEASED). The chain
// through d = sqrt(q) uses 1/(2d), and 0 at d = 0 (a subgradient of the norm).
template <typename Dtype>
IRG_HOST_DEVICE inline Dtype distance_grad(const Dtype g, const Dtype a,
    const Dtype m, const Dtype dl_dm_share, const bool squared) {
  if (!(m > 0)) return Dtype(0);
  // g * (1 / m), not g / m: the reciprocal is loop-invariant, so the CPU loops
  // hoist it and multiply instead of dividing N^2 times.
  const Dtype dl_dd = g * (Dtype(1) / m) + dl_dm_share;
  if (squared) return dl_dd;
  return a > 0 ? dl_dd / (2 * a * m) : Dtype(0);
}

// Normalizer of n non-negative distances d (MEAN divides the sum by
// mean_count, which excludes the map's diagonal); 1 for NONE. Sums run in
// double: a float accumulator over N^2 terms drifts by about N^2 epsilons.
template <typename Dtype>
inline Dtype host_normalizer(const int n, const Dtype* d, const int mode,
    const Dtype mean_count) {
  if (mode == IRGParameter_Normalize_NONE) return Dtype(1);
  if (mode == IRGParameter_Normalize_MAX) {
    Dtype m = 0;
    for (int k = 0; k < n; ++k) m = std::max(m, d[k]);
    return m;
  }
  double sum = 0;
  for (int k = 0; k < n; ++k) sum += d[k];
  return mean_count > 0 ? static_cast<Dtype>(sum / mean_count) : Dtype(0);
}

// Fills norm[kDLossDNorm] = dL/dm = -sum(g * a) / m and norm[kNormWeight] =
// dm/dd for the entries in the normalizer (ties of the max share it equally).
// The sum and the tie count run in double (exact counts past 2^24).
template <typename Dtype>
inline void host_normalizer_grad(const int n, const Dtype* g, const Dtype* a,
    const int mode, const Dtype mean_count, Dtype* norm) {
  double ga = 0, ties = 0;
  for (int k = 0; k < n; ++k) {
    ga += static_cast<double>(g[k]) * a[k];
    ties += a[k] == Dtype(1) ? 1. : 0.;
  }
  const double m = norm[kNormalizer];
  norm[kDLossDNorm] = m > 0 ? static_cast<Dtype>(-ga / m) : Dtype(0);
  const double count = mode == IRGParameter_Normalize_MAX ? ties : mean_count;
  norm[kNormWeight] = count > 0 ? static_cast<Dtype>(1. / count) : Dtype(0);
}

}  // namespace irg
}  // namespace caffe

#endif  // CAFFE_UTIL_IRG_MATH_HPP_
