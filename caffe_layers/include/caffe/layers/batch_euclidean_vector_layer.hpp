#ifndef CAFFE_BATCH_EUCLIDEAN_VECTOR_LAYER_HPP_
#define CAFFE_BATCH_EUCLIDEAN_VECTOR_LAYER_HPP_

#include <string>
#include <vector>

#include "caffe/blob.hpp"
#include "caffe/layer.hpp"
#include "caffe/proto/caffe.pb.h"

namespace caffe {

/**
 * @brief The vertex part of the IRG transformation (Liu et al., CVPR 2019):
 *        how far each instance moves between two layers,
 *        @f$ t_i = d(x_i, y_i) / m @f$.
 *
 * @f$ d @f$ is the squared Euclidean distance (irg_param.squared, default) or
 * the Euclidean distance; @f$ m @f$ is the largest @f$ d_i @f$ (normalize:
 * MAX, default, as released), their mean (MEAN) or 1 (NONE); the top and the
 * gradients are 0 when @f$ m = 0 @f$.
 *
 * backward: EXACT (default) is the gradient of this forward, through
 * @f$ m @f$ too; RELEASED holds @f$ m @f$ constant as the authors' layer did
 * (but, unlike it, honours propagate_down).
 *
 * The backward uses the top's data, so do not run an in-place layer on it.
 *
 * @param bottom input Blob vector (length 2)
 *   -# @f$ (N \times \ldots) @f$ features x, flattened to @f$ N \times D @f$
 *   -# @f$ (N \times \ldots) @f$ features y, the same N and D
 * @param top output Blob vector (length 1)
 *   -# @f$ (1 \times 1 \times 1 \times N) @f$ the normalized distances, laid
 *      out as released (EuclideanLoss then divides by 2, not by 2N)
 */
template <typename Dtype>
class BatchEuclideanVectorLayer : public Layer<Dtype> {
 public:
  explicit BatchEuclideanVectorLayer(const LayerParameter& param)
      : Layer<Dtype>(param) {}
  virtual void LayerSetUp(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Reshape(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);

  virtual inline const char* type() const { return "BatchEuclideanVector"; }
  virtual inline int ExactNumBottomBlobs() const { return 2; }
  virtual inline int ExactNumTopBlobs() const { return 1; }

 protected:
  virtual void Forward_cpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Forward_gpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Backward_cpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom);
  virtual void Backward_gpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down, const vector<Blob<Dtype>*>& bottom);

  /// "BatchEuclideanVector layer 'name'", for error messages.
  std::string Describe() const;

  IRGParameter irg_param_;
  int num_;  // N, instances
  int dim_;  // D, features per instance
  /// The normalizer and its gradient terms (irg::NormSlot); device-resident
  /// on the GPU path. Nothing else is held: the backward recomputes x - y.
  Blob<Dtype> norm_;
};

}  // namespace caffe

#endif  // CAFFE_BATCH_EUCLIDEAN_VECTOR_LAYER_HPP_
