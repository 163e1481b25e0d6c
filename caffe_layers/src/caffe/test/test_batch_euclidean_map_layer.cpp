#include <cmath>
#include <vector>

#include "gtest/gtest.h"

#include "caffe/blob.hpp"
#include "caffe/common.hpp"
#include "caffe/filler.hpp"
#include "caffe/layers/batch_euclidean_map_layer.hpp"

#include "caffe/test/test_caffe_main.hpp"
#include "caffe/test/test_gradient_check_util.hpp"

namespace caffe {

template <typename TypeParam>
class BatchEuclideanMapLayerTest : public MultiDeviceTest<TypeParam> {
  typedef typename TypeParam::Dtype Dtype;

 protected:
  BatchEuclideanMapLayerTest()
      : blob_bottom_(new Blob<Dtype>(5, 3, 1, 1)),
        blob_top_(new Blob<Dtype>()) {
    FillerParameter filler_param;
    GaussianFiller<Dtype> filler(filler_param);
    filler.Fill(blob_bottom_);
    SeparateFirstInstance(blob_bottom_);
    blob_bottom_vec_.push_back(blob_bottom_);
    blob_top_vec_.push_back(blob_top_);
  }
  virtual ~BatchEuclideanMapLayerTest() {
    delete blob_bottom_;
    delete blob_top_;
  }

  // Moves instance 0 away from the others so that one pair is clearly the
  // farthest: the MAX normalizer then has no kink within the checker's step.
  static void SeparateFirstInstance(Blob<Dtype>* blob) {
    Dtype* x = blob->mutable_cpu_data();
    for (int k = 0; k < blob->count(1); ++k) x[k] += 4;
  }

  static LayerParameter Param(IRGParameter_Normalize normalize, bool squared,
      IRGParameter_Backward backward = IRGParameter_Backward_EXACT) {
    LayerParameter param;
    param.set_name("edges");
    param.mutable_irg_param()->set_normalize(normalize);
    param.mutable_irg_param()->set_squared(squared);
    param.mutable_irg_param()->set_backward(backward);
    return param;
  }

  void CheckGradient(IRGParameter_Normalize normalize, bool squared) {
    LayerParameter param = Param(normalize, squared);
    BatchEuclideanMapLayer<Dtype> layer(param);
    GradientChecker<Dtype> checker(1e-2, 1e-3);
    checker.CheckGradientExhaustive(&layer, blob_bottom_vec_, blob_top_vec_);
  }

  // x_i in R^1 at 0, 1 and 3: squared distances 1 (0-1), 9 (0-3), 4 (1-3).
  void CheckHandComputed(IRGParameter_Normalize normalize, bool squared,
      const Dtype expected_upper[3]) {
    Blob<Dtype> bottom(3, 1, 1, 1);
    Dtype* x = bottom.mutable_cpu_data();
    x[0] = 0; x[1] = 1; x[2] = 3;
    vector<Blob<Dtype>*> bottom_vec(1, &bottom);
    BatchEuclideanMapLayer<Dtype> layer(Param(normalize, squared));
    layer.SetUp(bottom_vec, blob_top_vec_);
    layer.Forward(bottom_vec, blob_top_vec_);
    const Dtype* a = blob_top_->cpu_data();
    const int upper[3][2] = {{0, 1}, {0, 2}, {1, 2}};
    for (int k = 0; k < 3; ++k) {
      const int i = upper[k][0], j = upper[k][1];
      EXPECT_NEAR(expected_upper[k], a[i * 3 + j], 1e-6) << i << "," << j;
      EXPECT_EQ(a[i * 3 + j], a[j * 3 + i]);
    }
    for (int i = 0; i < 3; ++i) EXPECT_EQ(Dtype(0), a[i * 3 + i]);
  }

  void ExpectAllZero(const Dtype* v, int count) {
    for (int k = 0; k < count; ++k) {
      EXPECT_FALSE(std::isnan(v[k]));
      EXPECT_EQ(Dtype(0), v[k]) << "at " << k;
    }
  }

  Blob<Dtype>* const blob_bottom_;
  Blob<Dtype>* const blob_top_;
  vector<Blob<Dtype>*> blob_bottom_vec_;
  vector<Blob<Dtype>*> blob_top_vec_;
};

TYPED_TEST_CASE(BatchEuclideanMapLayerTest, TestDtypesAndDevices);

TYPED_TEST(BatchEuclideanMapLayerTest, TestSetUp4D) {
  typedef typename TypeParam::Dtype Dtype;
  Blob<Dtype> bottom(7, 2, 3, 4);
  vector<Blob<Dtype>*> bottom_vec(1, &bottom);
  LayerParameter param;
  BatchEuclideanMapLayer<Dtype> layer(param);
  layer.SetUp(bottom_vec, this->blob_top_vec_);
  EXPECT_EQ(this->blob_top_->num_axes(), 4);
  EXPECT_EQ(this->blob_top_->shape(0), 7);
  EXPECT_EQ(this->blob_top_->shape(1), 7);
  EXPECT_EQ(this->blob_top_->shape(2), 1);
  EXPECT_EQ(this->blob_top_->shape(3), 1);
}

TYPED_TEST(BatchEuclideanMapLayerTest, TestDefaultsMatchRelease) {
  LayerParameter param;
  EXPECT_EQ(IRGParameter_Normalize_MAX, param.irg_param().normalize());
  EXPECT_TRUE(param.irg_param().squared());
  EXPECT_EQ(IRGParameter_Backward_EXACT, param.irg_param().backward());
}

TYPED_TEST(BatchEuclideanMapLayerTest, TestForwardHandComputed) {
  typedef typename TypeParam::Dtype Dtype;
  const Dtype max_sq[3] = {Dtype(1) / 9, Dtype(1), Dtype(4) / 9};
  this->CheckHandComputed(IRGParameter_Normalize_MAX, true, max_sq);
  // Off-diagonal mean of squared distances: 2 * (1 + 9 + 4) / 6 = 14 / 3.
  const Dtype mean_sq[3] = {Dtype(3) / 14, Dtype(27) / 14, Dtype(12) / 14};
  this->CheckHandComputed(IRGParameter_Normalize_MEAN, true, mean_sq);
  const Dtype none_sq[3] = {1, 9, 4};
  this->CheckHandComputed(IRGParameter_Normalize_NONE, true, none_sq);
  const Dtype max_l2[3] = {Dtype(1) / 3, Dtype(1), Dtype(2) / 3};
  this->CheckHandComputed(IRGParameter_Normalize_MAX, false, max_l2);
  // Off-diagonal mean of distances: 2 * (1 + 3 + 2) / 6 = 2.
  const Dtype mean_l2[3] = {Dtype(0.5), Dtype(1.5), Dtype(1)};
  this->CheckHandComputed(IRGParameter_Normalize_MEAN, false, mean_l2);
  const Dtype none_l2[3] = {1, 3, 2};
  this->CheckHandComputed(IRGParameter_Normalize_NONE, false, none_l2);
}

TYPED_TEST(BatchEuclideanMapLayerTest, TestGradientMaxSquared) {
  this->CheckGradient(IRGParameter_Normalize_MAX, true);
}

TYPED_TEST(BatchEuclideanMapLayerTest, TestGradientMaxL2) {
  this->CheckGradient(IRGParameter_Normalize_MAX, false);
}

TYPED_TEST(BatchEuclideanMapLayerTest, TestGradientMeanSquared) {
  this->CheckGradient(IRGParameter_Normalize_MEAN, true);
}

TYPED_TEST(BatchEuclideanMapLayerTest, TestGradientMeanL2) {
  this->CheckGradient(IRGParameter_Normalize_MEAN, false);
}

TYPED_TEST(BatchEuclideanMapLayerTest, TestGradientNoneSquared) {
  this->CheckGradient(IRGParameter_Normalize_NONE, true);
}

TYPED_TEST(BatchEuclideanMapLayerTest, TestGradientNoneL2) {
  this->CheckGradient(IRGParameter_Normalize_NONE, false);
}

TYPED_TEST(BatchEuclideanMapLayerTest, TestGradient4D) {
  typedef typename TypeParam::Dtype Dtype;
  Blob<Dtype> bottom(4, 2, 2, 1);
  FillerParameter filler_param;
  GaussianFiller<Dtype> filler(filler_param);
  filler.Fill(&bottom);
  this->SeparateFirstInstance(&bottom);
  vector<Blob<Dtype>*> bottom_vec(1, &bottom);
  BatchEuclideanMapLayer<Dtype> layer(
      this->Param(IRGParameter_Normalize_MAX, true));
  GradientChecker<Dtype> checker(1e-2, 1e-3);
  checker.CheckGradientExhaustive(&layer, bottom_vec, this->blob_top_vec_);
}

// RELEASED: dx_i = sum_j G_ij dd_ij/dx_i / m with m constant, one-sided,
// for a non-symmetric G; written out here pair by pair.
TYPED_TEST(BatchEuclideanMapLayerTest, TestReleasedBackwardFormula) {
  typedef typename TypeParam::Dtype Dtype;
  const IRGParameter_Normalize modes[3] = {IRGParameter_Normalize_MAX,
      IRGParameter_Normalize_MEAN, IRGParameter_Normalize_NONE};
  for (int squared = 0; squared < 2; ++squared) {
    for (int mode = 0; mode < 3; ++mode) {
      BatchEuclideanMapLayer<Dtype> layer(this->Param(modes[mode], squared,
          IRGParameter_Backward_RELEASED));
      layer.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
      layer.Forward(this->blob_bottom_vec_, this->blob_top_vec_);
      const int n = this->blob_bottom_->shape(0);
      const int dim = this->blob_bottom_->count(1);
      Blob<Dtype> upstream(n, n, 1, 1);
      FillerParameter filler_param;
      GaussianFiller<Dtype> filler(filler_param);
      filler.Fill(&upstream);
      caffe_copy(upstream.count(), upstream.cpu_data(),
          this->blob_top_->mutable_cpu_diff());
      const Dtype* x = this->blob_bottom_->cpu_data();
      // The normalizer the forward used, read back from the pair (0, 1).
      Dtype q01 = 0;
      for (int k = 0; k < dim; ++k) {
        q01 += (x[k] - x[dim + k]) * (x[k] - x[dim + k]);
      }
      const Dtype m =
          (squared ? q01 : std::sqrt(q01)) / this->blob_top_->cpu_data()[1];
      vector<bool> propagate_down(1, true);
      layer.Backward(this->blob_top_vec_, propagate_down,
          this->blob_bottom_vec_);
      const Dtype* g = this->blob_top_->cpu_diff();
      const Dtype* dx = this->blob_bottom_->cpu_diff();
      for (int i = 0; i < n; ++i) {
        for (int k = 0; k < dim; ++k) {
          Dtype expected = 0;
          for (int j = 0; j < n; ++j) {
            if (i == j) continue;
            Dtype q = 0;
            for (int c = 0; c < dim; ++c) {
              const Dtype e = x[i * dim + c] - x[j * dim + c];
              q += e * e;
            }
            const Dtype diff = x[i * dim + k] - x[j * dim + k];
            const Dtype dd_dx = squared ? 2 * diff : diff / std::sqrt(q);
            expected += g[i * n + j] * dd_dx / m;
          }
          EXPECT_NEAR(expected, dx[i * dim + k],
              1e-4 * (1 + std::fabs(expected)))
              << "squared " << squared << " mode " << mode << " i " << i;
        }
      }
    }
  }
}

TYPED_TEST(BatchEuclideanMapLayerTest, TestZeroNormalizerGivesZeros) {
  typedef typename TypeParam::Dtype Dtype;
  const IRGParameter_Normalize modes[2] = {IRGParameter_Normalize_MAX,
      IRGParameter_Normalize_MEAN};
  for (int squared = 0; squared < 2; ++squared) {
    for (int mode = 0; mode < 2; ++mode) {
      caffe_set(this->blob_bottom_->count(), Dtype(0),
          this->blob_bottom_->mutable_cpu_data());
      BatchEuclideanMapLayer<Dtype> layer(this->Param(modes[mode], squared));
      layer.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
      layer.Forward(this->blob_bottom_vec_, this->blob_top_vec_);
      this->ExpectAllZero(this->blob_top_->cpu_data(),
          this->blob_top_->count());
      caffe_set(this->blob_top_->count(), Dtype(1),
          this->blob_top_->mutable_cpu_diff());
      layer.Backward(this->blob_top_vec_, vector<bool>(1, true),
          this->blob_bottom_vec_);
      this->ExpectAllZero(this->blob_bottom_->cpu_diff(),
          this->blob_bottom_->count());
    }
  }
}

TYPED_TEST(BatchEuclideanMapLayerTest, TestSingleInstance) {
  typedef typename TypeParam::Dtype Dtype;
  Blob<Dtype> bottom(1, 4, 1, 1);
  FillerParameter filler_param;
  GaussianFiller<Dtype> filler(filler_param);
  filler.Fill(&bottom);
  vector<Blob<Dtype>*> bottom_vec(1, &bottom);
  for (int mode = 0; mode < 3; ++mode) {
    BatchEuclideanMapLayer<Dtype> layer(
        this->Param(static_cast<IRGParameter_Normalize>(mode), false));
    layer.SetUp(bottom_vec, this->blob_top_vec_);
    layer.Forward(bottom_vec, this->blob_top_vec_);
    ASSERT_EQ(1, this->blob_top_->count());
    this->ExpectAllZero(this->blob_top_->cpu_data(), 1);
    this->blob_top_->mutable_cpu_diff()[0] = 1;
    layer.Backward(this->blob_top_vec_, vector<bool>(1, true), bottom_vec);
    this->ExpectAllZero(bottom.cpu_diff(), bottom.count());
  }
}

// Duplicated instances: the Gram formula would leave rounding noise where the
// distance is 0; the layer recomputes such pairs, so the entry is exactly 0
// and the Euclidean (non-squared) gradient stays finite.
TYPED_TEST(BatchEuclideanMapLayerTest, TestDuplicatedInstances) {
  typedef typename TypeParam::Dtype Dtype;
  Dtype* x = this->blob_bottom_->mutable_cpu_data();
  const int n = this->blob_bottom_->shape(0);
  const int dim = this->blob_bottom_->count(1);
  for (int k = 0; k < dim; ++k) {
    x[2 * dim + k] = x[dim + k] = Dtype(0.1) * k + 7;
  }
  BatchEuclideanMapLayer<Dtype> layer(
      this->Param(IRGParameter_Normalize_MAX, false));
  layer.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  layer.Forward(this->blob_bottom_vec_, this->blob_top_vec_);
  EXPECT_EQ(Dtype(0), this->blob_top_->cpu_data()[1 * n + 2]);
  EXPECT_EQ(Dtype(0), this->blob_top_->cpu_data()[2 * n + 1]);
  caffe_set(this->blob_top_->count(), Dtype(1),
      this->blob_top_->mutable_cpu_diff());
  layer.Backward(this->blob_top_vec_, vector<bool>(1, true),
      this->blob_bottom_vec_);
  const Dtype* dx = this->blob_bottom_->cpu_diff();
  for (int k = 0; k < this->blob_bottom_->count(); ++k) {
    EXPECT_TRUE(std::isfinite(dx[k])) << "at " << k;
  }
}

// A large common offset makes K_ii + K_jj - 2 K_ij cancel catastrophically;
// the layer must still match distances computed directly.
TYPED_TEST(BatchEuclideanMapLayerTest, TestLargeOffsetAccuracy) {
  typedef typename TypeParam::Dtype Dtype;
  Dtype* x = this->blob_bottom_->mutable_cpu_data();
  const int n = this->blob_bottom_->shape(0);
  const int dim = this->blob_bottom_->count(1);
  for (int k = 0; k < this->blob_bottom_->count(); ++k) x[k] += 1000;
  BatchEuclideanMapLayer<Dtype> layer(
      this->Param(IRGParameter_Normalize_NONE, true));
  layer.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  layer.Forward(this->blob_bottom_vec_, this->blob_top_vec_);
  const Dtype* a = this->blob_top_->cpu_data();
  for (int i = 0; i < n; ++i) {
    for (int j = 0; j < n; ++j) {
      double q = 0;
      for (int k = 0; k < dim; ++k) {
        const double diff =
            static_cast<double>(x[i * dim + k]) - x[j * dim + k];
        q += diff * diff;
      }
      EXPECT_NEAR(q, a[i * n + j], 1e-3 * (1 + q)) << i << "," << j;
    }
  }
}

TYPED_TEST(BatchEuclideanMapLayerTest, TestPropagateDownFalse) {
  typedef typename TypeParam::Dtype Dtype;
  BatchEuclideanMapLayer<Dtype> layer(
      this->Param(IRGParameter_Normalize_MAX, true));
  layer.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  layer.Forward(this->blob_bottom_vec_, this->blob_top_vec_);
  caffe_set(this->blob_bottom_->count(), Dtype(42),
      this->blob_bottom_->mutable_cpu_diff());
  caffe_set(this->blob_top_->count(), Dtype(1),
      this->blob_top_->mutable_cpu_diff());
  layer.Backward(this->blob_top_vec_, vector<bool>(1, false),
      this->blob_bottom_vec_);
  for (int k = 0; k < this->blob_bottom_->count(); ++k) {
    EXPECT_EQ(Dtype(42), this->blob_bottom_->cpu_diff()[k]);
  }
}

// Bad input dies with a message naming the layer, the blobs and the shapes.
template <typename Dtype>
class BatchEuclideanMapLayerDeathTest : public CPUDeviceTest<Dtype> {};

TYPED_TEST_CASE(BatchEuclideanMapLayerDeathTest, TestDtypes);

TYPED_TEST(BatchEuclideanMapLayerDeathTest, TestTwoBottomsDie) {
  ::testing::FLAGS_gtest_death_test_style = "threadsafe";
  Blob<TypeParam> a(3, 2, 1, 1), b(4, 2, 1, 1), top;
  vector<Blob<TypeParam>*> bottom_vec, top_vec(1, &top);
  bottom_vec.push_back(&a);
  bottom_vec.push_back(&b);
  LayerParameter param;
  param.set_name("edges");
  param.add_bottom("feat_t");
  param.add_bottom("feat_s");
  BatchEuclideanMapLayer<TypeParam> layer(param);
  EXPECT_DEATH(layer.SetUp(bottom_vec, top_vec),
      "BatchEuclideanMap layer 'edges' takes exactly one bottom.*"
      "bottom\\[0\\] 'feat_t' \\(3 2 1 1 \\(6\\)\\) "
      "bottom\\[1\\] 'feat_s' \\(4 2 1 1 \\(8\\)\\)");
}

TYPED_TEST(BatchEuclideanMapLayerDeathTest, TestNoTopDies) {
  ::testing::FLAGS_gtest_death_test_style = "threadsafe";
  Blob<TypeParam> a(3, 2, 1, 1);
  vector<Blob<TypeParam>*> bottom_vec(1, &a), top_vec;
  LayerParameter param;
  param.set_name("edges");
  BatchEuclideanMapLayer<TypeParam> layer(param);
  EXPECT_DEATH(layer.SetUp(bottom_vec, top_vec),
      "BatchEuclideanMap layer 'edges' produces exactly one top");
}

}  // namespace caffe
