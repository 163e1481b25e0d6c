#ifndef CAFFE_UTIL_RELATION_MATH_HPP_
#define CAFFE_UTIL_RELATION_MATH_HPP_

#include <cmath>
#include <string>
#include <vector>

#include "caffe/blob.hpp"
#include "caffe/proto/caffe.pb.h"
#include "caffe/util/irg_math.hpp"

// Per-row math of the REFILLED layers (TripletRelationLoss, LocalCenterKDLoss).
// As in irg_math.hpp, each function is used by the CPU loops and by the CUDA
// kernels alike, so the CPU tests cover the arithmetic the GPU runs; the
// shared kernels are in relation_kernels.cuh.

namespace caffe {
namespace relation {

// Euclidean norm of one row. A zero row (or one whose squares underflow) has
// norm 0; the layers then take its normalized form, and its gradient, as 0.
template <typename Dtype>
IRG_HOST_DEVICE inline Dtype row_norm(const Dtype* x, const int dim) {
  Dtype q = 0;
  for (int k = 0; k < dim; ++k) q += x[k] * x[k];
  return sqrt(q);
}

template <typename Dtype>
IRG_HOST_DEVICE inline Dtype inverse_or_zero(const Dtype norm) {
  return norm > 0 ? Dtype(1) / norm : Dtype(0);
}

// KL(softmax(t * inv_tau) || softmax(s * inv_tau)) over m entries, and its
// gradient with respect to the student's scaled logits s * inv_tau:
// grad[j] = softmax_s[j] - softmax_t[j]. The student's entry j is
// s[s_cols[j]] (s[j] when s_cols is NULL), so a row can be restricted to a set
// of columns without a copy. Max-subtracted log-sum-exp on both sides: finite
// for any finite input, and a target probability that underflows to 0 adds 0.
template <typename Dtype>
IRG_HOST_DEVICE inline Dtype softmax_kl(const int m, const Dtype* t,
    const Dtype* s, const int* s_cols, const Dtype inv_tau, Dtype* grad) {
  Dtype max_t = t[0] * inv_tau;
  Dtype max_s = s[s_cols ? s_cols[0] : 0] * inv_tau;
  for (int j = 1; j < m; ++j) {
    const Dtype tj = t[j] * inv_tau, sj = s[s_cols ? s_cols[j] : j] * inv_tau;
    max_t = tj > max_t ? tj : max_t;
    max_s = sj > max_s ? sj : max_s;
  }
  Dtype sum_t = 0, sum_s = 0;
  for (int j = 0; j < m; ++j) {
    sum_t += exp(t[j] * inv_tau - max_t);
    sum_s += exp(s[s_cols ? s_cols[j] : j] * inv_tau - max_s);
  }
  const Dtype lse_t = max_t + log(sum_t), lse_s = max_s + log(sum_s);
  Dtype kl = 0;
  for (int j = 0; j < m; ++j) {
    const Dtype log_pt = t[j] * inv_tau - lse_t;
    const Dtype log_ps = s[s_cols ? s_cols[j] : j] * inv_tau - lse_s;
    const Dtype pt = exp(log_pt);
    kl += pt * (log_pt - log_ps);
    grad[j] = exp(log_ps) - pt;
  }
  return kl;
}

// The label of instance i as a class index, or -1 if it is not a
// non-negative integer below `classes` (classes < 0: no upper bound).
template <typename Dtype>
inline int class_index(const Dtype label, const int classes) {
  const int c = static_cast<int>(label);
  if (!(label >= 0) || static_cast<Dtype>(c) != label) return -1;
  return classes >= 0 && c >= classes ? -1 : c;
}

// CHECKs that every label is a class index in [0, classes) (classes < 0: any
// non-negative integer) and fills `out` with them; the message names the
// layer, the label blob, its shape and the first bad entry.
template <typename Dtype>
void read_labels(const std::string& layer, const LayerParameter& p,
    const int i, const vector<Blob<Dtype>*>& bottom, const int classes,
    vector<int>* out) {
  const Blob<Dtype>* blob = bottom[i];
  const Dtype* label = blob->cpu_data();
  out->resize(blob->count());
  for (int k = 0; k < blob->count(); ++k) {
    const int c = class_index(label[k], classes);
    if (c < 0) {
      LOG(FATAL) << layer << ": " << irg::describe_bottom(p, i, bottom)
          << " entry " << k << " is " << label[k] << "; labels must be "
          << (classes >= 0 ? "integers in [0, K) with K = " : "non-negative "
              "integers")
          << (classes >= 0 ? std::to_string(classes) : std::string());
    }
    (*out)[k] = c;
  }
}

// CHECKs the bottoms both REFILLED layers take: bottom[0] (student) and
// bottom[1] (teacher) with the same number N > 0 of instances on their first
// axis, and bottom[2] with N labels; returns N. Messages name the layer, the
// blobs and their shapes.
template <typename Dtype>
int check_instances(const std::string& layer, const LayerParameter& p,
    const vector<Blob<Dtype>*>& bottom) {
  for (int i = 0; i < 2; ++i) {
    CHECK_GE(bottom[i]->num_axes(), 1) << layer << ": "
        << irg::describe_bottom(p, i, bottom)
        << " needs a first axis of instances (N x ...)";
  }
  const int num = bottom[0]->shape(0);
  CHECK_GT(num, 0) << layer << ": "
      << irg::describe_bottom(p, 0, bottom) << " holds no instance";
  CHECK_EQ(bottom[1]->shape(0), num) << layer << ": "
      << irg::describe_bottom(p, 0, bottom) << " and "
      << irg::describe_bottom(p, 1, bottom)
      << " must hold the same number of instances N (first axis)";
  CHECK_EQ(bottom[2]->count(), num) << layer << ": "
      << irg::describe_bottom(p, 2, bottom) << " must hold N = " << num
      << " labels, one per instance of "
      << irg::describe_bottom(p, 0, bottom);
  return num;
}

// CHECKs propagate_down: only bottom[0] (the student) may ask for a gradient;
// the teacher embedding is fixed and the labels have none.
template <typename Dtype>
void check_student_only(const std::string& layer, const LayerParameter& p,
    const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom) {
  CHECK(!propagate_down[1]) << layer << " cannot backpropagate to "
      << irg::describe_bottom(p, 1, bottom)
      << ", the teacher embedding: the teacher is fixed. Give the layer"
      << " propagate_down: true propagate_down: false propagate_down: false"
      << " (or freeze the teacher with lr_mult: 0)";
  CHECK(!propagate_down[2]) << layer << " cannot backpropagate to "
      << irg::describe_bottom(p, 2, bottom) << ", the labels";
}

}  // namespace relation
}  // namespace caffe

#endif  // CAFFE_UTIL_RELATION_MATH_HPP_
