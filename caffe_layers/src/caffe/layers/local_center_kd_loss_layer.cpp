#include <sstream>
#include <string>
#include <vector>

#include "caffe/layers/local_center_kd_loss_layer.hpp"
#include "caffe/util/irg_math.hpp"
#include "caffe/util/math_functions.hpp"
#include "caffe/util/relation_math.hpp"

namespace caffe {

template <typename Dtype>
std::string LocalCenterKDLossLayer<Dtype>::Describe() const {
  return irg::describe_layer(type(), this->layer_param_);
}

template <typename Dtype>
void LocalCenterKDLossLayer<Dtype>::LayerSetUp(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  LossLayer<Dtype>::LayerSetUp(bottom, top);
  const LayerParameter& p = this->layer_param_;
  relation_param_ = p.relation_param();
  CHECK_GT(relation_param_.tau2(), 0) << Describe()
      << ": relation_param.tau2 is " << relation_param_.tau2()
      << "; it must be > 0";
  // Caffe's solver updates, and weight-decays, every parameter blob whose
  // ParamSpec does not say otherwise; the centers must stay as filled.
  const bool fixed = p.param_size() >= 1 && p.param(0).lr_mult() == 0
      && p.param(0).decay_mult() == 0;
  if (!fixed) {
    std::ostringstream spec;
    if (p.param_size() == 0) {
      spec << "has no param spec (the solver would use lr_mult 1,"
          << " decay_mult 1)";
    } else {
      spec << "gives lr_mult " << p.param(0).lr_mult() << " decay_mult "
          << p.param(0).decay_mult();
    }
    LOG(FATAL) << Describe() << ": its class centers (blobs_[0], K x D') are"
        << " a fixed parameter, but the layer " << spec.str()
        << "; add  param { lr_mult: 0 decay_mult: 0 }  to the layer";
  }
  if (this->blobs_.empty()) {
    vector<int> shape(2);
    shape[0] = bottom[0]->count(1);
    shape[1] = bottom[1]->count(1);
    this->blobs_.resize(1);
    this->blobs_[0].reset(new Blob<Dtype>(shape));
    caffe_set(this->blobs_[0]->count(), Dtype(0),
        this->blobs_[0]->mutable_cpu_data());
  }
  this->param_propagate_down_.resize(this->blobs_.size(), false);
  num_present_ = 0;
}

template <typename Dtype>
void LocalCenterKDLossLayer<Dtype>::Reshape(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  const LayerParameter& p = this->layer_param_;
  num_ = relation::check_instances(Describe(), p, bottom);
  classes_ = bottom[0]->count(1);
  dim_ = bottom[1]->count(1);
  CHECK_GT(classes_, 0) << Describe() << ": "
      << irg::describe_bottom(p, 0, bottom) << " has no logits";
  const Blob<Dtype>& centers = *this->blobs_[0];
  CHECK(centers.num_axes() == 2 && centers.shape(0) == classes_
      && centers.shape(1) == dim_) << Describe()
      << ": the class-center blob (blobs_[0]) is (" << centers.shape_string()
      << ") but must be K x D' = " << classes_ << " x " << dim_
      << " for " << irg::describe_bottom(p, 0, bottom) << " and "
      << irg::describe_bottom(p, 1, bottom)
      << " (a .caffemodel or centers made for another net?)";
  top[0]->Reshape(vector<int>());  // a scalar, as LossLayer's
  present_.Reshape(vector<int>(1, classes_));
  vector<int> shape(2);
  shape[0] = classes_;
  shape[1] = dim_;
  centers_.Reshape(shape);
  center_norm_.Reshape(vector<int>(1, classes_));
  shape[0] = num_;
  shape[1] = classes_;
  logits_t_.Reshape(shape);
  if (kl_.count() != num_) {  // diff: N ones, for the dot that sums the KLs
    kl_.Reshape(vector<int>(1, num_));
    irg::fill_on_device(Dtype(1), &kl_, true);
  }
}

template <typename Dtype>
void LocalCenterKDLossLayer<Dtype>::FindPresentClasses(
    const vector<Blob<Dtype>*>& bottom, vector<int>* labels) {
  relation::read_labels(Describe(), this->layer_param_, 2, bottom, classes_,
      labels);
  vector<bool> seen(classes_, false);
  for (int i = 0; i < num_; ++i) seen[(*labels)[i]] = true;
  int* present = present_.mutable_cpu_data();
  num_present_ = 0;
  for (int c = 0; c < classes_; ++c) {
    if (seen[c]) present[num_present_++] = c;
  }
}

template <typename Dtype>
void LocalCenterKDLossLayer<Dtype>::CheckCentersFilled(
    const Dtype* norms) const {
  const int* present = present_.cpu_data();
  for (int m = 0; m < num_present_; ++m) {
    if (!(norms[m] > 0)) {
      LOG(FATAL) << Describe() << ": the class centers (blobs_[0], "
          << this->blobs_[0]->shape_string() << ") were not filled: the row"
          << " of class " << present[m] << ", present in this batch, is all"
          << " zero. Fill them with the teacher's class means first, or use"
          << " relation_param { centers: LOCAL }";
    }
  }
}

template <typename Dtype>
void LocalCenterKDLossLayer<Dtype>::Forward_cpu(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  vector<int> labels;
  FindPresentClasses(bottom, &labels);
  const int n = num_, k = classes_, dim = dim_, m = num_present_;
  const int* present = present_.cpu_data();
  const Dtype* f = bottom[1]->cpu_data();
  Dtype* centers = centers_.mutable_cpu_data();
  Dtype* norm = center_norm_.mutable_cpu_data();
  const bool global =
      relation_param_.centers() == RelationParameter_Centers_GLOBAL;
  if (global) {
    const Dtype* blob = this->blobs_[0]->cpu_data();
    for (int j = 0; j < m; ++j) {
      caffe_copy(dim, blob + static_cast<int64_t>(present[j]) * dim,
          centers + static_cast<int64_t>(j) * dim);
    }
  } else {
    caffe_set(m * dim, Dtype(0), centers);
    vector<int> slot(k, -1), count(m, 0);
    for (int j = 0; j < m; ++j) slot[present[j]] = j;
    for (int i = 0; i < n; ++i) {
      const int j = slot[labels[i]];
      ++count[j];
      caffe_axpy(dim, Dtype(1), f + static_cast<int64_t>(i) * dim,
          centers + static_cast<int64_t>(j) * dim);
    }
    for (int j = 0; j < m; ++j) {
      caffe_scal(dim, Dtype(1) / count[j],
          centers + static_cast<int64_t>(j) * dim);
    }
  }
  for (int j = 0; j < m; ++j) {
    Dtype* row = centers + static_cast<int64_t>(j) * dim;
    norm[j] = relation::row_norm(row, dim);
    caffe_scal(dim, relation::inverse_or_zero(norm[j]), row);
  }
  if (global) CheckCentersFilled(norm);
  Dtype* logits_t = logits_t_.mutable_cpu_data();
  caffe_cpu_gemm<Dtype>(CblasNoTrans, CblasTrans, n, m, dim, Dtype(1), f,
      centers, Dtype(0), logits_t);
  const Dtype* logits_s = bottom[0]->cpu_data();
  const Dtype inv_tau = Dtype(1) / relation_param_.tau2();
  Dtype* grad = logits_t_.mutable_cpu_diff();
  Dtype* kl = kl_.mutable_cpu_data();
  for (int i = 0; i < n; ++i) {
    kl[i] = relation::softmax_kl(m, logits_t + static_cast<int64_t>(i) * m,
        logits_s + static_cast<int64_t>(i) * k, present, inv_tau,
        grad + static_cast<int64_t>(i) * m);
  }
  top[0]->mutable_cpu_data()[0] = caffe_cpu_dot(n, kl, kl_.cpu_diff())
      * relation_param_.teaching_weight() / n;
}

// Backward (CPU and GPU): dL/dz_S[i, C_m] = w lambda / (N tau2)
// (softmax_S - softmax_T)[i, m], 0 in the columns of absent classes.
template <typename Dtype>
void LocalCenterKDLossLayer<Dtype>::Backward_cpu(
    const vector<Blob<Dtype>*>& top, const vector<bool>& propagate_down,
    const vector<Blob<Dtype>*>& bottom) {
  relation::check_student_only(
      Describe(), this->layer_param_, propagate_down, bottom);
  if (!propagate_down[0]) return;
  const int n = num_, k = classes_, m = num_present_;
  const Dtype coeff = top[0]->cpu_diff()[0] * relation_param_.teaching_weight()
      / (n * relation_param_.tau2());
  const int* present = present_.cpu_data();
  const Dtype* grad = logits_t_.cpu_diff();
  Dtype* dz = bottom[0]->mutable_cpu_diff();
  caffe_set(bottom[0]->count(), Dtype(0), dz);
  for (int i = 0; i < n; ++i) {
    for (int j = 0; j < m; ++j) {
      dz[static_cast<int64_t>(i) * k + present[j]] =
          coeff * grad[static_cast<int64_t>(i) * m + j];
    }
  }
}

#ifdef CPU_ONLY
STUB_GPU(LocalCenterKDLossLayer);
#endif

INSTANTIATE_CLASS(LocalCenterKDLossLayer);
REGISTER_LAYER_CLASS(LocalCenterKDLoss);

}  // namespace caffe
