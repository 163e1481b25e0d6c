#include <string>
#include <vector>

#include "caffe/layers/triplet_relation_loss_layer.hpp"
#include "caffe/util/irg_math.hpp"
#include "caffe/util/math_functions.hpp"
#include "caffe/util/relation_math.hpp"

namespace caffe {

template <typename Dtype>
std::string TripletRelationLossLayer<Dtype>::Describe() const {
  return irg::describe_layer(type(), this->layer_param_);
}

template <typename Dtype>
void TripletRelationLossLayer<Dtype>::LayerSetUp(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  LossLayer<Dtype>::LayerSetUp(bottom, top);
  relation_param_ = this->layer_param_.relation_param();
  CHECK_GE(relation_param_.margin(), 0) << Describe()
      << ": relation_param.margin is " << relation_param_.margin()
      << "; it must be >= 0";
  CHECK_GT(relation_param_.tau1(), 0) << Describe()
      << ": relation_param.tau1 is " << relation_param_.tau1()
      << "; it must be > 0";
  num_triplets_ = num_tuples_ = 0;
}

template <typename Dtype>
void TripletRelationLossLayer<Dtype>::Reshape(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  const LayerParameter& p = this->layer_param_;
  num_ = relation::check_instances(Describe(), p, bottom);
  irg::check_pair_count(Describe(), p, bottom, num_);
  dim_s_ = bottom[0]->count(1);
  dim_t_ = bottom[1]->count(1);
  top[0]->Reshape(vector<int>());  // a scalar, as LossLayer's
  unit_s_.ReshapeLike(*bottom[0]);
  unit_t_.ReshapeLike(*bottom[1]);
  norm_s_.Reshape(vector<int>(1, num_));
  norm_t_.Reshape(vector<int>(1, num_));
  const vector<int> square(2, num_);
  gram_.Reshape(square);
  dist_s_.Reshape(square);
  dist_t_.Reshape(square);
  coef_.Reshape(square);
  if (ones_.count() != num_) {
    ones_.Reshape(vector<int>(1, num_));
    irg::fill_on_device(Dtype(1), &ones_);
  }
}

namespace {

// Rows of x (n x dim) scaled to unit norm into u; their norms into norm. A
// zero row stays 0.
template <typename Dtype>
void normalize_rows_cpu(const int n, const int dim, const Dtype* x,
    Dtype* u, Dtype* norm) {
  for (int i = 0; i < n; ++i) {
    const Dtype* xi = x + static_cast<int64_t>(i) * dim;
    Dtype* ui = u + static_cast<int64_t>(i) * dim;
    norm[i] = relation::row_norm(xi, dim);
    const Dtype inv = relation::inverse_or_zero(norm[i]);
    for (int k = 0; k < dim; ++k) ui[k] = xi[k] * inv;
  }
}

// Euclidean distances between the rows of u (n x dim) into dist (n x n),
// exactly symmetric with a zero diagonal; gram is scratch.
template <typename Dtype>
void distances_cpu(const int n, const int dim, const Dtype* u, Dtype* gram,
    Dtype* dist) {
  caffe_cpu_gemm<Dtype>(CblasNoTrans, CblasTrans, n, n, dim, Dtype(1), u, u,
      Dtype(0), gram);
  const Dtype tolerance = irg::gram_tolerance<Dtype>(dim);
  for (int i = 0; i < n; ++i) {
    dist[i * n + i] = 0;
    for (int j = i + 1; j < n; ++j) {
      const Dtype d = irg::pair_distance(gram[i * n + i], gram[j * n + j],
          gram[i * n + j], u + static_cast<int64_t>(i) * dim,
          u + static_cast<int64_t>(j) * dim, dim, tolerance, false);
      dist[i * n + j] = dist[j * n + i] = d;
    }
  }
}

}  // namespace

template <typename Dtype>
Dtype TripletRelationLossLayer<Dtype>::MineAndScore(const Dtype* ds,
    const Dtype* dt, const vector<int>& labels) {
  const int n = num_;
  const Dtype margin = relation_param_.margin();
  const Dtype inv_tau = Dtype(1) / relation_param_.tau1();
  const bool tuple = relation_param_.mode() == RelationParameter_Mode_TUPLE;
  Dtype* h = coef_.mutable_cpu_data();
  caffe_set(n * n, Dtype(0), h);
  num_triplets_ = num_tuples_ = 0;
  Dtype loss = 0;
  vector<int> negatives;
  vector<Dtype> logit_t, logit_s, grad;
  for (int a = 0; a < n; ++a) {
    const Dtype* ds_a = ds + a * n;
    const Dtype* dt_a = dt + a * n;
    for (int p = 0; p < n; ++p) {
      if (p == a || labels[p] != labels[a]) continue;
      negatives.clear();
      for (int k = 0; k < n; ++k) {
        if (labels[k] == labels[a]) continue;
        const Dtype gap = ds_a[k] - ds_a[p];
        if (gap > 0 && gap <= margin) negatives.push_back(k);
      }
      if (negatives.empty()) continue;
      const int count = negatives.size();
      num_triplets_ += count;
      ++num_tuples_;
      if (!tuple) {
        // Two-way softmax over [x, 0] is Bern(sigmoid(x)); x = d_an - d_ap.
        for (int j = 0; j < count; ++j) {
          const int k = negatives[j];
          const Dtype t[2] = {dt_a[k] - dt_a[p], 0};
          const Dtype s[2] = {ds_a[k] - ds_a[p], 0};
          Dtype g[2];
          loss += relation::softmax_kl(2, t, s,
              static_cast<const int*>(NULL), inv_tau, g);
          h[a * n + k] += g[0] * inv_tau;
          h[a * n + p] -= g[0] * inv_tau;
        }
      } else {
        logit_t.resize(count + 1);
        logit_s.resize(count + 1);
        grad.resize(count + 1);
        logit_t[0] = -dt_a[p];
        logit_s[0] = -ds_a[p];
        for (int j = 0; j < count; ++j) {
          logit_t[j + 1] = -dt_a[negatives[j]];
          logit_s[j + 1] = -ds_a[negatives[j]];
        }
        loss += relation::softmax_kl(count + 1, &logit_t[0], &logit_s[0],
            static_cast<const int*>(NULL), inv_tau, &grad[0]);
        h[a * n + p] -= grad[0] * inv_tau;
        for (int j = 0; j < count; ++j) {
          h[a * n + negatives[j]] -= grad[j + 1] * inv_tau;
        }
      }
    }
  }
  const int64_t terms = tuple ? num_tuples_ : 2 * num_triplets_;
  if (terms == 0) return Dtype(0);
  const Dtype factor = relation_param_.scale() / terms;
  caffe_scal(n * n, factor, h);
  return loss * factor;
}

template <typename Dtype>
void TripletRelationLossLayer<Dtype>::Forward_cpu(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  vector<int> labels;
  relation::read_labels(Describe(), this->layer_param_, 2, bottom, -1,
      &labels);
  const int n = num_;
  normalize_rows_cpu(n, dim_s_, bottom[0]->cpu_data(),
      unit_s_.mutable_cpu_data(), norm_s_.mutable_cpu_data());
  normalize_rows_cpu(n, dim_t_, bottom[1]->cpu_data(),
      unit_t_.mutable_cpu_data(), norm_t_.mutable_cpu_data());
  distances_cpu(n, dim_s_, unit_s_.cpu_data(), gram_.mutable_cpu_data(),
      dist_s_.mutable_cpu_data());
  distances_cpu(n, dim_t_, unit_t_.cpu_data(), gram_.mutable_cpu_data(),
      dist_t_.mutable_cpu_data());
  top[0]->mutable_cpu_data()[0] =
      MineAndScore(dist_s_.cpu_data(), dist_t_.cpu_data(), labels);
}

// Backward (CPU and GPU), w = top diff, H = coef_ data (dL/dd_S, unit w):
//   S_ij = w (H_ij + H_ji) / d_ij for i != j (0 where d_ij = 0), S_ii = 0;
//   r = S 1 (GEMV), S_ii = -r_i, dL/dU = -S U (GEMM), which is
//   sum_j S_ij (u_i - u_j); then through the normalization,
//   dL/dx_i = (g_i - u_i <u_i, g_i>) / |x_i| (0 for a zero row).
template <typename Dtype>
void TripletRelationLossLayer<Dtype>::Backward_cpu(
    const vector<Blob<Dtype>*>& top, const vector<bool>& propagate_down,
    const vector<Blob<Dtype>*>& bottom) {
  relation::check_student_only(
      Describe(), this->layer_param_, propagate_down, bottom);
  if (!propagate_down[0]) return;
  const int n = num_, dim = dim_s_;
  const Dtype w = top[0]->cpu_diff()[0];
  const Dtype* h = coef_.cpu_data();
  const Dtype* d = dist_s_.cpu_data();
  Dtype* s = coef_.mutable_cpu_diff();
  for (int i = 0; i < n; ++i) {
    s[i * n + i] = 0;
    for (int j = i + 1; j < n; ++j) {
      const Dtype c = d[i * n + j] > 0
          ? w * (h[i * n + j] + h[j * n + i]) / d[i * n + j] : Dtype(0);
      s[i * n + j] = s[j * n + i] = c;
    }
  }
  Dtype* row_sum = ones_.mutable_cpu_diff();
  caffe_cpu_gemv<Dtype>(CblasNoTrans, n, n, Dtype(1), s, ones_.cpu_data(),
      Dtype(0), row_sum);
  for (int i = 0; i < n; ++i) s[i * n + i] = -row_sum[i];
  const Dtype* u = unit_s_.cpu_data();
  Dtype* du = unit_s_.mutable_cpu_diff();
  caffe_cpu_gemm<Dtype>(CblasNoTrans, CblasNoTrans, n, dim, n, Dtype(-1), s,
      u, Dtype(0), du);
  const Dtype* norm = norm_s_.cpu_data();
  Dtype* dx = bottom[0]->mutable_cpu_diff();
  for (int i = 0; i < n; ++i) {
    const int64_t row = static_cast<int64_t>(i) * dim;
    const Dtype inv = relation::inverse_or_zero(norm[i]);
    const Dtype dot = caffe_cpu_dot(dim, u + row, du + row);
    for (int k = 0; k < dim; ++k) {
      dx[row + k] = (du[row + k] - dot * u[row + k]) * inv;
    }
  }
}

#ifdef CPU_ONLY
STUB_GPU(TripletRelationLossLayer);
#endif

INSTANTIATE_CLASS(TripletRelationLossLayer);
REGISTER_LAYER_CLASS(TripletRelationLoss);

}  // namespace caffe
