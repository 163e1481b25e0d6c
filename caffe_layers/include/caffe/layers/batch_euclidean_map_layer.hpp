#ifndef CAFFE_BATCH_EUCLIDEAN_MAP_LAYER_HPP_
#define CAFFE_BATCH_EUCLIDEAN_MAP_LAYER_HPP_

#include <string>
#include <vector>

#include "caffe/blob.hpp"
#include "caffe/layer.hpp"
#include "caffe/proto/caffe.pb.h"

namespace caffe {

/**
 * @brief The edges of an Instance Relationship Graph (Liu et al., CVPR 2019):
 *        the matrix of normalized distances between the instances of a batch,
 *        @f$ A_{ij} = d(x_i, x_j) / m @f$.
 *
 * @f$ d @f$ is the squared Euclidean distance (irg_param.squared, default) or
 * the Euclidean distance; @f$ m @f$ is the largest entry (normalize: MAX,
 * default, as the authors released), the mean off-diagonal entry (MEAN) or 1
 * (NONE). When @f$ m = 0 @f$ (N = 1, or every instance identical) the top and
 * the gradient are 0. The diagonal is exactly 0.
 *
 * Distances come from one GEMM: @f$ d^2_{ij} = K_{ii} + K_{jj} - 2 K_{ij} @f$,
 * @f$ K = X X^\top @f$, clamped at 0; pairs for which that difference cancels
 * to rounding noise are recomputed directly from the two instances.
 *
 * backward: EXACT (default) is the gradient of this forward, including the
 * term through @f$ m @f$ (for MAX it flows to the maximal pairs). RELEASED
 * reproduces the authors' layer: @f$ m @f$ held constant and only the
 * @f$ G_{ij} @f$ half of each symmetric pair summed, which is half the
 * constant-m gradient for a symmetric upstream gradient.
 *
 * The backward uses the top's data, so do not run an in-place layer on it.
 *
 * @param bottom input Blob vector (length 1)
 *   -# @f$ (N \times \ldots) @f$ features, flattened per instance to
 *      @f$ N \times D @f$
 * @param top output Blob vector (length 1)
 *   -# @f$ (N \times N \times 1 \times 1) @f$ the normalized distances
 */
template <typename Dtype>
class BatchEuclideanMapLayer : public Layer<Dtype> {
 public:
  explicit BatchEuclideanMapLayer(const LayerParameter& param)
      : Layer<Dtype>(param) {}
  virtual void LayerSetUp(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);
  virtual void Reshape(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top);

  virtual inline const char* type() const { return "BatchEuclideanMap"; }
  virtual inline int ExactNumBottomBlobs() const { return 1; }
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

  /// "BatchEuclideanMap layer 'name'", for error messages.
  std::string Describe() const;
  /// Entries of the distance matrix that the MEAN normalizer averages.
  Dtype MeanCount() const { return Dtype(num_) * Dtype(num_ - 1); }
  /// Side of the square tiles in which the CPU walks the N x N matrices.
  enum { kTile = 32 };

  IRGParameter irg_param_;
  int num_;  // N, instances
  int dim_;  // D, features per instance
  /// N x N: the Gram matrix in Forward, the pair coefficients in Backward.
  Blob<Dtype> pairs_;
  /// data: N ones, to sum the rows of the coefficient matrix with one GEMV;
  /// diff: those row sums (and, in the CPU forward, the Gram diagonal).
  Blob<Dtype> ones_;
  /// The normalizer and its gradient terms (irg::NormSlot); device-resident
  /// on the GPU path.
  Blob<Dtype> norm_;
};

}  // namespace caffe

#endif  // CAFFE_BATCH_EUCLIDEAN_MAP_LAYER_HPP_
