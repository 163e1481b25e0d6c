#include <algorithm>
#include <string>
#include <vector>

#include "caffe/layers/batch_euclidean_map_layer.hpp"
#include "caffe/util/irg_math.hpp"
#include "caffe/util/math_functions.hpp"

namespace caffe {

template <typename Dtype>
std::string BatchEuclideanMapLayer<Dtype>::Describe() const {
  return irg::describe_layer(type(), this->layer_param_);
}

template <typename Dtype>
void BatchEuclideanMapLayer<Dtype>::LayerSetUp(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  irg_param_ = this->layer_param_.irg_param();
  norm_.Reshape(vector<int>(1, irg::kNumNormSlots));
  irg::fill_on_device(Dtype(1), &norm_);
}

template <typename Dtype>
void BatchEuclideanMapLayer<Dtype>::Reshape(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  CHECK_GE(bottom[0]->num_axes(), 1) << Describe() << ": "
      << irg::describe_bottom(this->layer_param_, 0, bottom)
      << " needs a first axis of instances (N x ...)";
  CHECK_NE(top[0], bottom[0]) << Describe() << " cannot run in place";
  num_ = bottom[0]->shape(0);
  dim_ = bottom[0]->count(1);
  irg::check_pair_count(Describe(), this->layer_param_, bottom, num_);
  vector<int> top_shape(4, 1);
  top_shape[0] = top_shape[1] = num_;
  top[0]->Reshape(top_shape);
  pairs_.Reshape(vector<int>(2, num_));
  if (ones_.count() != num_) {
    ones_.Reshape(vector<int>(1, num_));
    irg::fill_on_device(Dtype(1), &ones_);
  }
}

// Forward (CPU and GPU): K = X X^T (GEMM) into pairs_; distances from K (and
// directly where K cancels) into the top, upper triangle mirrored so the
// matrix is exactly symmetric; normalizer m; top /= m.
// The CPU loops walk the upper triangle in tiles: mirroring a row of a tile
// writes a column, and within a tile those columns stay in cache.
template <typename Dtype>
void BatchEuclideanMapLayer<Dtype>::Forward_cpu(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  const int n = num_, dim = dim_;
  const bool squared = irg_param_.squared();
  const Dtype* x = bottom[0]->cpu_data();
  Dtype* gram = pairs_.mutable_cpu_data();
  Dtype* a = top[0]->mutable_cpu_data();
  caffe_cpu_gemm<Dtype>(CblasNoTrans, CblasTrans, n, n, dim, Dtype(1), x, x,
      Dtype(0), gram);
  Dtype* sqnorm = ones_.mutable_cpu_diff();  // free until the backward
  const Dtype tolerance = irg::gram_tolerance<Dtype>(dim);
  for (int i = 0; i < n; ++i) sqnorm[i] = gram[i * n + i];
  for (int ib = 0; ib < n; ib += kTile) {
    for (int jb = ib; jb < n; jb += kTile) {
      for (int i = ib; i < std::min(ib + kTile, n); ++i) {
        for (int j = std::max(jb, i + 1); j < std::min(jb + kTile, n); ++j) {
          const Dtype d = irg::pair_distance(sqnorm[i], sqnorm[j],
              gram[i * n + j], x + i * dim, x + j * dim, dim, tolerance,
              squared);
          a[i * n + j] = a[j * n + i] = d;
        }
      }
    }
  }
  for (int i = 0; i < n; ++i) a[i * n + i] = 0;
  Dtype* norm = norm_.mutable_cpu_data();
  const int mode = irg_param_.normalize();
  norm[irg::kNormalizer] = irg::host_normalizer(n * n, a, mode, MeanCount());
  if (mode != IRGParameter_Normalize_NONE) {
    for (int k = 0; k < n * n; ++k) {
      a[k] = irg::normalized(a[k], norm[irg::kNormalizer], mode);
    }
  }
}

// Backward (CPU and GPU), G = top diff:
//   dL/dm terms (EXACT, MAX/MEAN only), then per pair the coefficient
//   H_ij = dL/dq_ij (q the squared distance), S = H + H^T (EXACT) or S = H
//   (RELEASED, the authors' one-sided sum);
//   dX = 2 (diag(S 1) - S) X, i.e. r = S 1 (GEMV), S_ii -= r_i,
//   dX = -2 S X (GEMM).
template <typename Dtype>
void BatchEuclideanMapLayer<Dtype>::Backward_cpu(
    const vector<Blob<Dtype>*>& top, const vector<bool>& propagate_down,
    const vector<Blob<Dtype>*>& bottom) {
  if (!propagate_down[0]) return;
  const int n = num_, mode = irg_param_.normalize();
  const bool exact = irg_param_.backward() == IRGParameter_Backward_EXACT;
  const bool squared = irg_param_.squared();
  const Dtype* g = top[0]->cpu_diff();
  const Dtype* a = top[0]->cpu_data();
  Dtype* norm = norm_.mutable_cpu_data();
  if (exact && mode != IRGParameter_Normalize_NONE) {
    irg::host_normalizer_grad(n * n, g, a, mode, MeanCount(), norm);
  }
  const Dtype m = norm[irg::kNormalizer];
  const Dtype share = irg::normalizer_share(norm, mode, exact);
  Dtype* s = pairs_.mutable_cpu_data();
  for (int ib = 0; ib < n; ib += kTile) {
    for (int jb = ib; jb < n; jb += kTile) {
      for (int i = ib; i < std::min(ib + kTile, n); ++i) {
        for (int j = std::max(jb, i + 1); j < std::min(jb + kTile, n); ++j) {
          const int ij = i * n + j, ji = j * n + i;
          const Dtype in_ij =
              irg::in_normalizer(mode, a[ij], false) ? share : Dtype(0);
          const Dtype in_ji =
              irg::in_normalizer(mode, a[ji], false) ? share : Dtype(0);
          const Dtype h_ij =
              irg::distance_grad(g[ij], a[ij], m, in_ij, squared);
          const Dtype h_ji =
              irg::distance_grad(g[ji], a[ji], m, in_ji, squared);
          s[ij] = exact ? h_ij + h_ji : h_ij;
          s[ji] = exact ? h_ij + h_ji : h_ji;
        }
      }
    }
  }
  for (int i = 0; i < n; ++i) s[i * n + i] = 0;
  Dtype* row_sum = ones_.mutable_cpu_diff();
  caffe_cpu_gemv<Dtype>(CblasNoTrans, n, n, Dtype(1), s, ones_.cpu_data(),
      Dtype(0), row_sum);
  for (int i = 0; i < n; ++i) s[i * n + i] -= row_sum[i];
  caffe_cpu_gemm<Dtype>(CblasNoTrans, CblasNoTrans, n, dim_, n, Dtype(-2), s,
      bottom[0]->cpu_data(), Dtype(0), bottom[0]->mutable_cpu_diff());
}

#ifdef CPU_ONLY
STUB_GPU(BatchEuclideanMapLayer);
#endif

INSTANTIATE_CLASS(BatchEuclideanMapLayer);
REGISTER_LAYER_CLASS(BatchEuclideanMap);

}  // namespace caffe
