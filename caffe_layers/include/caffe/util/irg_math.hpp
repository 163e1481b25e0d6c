#ifndef CAFFE_UTIL_IRG_MATH_HPP_
#define CAFFE_UTIL_IRG_MATH_HPP_

#include <algorithm>
#include <cmath>
#include <sstream>
#include <string>
#include <vector>

#include "caffe/blob.hpp"
#include "caffe/proto/caffe.pb.h"
#include "caffe/util/device_alternate.hpp"

// Per-element math of the IRG layers (BatchEuclideanMap, BatchEuclideanVector).
// Each function is used by the CPU loops and by the CUDA kernels alike, so the
// CPU tests cover the arithmetic the GPU runs; the GPU files add only launch
// code and reductions.
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

// " bottom[0] 'a' (shape) bottom[1] 'b' (shape)", or " none".
template <typename Dtype>
std::string describe_bottoms(const LayerParameter& p,
    const vector<Blob<Dtype>*>& bottom) {
  std::string out;
  for (int i = 0; i < static_cast<int>(bottom.size()); ++i) {
    out += " " + describe_bottom(p, i, bottom);
  }
  return out.empty() ? " none" : out;
}

// Below tolerance * (|x_i|^2 + |x_j|^2) a squared distance taken from the Gram
// matrix is mostly rounding error (it cancels), so it is recomputed directly
// from the two instances. 1024 machine epsilons: for float a distance whose
// square is 1e-4 of the norms still gets about three correct digits from Gram.
template <typename Dtype> IRG_HOST_DEVICE inline Dtype gram_tolerance();
template <> IRG_HOST_DEVICE inline float gram_tolerance<float>() {
  return 1024.f * 1.1920929e-07f;
}
template <> IRG_HOST_DEVICE inline double gram_tolerance<double>() {
  return 1024. * 2.220446049250313e-16;
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

// Distance of instances i != j from their Gram entries; the caller sets the
// diagonal to exactly 0 itself.
template <typename Dtype>
IRG_HOST_DEVICE inline Dtype pair_distance(const Dtype gram_ii,
    const Dtype gram_jj, const Dtype gram_ij, const Dtype* x_i,
    const Dtype* x_j, const int dim, const bool squared) {
  const Dtype norms = gram_ii + gram_jj;
  Dtype q = norms - 2 * gram_ij;
  if (q <= gram_tolerance<Dtype>() * norms) {
    q = direct_squared_distance(x_i, x_j, dim);
  }
  return squared ? q : sqrt(q);
}

template <typename Dtype>
IRG_HOST_DEVICE inline Dtype normalized(const Dtype d, const Dtype m) {
  return m > 0 ? d / m : Dtype(0);
}

// Whether an entry of the normalized output took part in the normalizer: for
// MAX the maxima (exactly 1 after division), for MEAN every off-diagonal entry.
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
// mean_count, which excludes the map's diagonal); 1 for NONE.
template <typename Dtype>
inline Dtype host_normalizer(const int n, const Dtype* d, const int mode,
    const Dtype mean_count) {
  if (mode == IRGParameter_Normalize_NONE) return Dtype(1);
  Dtype acc = 0;
  for (int k = 0; k < n; ++k) {
    acc = mode == IRGParameter_Normalize_MAX ? std::max(acc, d[k]) : acc + d[k];
  }
  if (mode == IRGParameter_Normalize_MAX) return acc;
  return mean_count > 0 ? acc / mean_count : Dtype(0);
}

// Fills norm[kDLossDNorm] = dL/dm = -sum(g * a) / m and norm[kNormWeight] =
// dm/dd for the entries in the normalizer (ties of the max share it equally).
template <typename Dtype>
inline void host_normalizer_grad(const int n, const Dtype* g, const Dtype* a,
    const int mode, const Dtype mean_count, Dtype* norm) {
  Dtype ga = 0, ties = 0;
  for (int k = 0; k < n; ++k) {
    ga += g[k] * a[k];
    ties += a[k] == Dtype(1) ? Dtype(1) : Dtype(0);
  }
  const Dtype m = norm[kNormalizer];
  norm[kDLossDNorm] = m > 0 ? -ga / m : Dtype(0);
  const Dtype count = mode == IRGParameter_Normalize_MAX ? ties : mean_count;
  norm[kNormWeight] = count > 0 ? Dtype(1) / count : Dtype(0);
}

#ifdef __CUDACC__
// The same two reductions in one block each, so that the normalizer and its
// gradient stay on the device: no copy to the host, no synchronization.
// Launch with <<<1, CAFFE_CUDA_NUM_THREADS>>> (a power of two).
template <typename Dtype>
__global__ void NormalizerKernel(const int n, const Dtype* d, const int mode,
    const Dtype mean_count, Dtype* norm) {
  __shared__ Dtype buf[CAFFE_CUDA_NUM_THREADS];
  const bool is_max = mode == IRGParameter_Normalize_MAX;
  Dtype acc = 0;
  for (int k = threadIdx.x; k < n; k += blockDim.x) {
    acc = is_max ? max(acc, d[k]) : acc + d[k];
  }
  buf[threadIdx.x] = acc;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) {
      buf[threadIdx.x] = is_max ? max(buf[threadIdx.x], buf[threadIdx.x + s])
          : buf[threadIdx.x] + buf[threadIdx.x + s];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    norm[kNormalizer] = is_max ? buf[0]
        : (mean_count > 0 ? buf[0] / mean_count : Dtype(0));
  }
}

template <typename Dtype>
__global__ void NormalizeKernel(const int n, const Dtype* norm, Dtype* a) {
  CUDA_KERNEL_LOOP(k, n) {
    a[k] = normalized(a[k], norm[kNormalizer]);
  }
}

template <typename Dtype>
__global__ void NormalizerGradKernel(const int n, const Dtype* g,
    const Dtype* a, const int mode, const Dtype mean_count, Dtype* norm) {
  __shared__ Dtype ga[CAFFE_CUDA_NUM_THREADS];
  __shared__ Dtype ties[CAFFE_CUDA_NUM_THREADS];
  Dtype acc_ga = 0, acc_ties = 0;
  for (int k = threadIdx.x; k < n; k += blockDim.x) {
    acc_ga += g[k] * a[k];
    acc_ties += a[k] == Dtype(1) ? Dtype(1) : Dtype(0);
  }
  ga[threadIdx.x] = acc_ga;
  ties[threadIdx.x] = acc_ties;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) {
      ga[threadIdx.x] += ga[threadIdx.x + s];
      ties[threadIdx.x] += ties[threadIdx.x + s];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    const Dtype m = norm[kNormalizer];
    norm[kDLossDNorm] = m > 0 ? -ga[0] / m : Dtype(0);
    const Dtype count =
        mode == IRGParameter_Normalize_MAX ? ties[0] : mean_count;
    norm[kNormWeight] = count > 0 ? Dtype(1) / count : Dtype(0);
  }
}
#endif  // __CUDACC__

}  // namespace irg
}  // namespace caffe

#endif  // CAFFE_UTIL_IRG_MATH_HPP_
