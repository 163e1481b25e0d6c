#include <stdint.h>

#include <vector>

#include "caffe/layers/batch_euclidean_map_layer.hpp"
#include "caffe/util/irg_kernels.cuh"
#include "caffe/util/irg_math.hpp"
#include "caffe/util/math_functions.hpp"

// The same algorithm as the CPU path (see batch_euclidean_map_layer.cpp), with
// a fixed number of launches whatever N is and nothing copied to the host:
//   Forward:  4 launches (1 cuBLAS GEMM, pair distances, normalizer reduction,
//             normalize); 2 with normalize: NONE.
//   Backward: 5 launches (normalizer-gradient reduction, pair coefficients,
//             cuBLAS GEMV, diagonal, cuBLAS GEMM); 4 with backward: RELEASED
//             or normalize: NONE.
// Indices into the N x N matrices are 64-bit (IRG_KERNEL_LOOP); Reshape
// refuses an N whose N x N does not fit a blob.

namespace caffe {

template <typename Dtype>
__global__ void PairDistanceKernel(const int n, const int dim,
    const Dtype* gram, const Dtype* x, const Dtype tolerance,
    const bool squared, Dtype* a) {
  IRG_KERNEL_LOOP(index, static_cast<int64_t>(n) * n) {
    const int64_t i = index / n, j = index % n;
    if (i == j) {
      a[index] = 0;
    } else if (i < j) {
      const Dtype d = irg::pair_distance(gram[i * n + i], gram[j * n + j],
          gram[index], x + i * dim, x + j * dim, dim, tolerance, squared);
      a[index] = d;
      a[j * n + i] = d;
    }
  }
}

template <typename Dtype>
__global__ void PairGradKernel(const int n, const Dtype* g, const Dtype* a,
    const Dtype* norm, const int mode, const bool exact, const bool squared,
    Dtype* s) {
  IRG_KERNEL_LOOP(index, static_cast<int64_t>(n) * n) {
    const int64_t i = index / n, j = index % n;
    const int64_t ji = j * n + i;
    const Dtype m = norm[irg::kNormalizer];
    const Dtype share = irg::normalizer_share(norm, mode, exact);
    const Dtype h_ij = irg::distance_grad(g[index], a[index], m,
        irg::in_normalizer(mode, a[index], false) ? share : Dtype(0), squared);
    const Dtype h_ji = exact ? irg::distance_grad(g[ji], a[ji], m,
        irg::in_normalizer(mode, a[ji], false) ? share : Dtype(0), squared)
        : Dtype(0);
    s[index] = i == j ? Dtype(0) : h_ij + h_ji;
  }
}

template <typename Dtype>
__global__ void SubtractDiagonalKernel(const int n, const Dtype* row_sum,
    Dtype* s) {
  IRG_KERNEL_LOOP(i, n) {
    s[i * n + i] -= row_sum[i];
  }
}

template <typename Dtype>
void BatchEuclideanMapLayer<Dtype>::Forward_gpu(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  const int n = num_, dim = dim_, mode = irg_param_.normalize();
  const int64_t n2 = static_cast<int64_t>(n) * n;
  const Dtype* x = bottom[0]->gpu_data();
  Dtype* gram = pairs_.mutable_gpu_data();
  Dtype* a = top[0]->mutable_gpu_data();
  caffe_gpu_gemm<Dtype>(CblasNoTrans, CblasTrans, n, n, dim, Dtype(1), x, x,
      Dtype(0), gram);
  // NOLINT_NEXT_LINE(whitespace/operators)
  PairDistanceKernel<Dtype><<<irg::grid_blocks(n2), CAFFE_CUDA_NUM_THREADS>>>(
      n, dim, gram, x, irg::gram_tolerance<Dtype>(dim), irg_param_.squared(),
      a);
  CUDA_POST_KERNEL_CHECK;
  if (mode != IRGParameter_Normalize_NONE) {
    Dtype* norm = norm_.mutable_gpu_data();
    // NOLINT_NEXT_LINE(whitespace/operators)
    irg::NormalizerKernel<Dtype><<<1, CAFFE_CUDA_NUM_THREADS>>>(
        n2, a, mode, MeanCount(), norm);
    CUDA_POST_KERNEL_CHECK;
    // NOLINT_NEXT_LINE(whitespace/operators)
    irg::NormalizeKernel<Dtype><<<irg::grid_blocks(n2),
        CAFFE_CUDA_NUM_THREADS>>>(n2, norm, mode, a);
    CUDA_POST_KERNEL_CHECK;
  }
}

template <typename Dtype>
void BatchEuclideanMapLayer<Dtype>::Backward_gpu(
    const vector<Blob<Dtype>*>& top, const vector<bool>& propagate_down,
    const vector<Blob<Dtype>*>& bottom) {
  if (!propagate_down[0]) return;
  const int n = num_, mode = irg_param_.normalize();
  const int64_t n2 = static_cast<int64_t>(n) * n;
  const bool exact = irg_param_.backward() == IRGParameter_Backward_EXACT;
  const Dtype* g = top[0]->gpu_diff();
  const Dtype* a = top[0]->gpu_data();
  Dtype* norm = norm_.mutable_gpu_data();
  if (exact && mode != IRGParameter_Normalize_NONE) {
    // NOLINT_NEXT_LINE(whitespace/operators)
    irg::NormalizerGradKernel<Dtype><<<1, CAFFE_CUDA_NUM_THREADS>>>(
        n2, g, a, mode, MeanCount(), norm);
    CUDA_POST_KERNEL_CHECK;
  }
  Dtype* s = pairs_.mutable_gpu_data();
  // NOLINT_NEXT_LINE(whitespace/operators)
  PairGradKernel<Dtype><<<irg::grid_blocks(n2), CAFFE_CUDA_NUM_THREADS>>>(
      n, g, a, norm, mode, exact, irg_param_.squared(), s);
  CUDA_POST_KERNEL_CHECK;
  Dtype* row_sum = ones_.mutable_gpu_diff();
  caffe_gpu_gemv<Dtype>(CblasNoTrans, n, n, Dtype(1), s, ones_.gpu_data(),
      Dtype(0), row_sum);
  // NOLINT_NEXT_LINE(whitespace/operators)
  SubtractDiagonalKernel<Dtype><<<irg::grid_blocks(n),
      CAFFE_CUDA_NUM_THREADS>>>(n, row_sum, s);
  CUDA_POST_KERNEL_CHECK;
  caffe_gpu_gemm<Dtype>(CblasNoTrans, CblasNoTrans, n, dim_, n, Dtype(-2), s,
      bottom[0]->gpu_data(), Dtype(0), bottom[0]->mutable_gpu_diff());
}

INSTANTIATE_LAYER_GPU_FUNCS(BatchEuclideanMapLayer);

}  // namespace caffe
