#include <cmath>
#include <vector>

#include "gtest/gtest.h"

#include "caffe/blob.hpp"
#include "caffe/common.hpp"
#include "caffe/filler.hpp"
#include "caffe/layers/local_center_kd_loss_layer.hpp"

#include "caffe/test/test_caffe_main.hpp"
#include "caffe/test/test_gradient_check_util.hpp"

namespace caffe {

// GradientChecker also checks every parameter blob against its diff. The
// centers are a fixed parameter (lr_mult 0) for which the layer computes no
// gradient, so the checker sees the layer through this view, which has no
// parameter blobs and forwards everything else.
template <typename Dtype>
class CentersFixedView : public Layer<Dtype> {
 public:
  explicit CentersFixedView(Layer<Dtype>* inner)
      : Layer<Dtype>(LayerParameter()), inner_(inner) {}
  virtual void LayerSetUp(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top) { inner_->SetUp(bottom, top); }
  virtual void Reshape(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top) { inner_->Reshape(bottom, top); }
  virtual inline const char* type() const { return "CentersFixedView"; }

 protected:
  virtual void Forward_cpu(const vector<Blob<Dtype>*>& bottom,
      const vector<Blob<Dtype>*>& top) { inner_->Forward(bottom, top); }
  virtual void Backward_cpu(const vector<Blob<Dtype>*>& top,
      const vector<bool>& propagate_down,
      const vector<Blob<Dtype>*>& bottom) {
    inner_->Backward(top, propagate_down, bottom);
  }
  Layer<Dtype>* inner_;
};

template <typename TypeParam>
class LocalCenterKDLossLayerTest : public MultiDeviceTest<TypeParam> {
  typedef typename TypeParam::Dtype Dtype;

 protected:
  // N = 6, K = 5, D' = 3; classes 0, 2, 2, 3, 0, 4 (class 1 absent).
  LocalCenterKDLossLayerTest()
      : logits_(new Blob<Dtype>(6, 5, 1, 1)),
        teacher_(new Blob<Dtype>(6, 3, 1, 1)),
        label_(new Blob<Dtype>(vector<int>(1, 6))),
        top_(new Blob<Dtype>()) {
    FillerParameter filler_param;
    filler_param.set_std(2);
    GaussianFiller<Dtype> filler(filler_param);
    filler.Fill(logits_);
    filler.Fill(teacher_);
    const Dtype labels[6] = {0, 2, 2, 3, 0, 4};
    for (int i = 0; i < 6; ++i) label_->mutable_cpu_data()[i] = labels[i];
    bottom_vec_.push_back(logits_);
    bottom_vec_.push_back(teacher_);
    bottom_vec_.push_back(label_);
    top_vec_.push_back(top_);
  }
  virtual ~LocalCenterKDLossLayerTest() {
    delete logits_;
    delete teacher_;
    delete label_;
    delete top_;
  }

  static LayerParameter Param(RelationParameter_Centers centers, float tau2,
      float weight) {
    LayerParameter param;
    param.set_name("kd");
    ParamSpec* spec = param.add_param();
    spec->set_lr_mult(0);
    spec->set_decay_mult(0);
    RelationParameter* p = param.mutable_relation_param();
    p->set_centers(centers);
    p->set_tau2(tau2);
    p->set_teaching_weight(weight);
    return param;
  }

  // Sets up the layer and fills its centers blob with Gaussian rows.
  void SetUpWithCenters(LocalCenterKDLossLayer<Dtype>* layer) {
    layer->SetUp(bottom_vec_, top_vec_);
    FillerParameter filler_param;
    GaussianFiller<Dtype> filler(filler_param);
    filler.Fill(layer->blobs()[0].get());
  }

  // The loss with plain loops in double.
  double ReferenceLoss(const LayerParameter& param, const Blob<Dtype>& blob) {
    const RelationParameter& p = param.relation_param();
    const int n = logits_->shape(0), k = logits_->count(1);
    const int dim = teacher_->count(1);
    const Dtype* y = label_->cpu_data();
    vector<int> present;
    for (int c = 0; c < k; ++c) {
      for (int i = 0; i < n; ++i) {
        if (y[i] == c) {
          present.push_back(c);
          break;
        }
      }
    }
    const int m = present.size();
    vector<double> mu(m * dim, 0);
    for (int j = 0; j < m; ++j) {
      int count = 0;
      for (int i = 0; i < n; ++i) {
        if (p.centers() == RelationParameter_Centers_LOCAL
            && y[i] == present[j]) {
          ++count;
          for (int d = 0; d < dim; ++d) {
            mu[j * dim + d] += teacher_->cpu_data()[i * dim + d];
          }
        }
      }
      double q = 0;
      for (int d = 0; d < dim; ++d) {
        if (p.centers() == RelationParameter_Centers_GLOBAL) {
          mu[j * dim + d] = blob.cpu_data()[present[j] * dim + d];
        } else {
          mu[j * dim + d] /= count;
        }
        q += mu[j * dim + d] * mu[j * dim + d];
      }
      for (int d = 0; d < dim; ++d) mu[j * dim + d] /= std::sqrt(q);
    }
    double total = 0;
    for (int i = 0; i < n; ++i) {
      vector<double> zt(m, 0), zs(m);
      double st = 0, ss = 0;
      for (int j = 0; j < m; ++j) {
        for (int d = 0; d < dim; ++d) {
          zt[j] += teacher_->cpu_data()[i * dim + d] * mu[j * dim + d];
        }
        zs[j] = logits_->cpu_data()[i * k + present[j]];
        st += std::exp(zt[j] / p.tau2());
        ss += std::exp(zs[j] / p.tau2());
      }
      for (int j = 0; j < m; ++j) {
        const double pt = std::exp(zt[j] / p.tau2()) / st;
        const double ps = std::exp(zs[j] / p.tau2()) / ss;
        total += pt * std::log(pt / ps);
      }
    }
    return p.teaching_weight() * total / n;
  }

  void CheckAgainstReference(RelationParameter_Centers centers) {
    const LayerParameter param = Param(centers, 2, 100);
    LocalCenterKDLossLayer<Dtype> layer(param);
    SetUpWithCenters(&layer);
    layer.Forward(bottom_vec_, top_vec_);
    EXPECT_EQ(4, layer.num_present());
    const double expected = ReferenceLoss(param, *layer.blobs()[0]);
    EXPECT_GT(expected, 0);
    EXPECT_NEAR(expected, top_->cpu_data()[0], 1e-4 * (1 + expected));
  }

  void CheckGradient(RelationParameter_Centers centers) {
    LocalCenterKDLossLayer<Dtype> layer(Param(centers, 2, 3));
    SetUpWithCenters(&layer);
    CentersFixedView<Dtype> view(&layer);
    GradientChecker<Dtype> checker(1e-2, 1e-3);
    checker.CheckGradientExhaustive(&view, bottom_vec_, top_vec_, 0);
  }

  Blob<Dtype>* const logits_;
  Blob<Dtype>* const teacher_;
  Blob<Dtype>* const label_;
  Blob<Dtype>* const top_;
  vector<Blob<Dtype>*> bottom_vec_;
  vector<Blob<Dtype>*> top_vec_;
};

TYPED_TEST_CASE(LocalCenterKDLossLayerTest, TestDtypesAndDevices);

TYPED_TEST(LocalCenterKDLossLayerTest, TestSetUp) {
  typedef typename TypeParam::Dtype Dtype;
  LocalCenterKDLossLayer<Dtype> layer(
      this->Param(RelationParameter_Centers_GLOBAL, 2, 100));
  layer.SetUp(this->bottom_vec_, this->top_vec_);
  EXPECT_EQ(0, this->top_->num_axes());
  ASSERT_EQ(1, layer.blobs().size());
  EXPECT_EQ(2, layer.blobs()[0]->num_axes());
  EXPECT_EQ(5, layer.blobs()[0]->shape(0));
  EXPECT_EQ(3, layer.blobs()[0]->shape(1));
  for (int k = 0; k < layer.blobs()[0]->count(); ++k) {
    EXPECT_EQ(Dtype(0), layer.blobs()[0]->cpu_data()[k]);
  }
}

TYPED_TEST(LocalCenterKDLossLayerTest, TestDefaultsMatchRelease) {
  LayerParameter param;
  const RelationParameter& p = param.relation_param();
  EXPECT_EQ(RelationParameter_Centers_GLOBAL, p.centers());
  EXPECT_FLOAT_EQ(2, p.tau2());
  EXPECT_FLOAT_EQ(100, p.teaching_weight());
}

// N = 2, K = 3, D' = 2, labels 0 and 2 (class 1 absent). Centers (2, 0) and
// (0, 3) normalize to e1 and e2; teacher rows (1, 2) and (3, -1) give
// z_T = [1, 2] and [3, -1]; the student's columns 0 and 2 are [.5, -.5] and
// [1, 2]. tau2 = 2, lambda = 1.
TYPED_TEST(LocalCenterKDLossLayerTest, TestForwardBackwardHandComputed) {
  typedef typename TypeParam::Dtype Dtype;
  this->logits_->Reshape(2, 3, 1, 1);
  this->teacher_->Reshape(2, 2, 1, 1);
  this->label_->Reshape(vector<int>(1, 2));
  const Dtype zs[6] = {0.5, 7, -0.5, 1, -3, 2};
  const Dtype f[4] = {1, 2, 3, -1};
  const Dtype y[2] = {0, 2};
  const Dtype mu[6] = {2, 0, 5, 5, 0, 3};
  caffe_copy(6, zs, this->logits_->mutable_cpu_data());
  caffe_copy(4, f, this->teacher_->mutable_cpu_data());
  caffe_copy(2, y, this->label_->mutable_cpu_data());
  LocalCenterKDLossLayer<Dtype> layer(
      this->Param(RelationParameter_Centers_GLOBAL, 2, 1));
  layer.SetUp(this->bottom_vec_, this->top_vec_);
  caffe_copy(6, mu, layer.blobs()[0]->mutable_cpu_data());
  layer.Forward(this->bottom_vec_, this->top_vec_);
  // Two-way softmaxes: p = sigmoid of the difference of the halved logits.
  const double pt0 = 1 / (1 + std::exp(-(1 - 2) / 2.0));
  const double ps0 = 1 / (1 + std::exp(-(0.5 + 0.5) / 2.0));
  const double pt1 = 1 / (1 + std::exp(-(3 + 1) / 2.0));
  const double ps1 = 1 / (1 + std::exp(-(1 - 2) / 2.0));
  const double kl0 = pt0 * std::log(pt0 / ps0)
      + (1 - pt0) * std::log((1 - pt0) / (1 - ps0));
  const double kl1 = pt1 * std::log(pt1 / ps1)
      + (1 - pt1) * std::log((1 - pt1) / (1 - ps1));
  EXPECT_NEAR((kl0 + kl1) / 2, this->top_->cpu_data()[0], 1e-6);
  EXPECT_EQ(2, layer.num_present());
  vector<bool> propagate_down(3, false);
  propagate_down[0] = true;
  layer.Backward(this->top_vec_, propagate_down, this->bottom_vec_);
  // dL/dz_S = lambda / (N tau2) (p_S - p_T) in the present columns.
  const Dtype* dz = this->logits_->cpu_diff();
  EXPECT_NEAR((ps0 - pt0) / 4, dz[0], 1e-6);
  EXPECT_EQ(Dtype(0), dz[1]);
  EXPECT_NEAR(-(ps0 - pt0) / 4, dz[2], 1e-6);
  EXPECT_NEAR((ps1 - pt1) / 4, dz[3], 1e-6);
  EXPECT_EQ(Dtype(0), dz[4]);
  EXPECT_NEAR(-(ps1 - pt1) / 4, dz[5], 1e-6);
}

TYPED_TEST(LocalCenterKDLossLayerTest, TestForwardGlobalMatchesLoops) {
  this->CheckAgainstReference(RelationParameter_Centers_GLOBAL);
}

TYPED_TEST(LocalCenterKDLossLayerTest, TestForwardLocalMatchesLoops) {
  this->CheckAgainstReference(RelationParameter_Centers_LOCAL);
}

TYPED_TEST(LocalCenterKDLossLayerTest, TestGradientGlobal) {
  this->CheckGradient(RelationParameter_Centers_GLOBAL);
}

TYPED_TEST(LocalCenterKDLossLayerTest, TestGradientLocal) {
  this->CheckGradient(RelationParameter_Centers_LOCAL);
}

// LOCAL leaves the blob unused: the checker, given the layer itself, finds a
// zero gradient for it as well.
TYPED_TEST(LocalCenterKDLossLayerTest, TestGradientLocalWithBlob) {
  typedef typename TypeParam::Dtype Dtype;
  LocalCenterKDLossLayer<Dtype> layer(
      this->Param(RelationParameter_Centers_LOCAL, 2, 3));
  GradientChecker<Dtype> checker(1e-2, 1e-3);
  checker.CheckGradientExhaustive(&layer, this->bottom_vec_, this->top_vec_,
      0);
}

// One class in the batch: one column, both distributions are 1 there.
TYPED_TEST(LocalCenterKDLossLayerTest, TestOneClassGivesZeros) {
  typedef typename TypeParam::Dtype Dtype;
  caffe_set(6, Dtype(2), this->label_->mutable_cpu_data());
  for (int mode = 0; mode < 2; ++mode) {
    LocalCenterKDLossLayer<Dtype> layer(this->Param(
        static_cast<RelationParameter_Centers>(mode), 2, 100));
    this->SetUpWithCenters(&layer);
    layer.Forward(this->bottom_vec_, this->top_vec_);
    EXPECT_EQ(1, layer.num_present());
    EXPECT_EQ(Dtype(0), this->top_->cpu_data()[0]);
    vector<bool> propagate_down(3, false);
    propagate_down[0] = true;
    layer.Backward(this->top_vec_, propagate_down, this->bottom_vec_);
    for (int k = 0; k < this->logits_->count(); ++k) {
      EXPECT_EQ(Dtype(0), this->logits_->cpu_diff()[k]) << "at " << k;
    }
  }
}

// Logits of 1e30 scale and a zero teacher row stay finite.
TYPED_TEST(LocalCenterKDLossLayerTest, TestExtremeInputsStayFinite) {
  typedef typename TypeParam::Dtype Dtype;
  Dtype* z = this->logits_->mutable_cpu_data();
  z[0] = 1e30;
  z[2] = -1e30;
  z[7] = 3e29;
  caffe_set(3, Dtype(0), this->teacher_->mutable_cpu_data() + 3);
  for (int mode = 0; mode < 2; ++mode) {
    LocalCenterKDLossLayer<Dtype> layer(this->Param(
        static_cast<RelationParameter_Centers>(mode), 2, 100));
    this->SetUpWithCenters(&layer);
    layer.Forward(this->bottom_vec_, this->top_vec_);
    EXPECT_TRUE(std::isfinite(this->top_->cpu_data()[0]));
    vector<bool> propagate_down(3, false);
    propagate_down[0] = true;
    layer.Backward(this->top_vec_, propagate_down, this->bottom_vec_);
    for (int k = 0; k < this->logits_->count(); ++k) {
      EXPECT_TRUE(std::isfinite(this->logits_->cpu_diff()[k])) << "at " << k;
    }
  }
}

// Bad input dies with a message naming the layer, the blobs and the shapes.
template <typename Dtype>
class LocalCenterKDLossLayerDeathTest : public CPUDeviceTest<Dtype> {
 protected:
  LocalCenterKDLossLayerDeathTest()
      : logits_(4, 5, 1, 1), teacher_(4, 3, 1, 1),
        label_(vector<int>(1, 4)), top_vec_(1, &top_) {
    FillerParameter filler_param;
    GaussianFiller<Dtype> filler(filler_param);
    filler.Fill(&logits_);
    filler.Fill(&teacher_);
    for (int i = 0; i < 4; ++i) label_.mutable_cpu_data()[i] = i;
    bottom_vec_.push_back(&logits_);
    bottom_vec_.push_back(&teacher_);
    bottom_vec_.push_back(&label_);
    ::testing::FLAGS_gtest_death_test_style = "threadsafe";
  }
  static LayerParameter Param(bool fixed = true) {
    LayerParameter param;
    param.set_name("kd");
    param.add_bottom("logits");
    param.add_bottom("feat_t");
    param.add_bottom("label");
    if (fixed) {
      param.add_param()->set_lr_mult(0);
      param.mutable_param(0)->set_decay_mult(0);
    }
    return param;
  }
  void SetUpAndForward(const LayerParameter& param, bool fill) {
    LocalCenterKDLossLayer<Dtype> layer(param);
    layer.SetUp(bottom_vec_, top_vec_);
    if (fill) {
      caffe_set(layer.blobs()[0]->count(), Dtype(1),
          layer.blobs()[0]->mutable_cpu_data());
    }
    layer.Forward(bottom_vec_, top_vec_);
  }
  Blob<Dtype> logits_, teacher_, label_, top_;
  vector<Blob<Dtype>*> bottom_vec_, top_vec_;
};

TYPED_TEST_CASE(LocalCenterKDLossLayerDeathTest, TestDtypes);

TYPED_TEST(LocalCenterKDLossLayerDeathTest, TestUnfilledCentersDie) {
  EXPECT_DEATH(this->SetUpAndForward(this->Param(), false),
      "LocalCenterKDLoss layer 'kd': the class centers "
      "\\(blobs_\\[0\\], 5 3 \\(15\\)\\) were not filled: the row of class 0,"
      " present in this batch, is all zero");
}

TYPED_TEST(LocalCenterKDLossLayerDeathTest, TestMissingParamSpecDies) {
  EXPECT_DEATH(this->SetUpAndForward(this->Param(false), true),
      "LocalCenterKDLoss layer 'kd': its class centers \\(blobs_\\[0\\], "
      "K x D'\\) are a fixed parameter, but the layer has no param spec.*"
      "add  param \\{ lr_mult: 0 decay_mult: 0 \\}  to the layer");
}

TYPED_TEST(LocalCenterKDLossLayerDeathTest, TestTrainedCentersDie) {
  LayerParameter param = this->Param(false);
  param.add_param()->set_lr_mult(0);  // decay_mult stays 1
  EXPECT_DEATH(this->SetUpAndForward(param, true),
      "LocalCenterKDLoss layer 'kd': its class centers .* but the layer gives"
      " lr_mult 0 decay_mult 1; add  param \\{ lr_mult: 0 decay_mult: 0 \\}");
}

TYPED_TEST(LocalCenterKDLossLayerDeathTest, TestWrongCenterShapeDies) {
  LayerParameter param = this->Param();
  BlobProto* blob = param.add_blobs();
  blob->mutable_shape()->add_dim(3);
  blob->mutable_shape()->add_dim(5);
  for (int k = 0; k < 15; ++k) blob->add_data(1);
  EXPECT_DEATH(this->SetUpAndForward(param, false),
      "LocalCenterKDLoss layer 'kd': the class-center blob \\(blobs_\\[0\\]\\)"
      " is \\(3 5 \\(15\\)\\) but must be K x D' = 5 x 3 for "
      "bottom\\[0\\] 'logits' \\(4 5 1 1 \\(20\\)\\) and "
      "bottom\\[1\\] 'feat_t' \\(4 3 1 1 \\(12\\)\\)");
}

TYPED_TEST(LocalCenterKDLossLayerDeathTest, TestInstanceMismatchDies) {
  this->teacher_.Reshape(5, 3, 1, 1);
  EXPECT_DEATH(this->SetUpAndForward(this->Param(), true),
      "LocalCenterKDLoss layer 'kd': "
      "bottom\\[0\\] 'logits' \\(4 5 1 1 \\(20\\)\\) and "
      "bottom\\[1\\] 'feat_t' \\(5 3 1 1 \\(15\\)\\) must hold the same "
      "number of instances");
}

TYPED_TEST(LocalCenterKDLossLayerDeathTest, TestLabelCountDies) {
  this->label_.Reshape(vector<int>(1, 5));
  EXPECT_DEATH(this->SetUpAndForward(this->Param(), true),
      "LocalCenterKDLoss layer 'kd': bottom\\[2\\] 'label' \\(5 \\(5\\)\\) "
      "must hold N = 4 labels");
}

TYPED_TEST(LocalCenterKDLossLayerDeathTest, TestLabelOutOfRangeDies) {
  this->label_.mutable_cpu_data()[2] = 5;
  EXPECT_DEATH(this->SetUpAndForward(this->Param(), true),
      "LocalCenterKDLoss layer 'kd': bottom\\[2\\] 'label' \\(4 \\(4\\)\\) "
      "entry 2 is 5; labels must be integers in \\[0, K\\) with K = 5");
}

TYPED_TEST(LocalCenterKDLossLayerDeathTest, TestNonIntegerLabelDies) {
  this->label_.mutable_cpu_data()[0] = 0.5;
  EXPECT_DEATH(this->SetUpAndForward(this->Param(), true),
      "entry 0 is 0.5; labels must be integers in \\[0, K\\) with K = 5");
}

TYPED_TEST(LocalCenterKDLossLayerDeathTest, TestTeacherGradientDies) {
  LocalCenterKDLossLayer<TypeParam> layer(this->Param());
  layer.SetUp(this->bottom_vec_, this->top_vec_);
  caffe_set(layer.blobs()[0]->count(), TypeParam(1),
      layer.blobs()[0]->mutable_cpu_data());
  layer.Forward(this->bottom_vec_, this->top_vec_);
  vector<bool> propagate_down(3, false);
  propagate_down[1] = true;
  EXPECT_DEATH(layer.Backward(this->top_vec_, propagate_down,
      this->bottom_vec_),
      "LocalCenterKDLoss layer 'kd' cannot backpropagate to "
      "bottom\\[1\\] 'feat_t' \\(4 3 1 1 \\(12\\)\\), the teacher embedding");
}

TYPED_TEST(LocalCenterKDLossLayerDeathTest, TestNonPositiveTau2Dies) {
  LayerParameter param = this->Param();
  param.mutable_relation_param()->set_tau2(-1);
  EXPECT_DEATH(this->SetUpAndForward(param, true),
      "LocalCenterKDLoss layer 'kd': relation_param.tau2 is -1; "
      "it must be > 0");
}

}  // namespace caffe
