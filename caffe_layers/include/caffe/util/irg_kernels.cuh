#ifndef CAFFE_UTIL_IRG_KERNELS_CUH_
#define CAFFE_UTIL_IRG_KERNELS_CUH_

#include <stdint.h>

#include <algorithm>

#include "caffe/util/device_alternate.hpp"
#include "caffe/util/irg_math.hpp"

// The CUDA pieces that the IRG and REFILLED layers share: a grid-stride loop
// with 64-bit indices, its grid size, and the normalizer reductions. The
// per-element math they call is in irg_math.hpp, where the CPU loops use it
// too.

// CUDA_KERNEL_LOOP with a 64-bit index. Caffe's macro counts in int, and
// `i += blockDim.x * gridDim.x` passes INT_MAX once a loop covers more than
// about 2^30 entries: an N x N loop for N > 32768.
#define IRG_KERNEL_LOOP(i, n) \
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) \
           + threadIdx.x; \
       i < static_cast<int64_t>(n); \
       i += static_cast<int64_t>(blockDim.x) * gridDim.x)

namespace caffe {
namespace irg {

// Blocks of CAFFE_CUDA_NUM_THREADS for an IRG_KERNEL_LOOP over `count`
// entries, counted in 64 bits (CAFFE_GET_BLOCKS(n * n) overflows int before
// the loop does). Capped: past the cap each thread takes several entries.
inline int grid_blocks(const int64_t count) {
  const int64_t kMaxBlocks = 1 << 20;
  const int64_t blocks =
      (count + CAFFE_CUDA_NUM_THREADS - 1) / CAFFE_CUDA_NUM_THREADS;
  return static_cast<int>(std::max<int64_t>(1, std::min(blocks, kMaxBlocks)));
}

// The same for a loop over rows x cols entries.
inline int grid_blocks(const int64_t rows, const int64_t cols) {
  return grid_blocks(rows * cols);
}

// The normalizer m of n distances (irg::host_normalizer) and its gradient
// terms (irg::host_normalizer_grad), each reduced in one block, so that they
// stay on the device: no copy to the host, no synchronization. Sums and tie
// counts accumulate in double, as on the host. Launch with
// <<<1, CAFFE_CUDA_NUM_THREADS>>> (a power of two).
template <typename Dtype>
__global__ void NormalizerKernel(const int64_t n, const Dtype* d,
    const int mode, const Dtype mean_count, Dtype* norm) {
  __shared__ double buf[CAFFE_CUDA_NUM_THREADS];
  const bool is_max = mode == IRGParameter_Normalize_MAX;
  double acc = 0;
  for (int64_t k = threadIdx.x; k < n; k += blockDim.x) {
    acc = is_max ? max(acc, static_cast<double>(d[k])) : acc + d[k];
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
    // For MAX buf[0] is one of the d exactly (a double holds any Dtype).
    norm[kNormalizer] = static_cast<Dtype>(is_max ? buf[0]
        : (mean_count > 0 ? buf[0] / mean_count : 0.));
  }
}

// a = normalized(a, m) in place, m read from the device.
template <typename Dtype>
__global__ void NormalizeKernel(const int64_t n, const Dtype* norm,
    const int mode, Dtype* a) {
  IRG_KERNEL_LOOP(k, n) {
    a[k] = normalized(a[k], norm[kNormalizer], mode);
  }
}

template <typename Dtype>
__global__ void NormalizerGradKernel(const int64_t n, const Dtype* g,
    const Dtype* a, const int mode, const Dtype mean_count, Dtype* norm) {
  __shared__ double ga[CAFFE_CUDA_NUM_THREADS];
  __shared__ double ties[CAFFE_CUDA_NUM_THREADS];
  double acc_ga = 0, acc_ties = 0;
  for (int64_t k = threadIdx.x; k < n; k += blockDim.x) {
    acc_ga += static_cast<double>(g[k]) * a[k];
    acc_ties += a[k] == Dtype(1) ? 1. : 0.;
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
    const double m = norm[kNormalizer];
    norm[kDLossDNorm] = m > 0 ? static_cast<Dtype>(-ga[0] / m) : Dtype(0);
    const double count =
        mode == IRGParameter_Normalize_MAX ? ties[0] : mean_count;
    norm[kNormWeight] = count > 0 ? static_cast<Dtype>(1. / count) : Dtype(0);
  }
}

}  // namespace irg
}  // namespace caffe

#endif  // CAFFE_UTIL_IRG_KERNELS_CUH_
