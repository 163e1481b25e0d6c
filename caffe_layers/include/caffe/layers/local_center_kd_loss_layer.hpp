#ifndef CAFFE_LOCAL_CENTER_KD_LOSS_LAYER_HPP_
#define CAFFE_LOCAL_CENTER_KD_LOSS_LAYER_HPP_

#include <string>
#include <vector>

#include "caffe/blob.hpp"
#include "caffe/layer.hpp"
#include "caffe/proto/caffe.pb.h"

#include "caffe/layers/loss_layer.hpp"

namespace caffe {

/**
 * @brief Stage 2 of REFILLED (Ye, Lu, Zhan, CVPR 2020): local classifier
 *        distillation. The teacher's embedding scored against its class
 *        centers is the target of the student's logits, restricted to the
 *        classes present in the batch.
 *
 * With @f$ C_b @f$ the classes present in the batch (ascending),
 * @f$ z_T[i, c] = \langle f_{T,i}, \mu_c \rangle @f$ for @f$ c \in C_b @f$
 * (the teacher embedding as it comes, the centers L2-normalized per row inside
 * the layer), @f$ z_S[i, c] @f$ the student's logits in the same columns, and
 * @f$ L = \frac{\lambda}{N} \sum_i KL(softmax(z_{T,i} / \tau_2) \|
 * softmax(z_{S,i} / \tau_2)) @f$, @f$ \lambda @f$ = teaching_weight. The
 * cross-entropy on the labels is a separate SoftmaxWithLoss in the net.
 *
 * relation_param.centers GLOBAL (default): the centers are this->blobs_[0],
 * K x D', a fixed parameter (saved in the .caffemodel, filled by a tool). The
 * layer refuses a param spec that would let the solver update or decay it
 * (it needs param { lr_mult: 0 decay_mult: 0 }), and a present class whose
 * center row is all zero (centers never filled). LOCAL: the per-batch mean of
 * the teacher embedding of each present class, L2-normalized (a zero mean
 * stays 0); the blob is declared but unused.
 *
 * The gradient flows to the student's logits only (0 outside C_b); the
 * teacher embedding and the labels get none: asking for it is an error. The
 * centers get no gradient either.
 *
 * @param bottom input Blob vector (length 3)
 *   -# @f$ (N \times K) @f$ student logits (N x ..., flattened to N x K)
 *   -# @f$ (N \times \ldots) @f$ teacher embedding, flattened to N x D'
 *   -# @f$ (N) @f$ labels, integers in [0, K)
 * @param top output Blob vector (length 1)
 *   -# @f$ (1) @f$ the loss
 */
template <typename Dtype>
class LocalCenterKDLossLayer : public LossLayer<Dtype> {
 public:
  explicit LocalCenterKDLossLayer(const LayerParameter& param)
      : LossLayer<Dtype>(param) {}
  virtual void LayerSetUp(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Reshape(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);

  virtual inline const char* type() const { return "LocalCenterKDLoss"; }
  virtual inline int ExactNumBottomBlobs() const { return 3; }
  virtual inline int ExactNumTopBlobs() const { return 1; }
  /// Only the student logits can take a gradient.
  virtual inline bool AllowForceBackward(const int bottom_index) const {
    return bottom_index == 0;
  }

  /// The classes present in the last Forward's batch (for tests).
  int num_present() const { return num_present_; }

 protected:
  virtual void Forward_cpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Forward_gpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Backward_cpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom);
  virtual void Backward_gpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom);

  /// "LocalCenterKDLoss layer 'name'", for error messages.
  std::string Describe() const;
  /// Reads and checks the labels (into `labels`); fills present_ (C_b,
  /// ascending) and num_present_. Host side, O(N + K).
  void FindPresentClasses(const vector<Blob<Dtype>*>& bottom,
      vector<int>* labels);
  /// CHECKs that no present class has an all-zero center (norms: the M
  /// center row norms, host memory).
  void CheckCentersFilled(const Dtype* norms) const;

  RelationParameter relation_param_;
  int num_;      // N, instances
  int classes_;  // K, the student's logits per instance
  int dim_;      // D', teacher features per instance
  int num_present_;  // M = |C_b|
  /// K: the present classes, ascending, in the first M entries.
  Blob<int> present_;
  /// M x D' (allocated K x D'): the normalized centers of C_b.
  Blob<Dtype> centers_;
  /// M (allocated K): the center rows' norms before normalization.
  Blob<Dtype> center_norm_;
  /// N x M (allocated N x K): data, teacher logits z_T; diff, the gradient
  /// softmax_S - softmax_T with respect to z_S / tau2.
  Blob<Dtype> logits_t_;
  /// N: data, KL per instance; diff, ones (sum by dot product).
  Blob<Dtype> kl_;
};

}  // namespace caffe

#endif  // CAFFE_LOCAL_CENTER_KD_LOSS_LAYER_HPP_
