#ifndef CAFFE_UTIL_RELATION_KERNELS_CUH_
#define CAFFE_UTIL_RELATION_KERNELS_CUH_

#include <stdint.h>

#include "caffe/util/irg_kernels.cuh"
#include "caffe/util/relation_math.hpp"

// The CUDA kernels that both REFILLED layers launch (TripletRelationLoss,
// LocalCenterKDLoss); their per-row math is in relation_math.hpp.

namespace caffe {
namespace relation {

// norm[i] = |x_i| for the n rows of x (n x dim), one thread per row.
template <typename Dtype>
__global__ void RowNormKernel(const int n, const int dim, const Dtype* x,
    Dtype* norm) {
  IRG_KERNEL_LOOP(i, n) {
    norm[i] = row_norm(x + i * dim, dim);
  }
}

// u = x with each row divided by its norm (0 for a zero row). In place
// (u == x) is allowed.
template <typename Dtype>
__global__ void ScaleRowsKernel(const int n, const int dim, const Dtype* x,
    const Dtype* norm, Dtype* u) {
  IRG_KERNEL_LOOP(index, static_cast<int64_t>(n) * dim) {
    u[index] = x[index] * inverse_or_zero(norm[index / dim]);
  }
}

}  // namespace relation
}  // namespace caffe

#endif  // CAFFE_UTIL_RELATION_KERNELS_CUH_
