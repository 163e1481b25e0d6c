#ifndef CAFFE_TRIPLET_RELATION_LOSS_LAYER_HPP_
#define CAFFE_TRIPLET_RELATION_LOSS_LAYER_HPP_

#include <stdint.h>

#include <string>
#include <vector>

#include "caffe/blob.hpp"
#include "caffe/layer.hpp"
#include "caffe/proto/caffe.pb.h"

#include "caffe/layers/loss_layer.hpp"

namespace caffe {

/**
 * @brief Stage 1 of REFILLED (Ye, Lu, Zhan, CVPR 2020): the student's
 *        embedding learns the teacher's relations between triplets.
 *
 * Both embeddings are L2-normalized per instance (a zero row stays 0 and gets
 * a zero gradient). Triplets (a, p, n) are mined on the student's normalized
 * embedding with Euclidean distances d: label a == label p, a != p,
 * label n != label a and 0 < d(a,n) - d(a,p) <= margin (semi-hard), in the
 * order a, then p, then n. Mining selects indices only and is not
 * differentiated.
 *
 * relation_param.mode TRIPLET: per triplet and network X,
 * @f$ P_X = \sigma((d_X(a,n) - d_X(a,p)) / \tau_1) @f$ and
 * @f$ L = \frac{scale}{2T} \sum_t KL(Bern(P_T) \| Bern(P_S)) @f$.
 * TUPLE: the triplets that share (a, p) form one tuple with logits
 * @f$ -[d(a,p), d(a,n_1), \ldots, d(a,n_k)] / \tau_1 @f$ per network and
 * @f$ L = scale \cdot \mathrm{mean}_{tuples} KL(softmax_T \| softmax_S) @f$.
 * No mined triplet: L = 0 and a zero gradient.
 *
 * The gradient flows to the student embedding only (through the distances,
 * with dd/dx taken as 0 where d = 0, and through the normalization). The
 * teacher embedding and the labels get none: asking for it is an error.
 *
 * @param bottom input Blob vector (length 3)
 *   -# @f$ (N \times \ldots) @f$ student embedding, flattened to N x D
 *   -# @f$ (N \times \ldots) @f$ teacher embedding, flattened to N x D'
 *   -# @f$ (N) @f$ labels, non-negative integers (any shape of N entries)
 * @param top output Blob vector (length 1)
 *   -# @f$ (1) @f$ the loss
 */
template <typename Dtype>
class TripletRelationLossLayer : public LossLayer<Dtype> {
 public:
  explicit TripletRelationLossLayer(const LayerParameter& param)
      : LossLayer<Dtype>(param) {}
  virtual void LayerSetUp(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Reshape(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);

  virtual inline const char* type() const { return "TripletRelationLoss"; }
  virtual inline int ExactNumBottomBlobs() const { return 3; }
  virtual inline int ExactNumTopBlobs() const { return 1; }
  /// Only the student embedding can take a gradient.
  virtual inline bool AllowForceBackward(const int bottom_index) const {
    return bottom_index == 0;
  }

  /// Triplets and tuples the last Forward mined (for tests and logging).
  int64_t num_triplets() const { return num_triplets_; }
  int64_t num_tuples() const { return num_tuples_; }

 protected:
  virtual void Forward_cpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Forward_gpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Backward_cpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom);
  virtual void Backward_gpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom);

  /// "TripletRelationLoss layer 'name'", for error messages.
  std::string Describe() const;
  /// The host part of Forward (CPU and GPU): mines the triplets on the
  /// student distances, returns the loss, and fills coef_'s data with
  /// dL/dd_S(i, j) for a unit top gradient (0 where no triplet uses the pair).
  Dtype MineAndScore(const Dtype* dist_s, const Dtype* dist_t,
      const vector<int>& labels);

  RelationParameter relation_param_;
  int num_;    // N, instances
  int dim_s_;  // D, student features per instance
  int dim_t_;  // D', teacher features per instance
  int64_t num_triplets_;
  int64_t num_tuples_;
  /// N x D and N x D': the normalized embeddings (diff of unit_s_: dL/du).
  Blob<Dtype> unit_s_, unit_t_;
  /// N: the student rows' norms (data); scratch per row (diff).
  Blob<Dtype> norm_s_;
  /// N: the teacher rows' norms.
  Blob<Dtype> norm_t_;
  /// N x N: the Gram matrix of either network (scratch).
  Blob<Dtype> gram_;
  /// N x N Euclidean distances of the normalized embeddings.
  Blob<Dtype> dist_s_, dist_t_;
  /// N x N: data, dL/dd_S per ordered pair (from the host's mining);
  /// diff, the symmetric pair coefficients of the backward.
  Blob<Dtype> coef_;
  /// data: N ones (row sums by GEMV); diff: those row sums.
  Blob<Dtype> ones_;
};

}  // namespace caffe

#endif  // CAFFE_TRIPLET_RELATION_LOSS_LAYER_HPP_
