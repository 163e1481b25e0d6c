#include <cmath>
#include <string>
#include <vector>

#include "caffe/layers/batch_euclidean_vector_layer.hpp"
#include "caffe/util/irg_math.hpp"
#include "caffe/util/math_functions.hpp"

namespace caffe {

template <typename Dtype>
std::string BatchEuclideanVectorLayer<Dtype>::Describe() const {
  return irg::describe_layer(type(), this->layer_param_);
}

template <typename Dtype>
void BatchEuclideanVectorLayer<Dtype>::LayerSetUp(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  irg_param_ = this->layer_param_.irg_param();
  norm_.Reshape(vector<int>(1, irg::kNumNormSlots));
  irg::fill_on_device(Dtype(1), &norm_);
}

template <typename Dtype>
void BatchEuclideanVectorLayer<Dtype>::Reshape(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  const LayerParameter& p = this->layer_param_;
  CHECK(bottom[0]->num_axes() >= 1 && bottom[1]->num_axes() >= 1
      && bottom[0]->shape(0) == bottom[1]->shape(0)
      && bottom[0]->count(1) == bottom[1]->count(1))
      << Describe() << ": " << irg::describe_bottom(p, 0, bottom) << " and "
      << irg::describe_bottom(p, 1, bottom)
      << " must have the same number of instances N (first axis) and the same"
      << " number of features per instance (product of the other axes)";
  CHECK(top[0] != bottom[0] && top[0] != bottom[1]) << Describe()
      << " cannot run in place";
  num_ = bottom[0]->shape(0);
  dim_ = bottom[0]->count(1);
  vector<int> top_shape(4, 1);
  top_shape[3] = num_;
  top[0]->Reshape(top_shape);
}

// Forward (CPU and GPU): d_i from the rows of x - y (one pass, nothing
// stored), normalizer m, t = d / m.
template <typename Dtype>
void BatchEuclideanVectorLayer<Dtype>::Forward_cpu(
    const vector<Blob<Dtype>*>& bottom, const vector<Blob<Dtype>*>& top) {
  const Dtype* x = bottom[0]->cpu_data();
  const Dtype* y = bottom[1]->cpu_data();
  Dtype* t = top[0]->mutable_cpu_data();
  for (int i = 0; i < num_; ++i) {
    const Dtype q = irg::direct_squared_distance(x + i * dim_, y + i * dim_,
        dim_);
    t[i] = irg_param_.squared() ? q : std::sqrt(q);
  }
  Dtype* norm = norm_.mutable_cpu_data();
  const int mode = irg_param_.normalize();
  norm[irg::kNormalizer] = irg::host_normalizer(num_, t, mode, Dtype(num_));
  if (mode != IRGParameter_Normalize_NONE) {
    for (int i = 0; i < num_; ++i) {
      t[i] = irg::normalized(t[i], norm[irg::kNormalizer], mode);
    }
  }
}

// Backward (CPU and GPU), G = top diff: dL/dm terms (EXACT, MAX/MEAN only),
// then in one elementwise pass dx = 2 H_i (x_i - y_i), dy = -dx, with
// H_i = dL/dq_i, each only where propagate_down asks for it.
template <typename Dtype>
void BatchEuclideanVectorLayer<Dtype>::Backward_cpu(
    const vector<Blob<Dtype>*>& top, const vector<bool>& propagate_down,
    const vector<Blob<Dtype>*>& bottom) {
  if (!propagate_down[0] && !propagate_down[1]) return;
  const int mode = irg_param_.normalize();
  const bool exact = irg_param_.backward() == IRGParameter_Backward_EXACT;
  const Dtype* g = top[0]->cpu_diff();
  const Dtype* t = top[0]->cpu_data();
  Dtype* norm = norm_.mutable_cpu_data();
  if (exact && mode != IRGParameter_Normalize_NONE) {
    irg::host_normalizer_grad(num_, g, t, mode, Dtype(num_), norm);
  }
  const Dtype m = norm[irg::kNormalizer];
  const Dtype share = irg::normalizer_share(norm, mode, exact);
  const Dtype* x = bottom[0]->cpu_data();
  const Dtype* y = bottom[1]->cpu_data();
  Dtype* dx = propagate_down[0] ? bottom[0]->mutable_cpu_diff() : NULL;
  Dtype* dy = propagate_down[1] ? bottom[1]->mutable_cpu_diff() : NULL;
  // The branches stay out of the inner loops so that those vectorize.
  for (int i = 0; i < num_; ++i) {
    const Dtype h = 2 * irg::distance_grad(g[i], t[i], m,
        irg::in_normalizer(mode, t[i], false) ? share : Dtype(0),
        irg_param_.squared());
    const int begin = i * dim_, end = begin + dim_;
    if (dx && dy) {
      for (int k = begin; k < end; ++k) {
        const Dtype grad = h * (x[k] - y[k]);
        dx[k] = grad;
        dy[k] = -grad;
      }
    } else if (dx) {
      for (int k = begin; k < end; ++k) dx[k] = h * (x[k] - y[k]);
    } else {
      for (int k = begin; k < end; ++k) dy[k] = h * (y[k] - x[k]);
    }
  }
}

#ifdef CPU_ONLY
STUB_GPU(BatchEuclideanVectorLayer);
#endif

INSTANTIATE_CLASS(BatchEuclideanVectorLayer);
REGISTER_LAYER_CLASS(BatchEuclideanVector);

}  // namespace caffe
