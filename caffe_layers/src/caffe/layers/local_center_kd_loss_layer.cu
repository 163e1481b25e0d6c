#include <vector>

#include "caffe/layers/local_center_kd_loss_layer.hpp"
#include "caffe/util/math_functions.hpp"
#include "caffe/util/relation_kernels.cuh"
#include "caffe/util/relation_math.hpp"

// The same algorithm as the CPU path (see local_center_kd_loss_layer.cpp),
// all the arithmetic on the device. The host reads the N labels (to check
// them and to list the present classes, an O(N + K) scan), uploads the M
// class indices, and in GLOBAL mode reads back the M center norms to refuse
// unfilled centers; the loss is one dot product of the N per-row KL terms.

namespace caffe {

template <typename Dtype>
__global__ void LocalCenterKDGatherKernel(const int m, const int dim,
    const int* present, const Dtype* blob, Dtype* centers) {
  IRG_KERNEL_LOOP(index, static_cast<int64_t>(m) * dim) {
    const int j = index / dim, k = index % dim;
    centers[index] = blob[static_cast<int64_t>(present[j]) * dim + k];
  }
}

// The mean teacher embedding of each present class; every present class has
// at least one instance, so the count is never 0.
template <typename Dtype>
__global__ void LocalCenterKDClassMeanKernel(const int n, const int m,
    const int dim, const int* present, const Dtype* label, const Dtype* f,
    Dtype* centers) {
  IRG_KERNEL_LOOP(index, static_cast<int64_t>(m) * dim) {
    const int j = index / dim, k = index % dim;
    const int c = present[j];
    Dtype sum = 0;
    int count = 0;
    for (int i = 0; i < n; ++i) {
      if (static_cast<int>(label[i]) == c) {
        sum += f[static_cast<int64_t>(i) * dim + k];
        ++count;
      }
    }
    centers[index] = count > 0 ? sum / count : Dtype(0);
  }
}

template <typename Dtype>
__global__ void LocalCenterKDRowKLKernel(const int n, const int m,
    const int k, const Dtype* logits_t, const Dtype* logits_s,
    const int* present, const Dtype inv_tau, Dtype* grad, Dtype* kl) {
  IRG_KERNEL_LOOP(i, n) {
    kl[i] = relation::softmax_kl(m, logits_t + static_cast<int64_t>(i) * m,
        logits_s + static_cast<int64_t>(i) * k, present, inv_tau,
        grad + static_cast<int64_t>(i) * m);
  }
}

template <typename Dtype>
__global__ void LocalCenterKDScatterKernel(const int n, const int m,
    const int k, const int* present, const Dtype coeff, const Dtype* grad,
    Dtype* dz) {
  IRG_KERNEL_LOOP(index, static_cast<int64_t>(n) * m) {
    const int i = index / m, j = index % m;
    dz[static_cast<int64_t>(i) * k + present[j]] = coeff * grad[index];
  }
}

template <typename Dtype>
void LocalCenterKDLossLayer<Dtype>::Forward_gpu(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  vector<int> labels;
  FindPresentClasses(bottom, &labels);
  const int n = num_, k = classes_, dim = dim_, m = num_present_;
  const int* present = present_.gpu_data();  // M class indices up
  const Dtype* f = bottom[1]->gpu_data();
  Dtype* centers = centers_.mutable_gpu_data();
  Dtype* norm = center_norm_.mutable_gpu_data();
  const bool global =
      relation_param_.centers() == RelationParameter_Centers_GLOBAL;
  if (global) {
    // NOLINT_NEXT_LINE(whitespace/operators)
    LocalCenterKDGatherKernel<Dtype><<<irg::grid_blocks(m, dim),
        CAFFE_CUDA_NUM_THREADS>>>(m, dim, present,
        this->blobs_[0]->gpu_data(), centers);
    CUDA_POST_KERNEL_CHECK;
  } else {
    // NOLINT_NEXT_LINE(whitespace/operators)
    LocalCenterKDClassMeanKernel<Dtype><<<irg::grid_blocks(m, dim),
        CAFFE_CUDA_NUM_THREADS>>>(n, m, dim, present, bottom[2]->gpu_data(),
        f, centers);
    CUDA_POST_KERNEL_CHECK;
  }
  // NOLINT_NEXT_LINE(whitespace/operators)
  relation::RowNormKernel<Dtype><<<irg::grid_blocks(m),
      CAFFE_CUDA_NUM_THREADS>>>(m, dim, centers, norm);
  CUDA_POST_KERNEL_CHECK;
  // NOLINT_NEXT_LINE(whitespace/operators)
  relation::ScaleRowsKernel<Dtype><<<irg::grid_blocks(m, dim),
      CAFFE_CUDA_NUM_THREADS>>>(m, dim, centers, norm, centers);
  CUDA_POST_KERNEL_CHECK;
  if (global) CheckCentersFilled(center_norm_.cpu_data());  // M norms down
  Dtype* logits_t = logits_t_.mutable_gpu_data();
  caffe_gpu_gemm<Dtype>(CblasNoTrans, CblasTrans, n, m, dim, Dtype(1), f,
      centers_.gpu_data(), Dtype(0), logits_t);
  // NOLINT_NEXT_LINE(whitespace/operators)
  LocalCenterKDRowKLKernel<Dtype><<<irg::grid_blocks(n),
      CAFFE_CUDA_NUM_THREADS>>>(n, m, k, logits_t, bottom[0]->gpu_data(),
      present, Dtype(1) / relation_param_.tau2(),
      logits_t_.mutable_gpu_diff(), kl_.mutable_gpu_data());
  CUDA_POST_KERNEL_CHECK;
  Dtype sum;
  caffe_gpu_dot(n, kl_.gpu_data(), kl_.gpu_diff(), &sum);
  top[0]->mutable_cpu_data()[0] =
      sum * relation_param_.teaching_weight() / n;
}

template <typename Dtype>
void LocalCenterKDLossLayer<Dtype>::Backward_gpu(
    const vector<Blob<Dtype>*>& top, const vector<bool>& propagate_down,
    const vector<Blob<Dtype>*>& bottom) {
  relation::check_student_only(
      Describe(), this->layer_param_, propagate_down, bottom);
  if (!propagate_down[0]) return;
  const int n = num_, k = classes_, m = num_present_;
  const Dtype coeff = top[0]->cpu_diff()[0] * relation_param_.teaching_weight()
      / (n * relation_param_.tau2());
  Dtype* dz = bottom[0]->mutable_gpu_diff();
  caffe_gpu_set(bottom[0]->count(), Dtype(0), dz);
  // NOLINT_NEXT_LINE(whitespace/operators)
  LocalCenterKDScatterKernel<Dtype><<<irg::grid_blocks(n, m),
      CAFFE_CUDA_NUM_THREADS>>>(n, m, k, present_.gpu_data(), coeff,
      logits_t_.gpu_diff(), dz);
  CUDA_POST_KERNEL_CHECK;
}

INSTANTIATE_LAYER_GPU_FUNCS(LocalCenterKDLossLayer);

}  // namespace caffe
