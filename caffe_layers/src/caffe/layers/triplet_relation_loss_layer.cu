#include <vector>

#include "caffe/layers/triplet_relation_loss_layer.hpp"
#include "caffe/util/irg_kernels.cuh"
#include "caffe/util/irg_math.hpp"
#include "caffe/util/math_functions.hpp"
#include "caffe/util/relation_kernels.cuh"
#include "caffe/util/relation_math.hpp"

// The same algorithm as the CPU path (see triplet_relation_loss_layer.cpp).
// On the device: the normalization, both Gram matrices and distance matrices,
// and the whole backward (pair coefficients, GEMV, GEMM, the normalization's
// chain rule). On the host: the mining, and with it the per-triplet (or
// per-tuple) KL terms and their coefficients dL/dd, which MineAndScore
// computes exactly as the CPU path does. The mining is a sequential scan that
// builds a variable-length triplet list; keeping it, and the KL terms that
// read it, on the host means the only traffic is O(N^2): the two N x N
// distance matrices down, the N x N coefficient matrix up (and the N labels).
// Uploading the triplet list instead could be O(N^3).

namespace caffe {

template <typename Dtype>
__global__ void TripletRelationDistanceKernel(const int n, const int dim,
    const Dtype* gram, const Dtype* u, const Dtype tolerance, Dtype* dist) {
  IRG_KERNEL_LOOP(index, static_cast<int64_t>(n) * n) {
    const int i = index / n, j = index % n;
    if (i == j) {
      dist[index] = 0;
    } else if (i < j) {
      const Dtype d = irg::pair_distance(gram[static_cast<int64_t>(i) * n + i],
          gram[static_cast<int64_t>(j) * n + j], gram[index],
          u + static_cast<int64_t>(i) * dim, u + static_cast<int64_t>(j) * dim,
          dim, tolerance, false);
      dist[index] = d;
      dist[static_cast<int64_t>(j) * n + i] = d;
    }
  }
}

template <typename Dtype>
__global__ void TripletRelationCoefKernel(const int n, const Dtype w,
    const Dtype* h, const Dtype* dist, Dtype* s) {
  IRG_KERNEL_LOOP(index, static_cast<int64_t>(n) * n) {
    const int i = index / n, j = index % n;
    const Dtype d = dist[index];
    s[index] = i != j && d > 0
        ? w * (h[index] + h[static_cast<int64_t>(j) * n + i]) / d : Dtype(0);
  }
}

template <typename Dtype>
__global__ void TripletRelationDiagonalKernel(const int n,
    const Dtype* row_sum, Dtype* s) {
  IRG_KERNEL_LOOP(i, n) {
    s[static_cast<int64_t>(i) * n + i] = -row_sum[i];
  }
}

template <typename Dtype>
__global__ void TripletRelationRowDotKernel(const int n, const int dim,
    const Dtype* u, const Dtype* du, Dtype* dot) {
  IRG_KERNEL_LOOP(i, n) {
    const int64_t row = static_cast<int64_t>(i) * dim;
    Dtype acc = 0;
    for (int k = 0; k < dim; ++k) acc += u[row + k] * du[row + k];
    dot[i] = acc;
  }
}

template <typename Dtype>
__global__ void TripletRelationProjectKernel(const int n, const int dim,
    const Dtype* u, const Dtype* du, const Dtype* dot, const Dtype* norm,
    Dtype* dx) {
  IRG_KERNEL_LOOP(index, static_cast<int64_t>(n) * dim) {
    const int i = index / dim;
    dx[index] = (du[index] - dot[i] * u[index])
        * relation::inverse_or_zero(norm[i]);
  }
}

// Normalized rows of x into u (norms into norm), then their distances.
template <typename Dtype>
static void normalize_and_distances_gpu(const int n, const int dim,
    const Dtype* x, Dtype* u, Dtype* norm, Dtype* gram, Dtype* dist) {
  // NOLINT_NEXT_LINE(whitespace/operators)
  relation::RowNormKernel<Dtype><<<irg::grid_blocks(n),
      CAFFE_CUDA_NUM_THREADS>>>(n, dim, x, norm);
  CUDA_POST_KERNEL_CHECK;
  // NOLINT_NEXT_LINE(whitespace/operators)
  relation::ScaleRowsKernel<Dtype><<<irg::grid_blocks(n, dim),
      CAFFE_CUDA_NUM_THREADS>>>(n, dim, x, norm, u);
  CUDA_POST_KERNEL_CHECK;
  caffe_gpu_gemm<Dtype>(CblasNoTrans, CblasTrans, n, n, dim, Dtype(1), u, u,
      Dtype(0), gram);
  // NOLINT_NEXT_LINE(whitespace/operators)
  TripletRelationDistanceKernel<Dtype><<<irg::grid_blocks(n, n),
      CAFFE_CUDA_NUM_THREADS>>>(n, dim, gram, u,
      irg::gram_tolerance<Dtype>(dim), dist);
  CUDA_POST_KERNEL_CHECK;
}

template <typename Dtype>
void TripletRelationLossLayer<Dtype>::Forward_gpu(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  vector<int> labels;
  relation::read_labels(Describe(), this->layer_param_, 2, bottom, -1,
      &labels);
  normalize_and_distances_gpu(num_, dim_s_, bottom[0]->gpu_data(),
      unit_s_.mutable_gpu_data(), norm_s_.mutable_gpu_data(),
      gram_.mutable_gpu_data(), dist_s_.mutable_gpu_data());
  normalize_and_distances_gpu(num_, dim_t_, bottom[1]->gpu_data(),
      unit_t_.mutable_gpu_data(), norm_t_.mutable_gpu_data(),
      gram_.mutable_gpu_data(), dist_t_.mutable_gpu_data());
  // The mining on the host (see the top of this file): O(N^2) down.
  top[0]->mutable_cpu_data()[0] =
      MineAndScore(dist_s_.cpu_data(), dist_t_.cpu_data(), labels);
}

template <typename Dtype>
void TripletRelationLossLayer<Dtype>::Backward_gpu(
    const vector<Blob<Dtype>*>& top, const vector<bool>& propagate_down,
    const vector<Blob<Dtype>*>& bottom) {
  relation::check_student_only(
      Describe(), this->layer_param_, propagate_down, bottom);
  if (!propagate_down[0]) return;
  const int n = num_, dim = dim_s_;
  const Dtype w = top[0]->cpu_diff()[0];
  Dtype* s = coef_.mutable_gpu_diff();
  // coef_.gpu_data(): the host's dL/dd, O(N^2) up.
  // NOLINT_NEXT_LINE(whitespace/operators)
  TripletRelationCoefKernel<Dtype><<<irg::grid_blocks(n, n),
      CAFFE_CUDA_NUM_THREADS>>>(n, w, coef_.gpu_data(), dist_s_.gpu_data(), s);
  CUDA_POST_KERNEL_CHECK;
  Dtype* row_sum = ones_.mutable_gpu_diff();
  caffe_gpu_gemv<Dtype>(CblasNoTrans, n, n, Dtype(1), s, ones_.gpu_data(),
      Dtype(0), row_sum);
  // NOLINT_NEXT_LINE(whitespace/operators)
  TripletRelationDiagonalKernel<Dtype><<<irg::grid_blocks(n),
      CAFFE_CUDA_NUM_THREADS>>>(n, row_sum, s);
  CUDA_POST_KERNEL_CHECK;
  const Dtype* u = unit_s_.gpu_data();
  Dtype* du = unit_s_.mutable_gpu_diff();
  caffe_gpu_gemm<Dtype>(CblasNoTrans, CblasNoTrans, n, dim, n, Dtype(-1), s,
      u, Dtype(0), du);
  Dtype* dot = norm_s_.mutable_gpu_diff();
  // NOLINT_NEXT_LINE(whitespace/operators)
  TripletRelationRowDotKernel<Dtype><<<irg::grid_blocks(n),
      CAFFE_CUDA_NUM_THREADS>>>(n, dim, u, du, dot);
  CUDA_POST_KERNEL_CHECK;
  // NOLINT_NEXT_LINE(whitespace/operators)
  TripletRelationProjectKernel<Dtype><<<irg::grid_blocks(n, dim),
      CAFFE_CUDA_NUM_THREADS>>>(n, dim, u, du, dot, norm_s_.gpu_data(),
      bottom[0]->mutable_gpu_diff());
  CUDA_POST_KERNEL_CHECK;
}

INSTANTIATE_LAYER_GPU_FUNCS(TripletRelationLossLayer);

}  // namespace caffe
