#include <stdint.h>

#include <vector>

#include "caffe/layers/batch_euclidean_vector_layer.hpp"
#include "caffe/util/irg_kernels.cuh"
#include "caffe/util/irg_math.hpp"
#include "caffe/util/math_functions.hpp"

// The same algorithm as the CPU path (see batch_euclidean_vector_layer.cpp),
// with a fixed number of launches whatever N is and nothing copied to the host:
//   Forward:  3 launches (per-instance distances, normalizer reduction,
//             normalize); 1 with normalize: NONE.
//   Backward: 2 launches (normalizer-gradient reduction, bottom gradients);
//             1 with backward: RELEASED or normalize: NONE.

namespace caffe {

// One block per instance: a tree reduction of (x_i - y_i)^2 over its D values.
template <typename Dtype>
__global__ void RowDistanceKernel(const int dim, const Dtype* x,
    const Dtype* y, const bool squared, Dtype* t) {
  __shared__ Dtype buf[CAFFE_CUDA_NUM_THREADS];
  const int row = blockIdx.x;
  const Dtype* xi = x + static_cast<size_t>(row) * dim;
  const Dtype* yi = y + static_cast<size_t>(row) * dim;
  Dtype acc = 0;
  for (int k = threadIdx.x; k < dim; k += blockDim.x) {
    const Dtype diff = xi[k] - yi[k];
    acc += diff * diff;
  }
  buf[threadIdx.x] = acc;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) buf[threadIdx.x] += buf[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) t[row] = squared ? buf[0] : sqrt(buf[0]);
}

template <typename Dtype>
__global__ void VectorGradKernel(const int64_t count, const int dim,
    const Dtype* g, const Dtype* t, const Dtype* norm, const int mode,
    const bool exact, const bool squared, const Dtype* x, const Dtype* y,
    Dtype* dx, Dtype* dy) {
  IRG_KERNEL_LOOP(k, count) {
    const int64_t i = k / dim;
    const Dtype share = irg::normalizer_share(norm, mode, exact);
    const Dtype h = 2 * irg::distance_grad(g[i], t[i], norm[irg::kNormalizer],
        irg::in_normalizer(mode, t[i], false) ? share : Dtype(0), squared);
    const Dtype grad = h * (x[k] - y[k]);
    if (dx) dx[k] = grad;
    if (dy) dy[k] = -grad;
  }
}

template <typename Dtype>
void BatchEuclideanVectorLayer<Dtype>::Forward_gpu(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  const int mode = irg_param_.normalize();
  Dtype* t = top[0]->mutable_gpu_data();
  if (num_ > 0) {
    // NOLINT_NEXT_LINE(whitespace/operators)
    RowDistanceKernel<Dtype><<<num_, CAFFE_CUDA_NUM_THREADS>>>(dim_,
        bottom[0]->gpu_data(), bottom[1]->gpu_data(), irg_param_.squared(), t);
    CUDA_POST_KERNEL_CHECK;
  }
  if (mode != IRGParameter_Normalize_NONE) {
    Dtype* norm = norm_.mutable_gpu_data();
    // NOLINT_NEXT_LINE(whitespace/operators)
    irg::NormalizerKernel<Dtype><<<1, CAFFE_CUDA_NUM_THREADS>>>(
        num_, t, mode, Dtype(num_), norm);
    CUDA_POST_KERNEL_CHECK;
    // NOLINT_NEXT_LINE(whitespace/operators)
    irg::NormalizeKernel<Dtype><<<irg::grid_blocks(num_),
        CAFFE_CUDA_NUM_THREADS>>>(num_, norm, mode, t);
    CUDA_POST_KERNEL_CHECK;
  }
}

template <typename Dtype>
void BatchEuclideanVectorLayer<Dtype>::Backward_gpu(
    const vector<Blob<Dtype>*>& top, const vector<bool>& propagate_down,
    const vector<Blob<Dtype>*>& bottom) {
  if (!propagate_down[0] && !propagate_down[1]) return;
  const int mode = irg_param_.normalize();
  const bool exact = irg_param_.backward() == IRGParameter_Backward_EXACT;
  const Dtype* g = top[0]->gpu_diff();
  const Dtype* t = top[0]->gpu_data();
  Dtype* norm = norm_.mutable_gpu_data();
  if (exact && mode != IRGParameter_Normalize_NONE) {
    // NOLINT_NEXT_LINE(whitespace/operators)
    irg::NormalizerGradKernel<Dtype><<<1, CAFFE_CUDA_NUM_THREADS>>>(
        num_, g, t, mode, Dtype(num_), norm);
    CUDA_POST_KERNEL_CHECK;
  }
  const int64_t count = bottom[0]->count();
  // NOLINT_NEXT_LINE(whitespace/operators)
  VectorGradKernel<Dtype><<<irg::grid_blocks(count), CAFFE_CUDA_NUM_THREADS>>>(
      count, dim_, g, t, norm, mode, exact, irg_param_.squared(),
      bottom[0]->gpu_data(), bottom[1]->gpu_data(),
      propagate_down[0] ? bottom[0]->mutable_gpu_diff() : NULL,
      propagate_down[1] ? bottom[1]->mutable_gpu_diff() : NULL);
  CUDA_POST_KERNEL_CHECK;
}

INSTANTIATE_LAYER_GPU_FUNCS(BatchEuclideanVectorLayer);

}  // namespace caffe
