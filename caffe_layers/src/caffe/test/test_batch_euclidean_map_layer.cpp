#include <stdint.h>

#include <algorithm>
#include <cmath>
#include <sstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"

#include "caffe/blob.hpp"
#include "caffe/common.hpp"
#include "caffe/filler.hpp"
#include "caffe/layers/batch_euclidean_map_layer.hpp"

#include "caffe/test/test_caffe_main.hpp"
#include "caffe/test/test_gradient_check_util.hpp"
#include "caffe/test/test_irg_device_util.hpp"

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

// Near-duplicate instances at the size of a ResNet stage's feature map
// (D = 512 x 7 x 7 = 25,088): a squared distance of 1.5 x 1024 epsilons of
// the norms, where the Gram matrix's rounding (~sqrt(D) epsilons of the norms)
// would leave an error of about 13% in float; the tolerance grows with D, so
// the pair is recomputed directly and comes out to a few epsilons.
TYPED_TEST(BatchEuclideanMapLayerTest, TestNearDuplicatesAtLargeD) {
  typedef typename TypeParam::Dtype Dtype;
  const int n = 4, dim = 25088;
  Blob<Dtype> bottom(n, dim, 1, 1);
  FillerParameter filler_param;
  GaussianFiller<Dtype> filler(filler_param);
  filler.Fill(&bottom);
  Blob<Dtype> step(1, dim, 1, 1);
  filler.Fill(&step);
  const double eps = sizeof(Dtype) == 4 ? 1.1920929e-07 : 2.220446049250313e-16;
  Dtype* x = bottom.mutable_cpu_data();
  double norms = 0, steps = 0;
  for (int k = 0; k < dim; ++k) {
    norms += 2. * x[k] * x[k];
    steps += static_cast<double>(step.cpu_data()[k]) * step.cpu_data()[k];
  }
  const double delta = std::sqrt(1.5 * 1024 * eps * norms / steps);
  for (int k = 0; k < dim; ++k) {
    x[dim + k] = x[k] + static_cast<Dtype>(delta * step.cpu_data()[k]);
  }
  double q = 0;
  for (int k = 0; k < dim; ++k) {
    const double diff = static_cast<double>(x[dim + k]) - x[k];
    q += diff * diff;
  }
  vector<Blob<Dtype>*> bottom_vec(1, &bottom);
  BatchEuclideanMapLayer<Dtype> layer(
      this->Param(IRGParameter_Normalize_NONE, true));
  layer.SetUp(bottom_vec, this->blob_top_vec_);
  layer.Forward(bottom_vec, this->blob_top_vec_);
  EXPECT_NEAR(q, this->blob_top_->cpu_data()[1], 1e-3 * q);
  EXPECT_NEAR(q, this->blob_top_->cpu_data()[n], 1e-3 * q);
}

// Exact ties for the maximum: the 8 corners of the unit cube, whose 4
// antipodal pairs (8 entries) share the largest squared distance, 3. Each tie
// is exactly 1 and every other entry below it; EXACT's gradient through m is
// shared equally by the ties, so it equals the NONE layer's (m = 1) gradient
// for the upstream G / m - (sum(G * A) / m / #ties) on the ties.
TYPED_TEST(BatchEuclideanMapLayerTest, TestTiedMaxima) {
  typedef typename TypeParam::Dtype Dtype;
  const int n = 8, dim = 3;
  for (int sq = 0; sq < 2; ++sq) {
    Blob<Dtype> bottom(n, dim, 1, 1);
    Dtype* x = bottom.mutable_cpu_data();
    for (int i = 0; i < n; ++i) {
      for (int k = 0; k < dim; ++k) x[i * dim + k] = (i >> k) & 1;
    }
    vector<Blob<Dtype>*> bottom_vec(1, &bottom);
    BatchEuclideanMapLayer<Dtype> layer(
        this->Param(IRGParameter_Normalize_MAX, sq == 1));
    layer.SetUp(bottom_vec, this->blob_top_vec_);
    layer.Forward(bottom_vec, this->blob_top_vec_);
    const Dtype* a = this->blob_top_->cpu_data();
    const double m = sq ? 3. : std::sqrt(3.);
    int ties = 0;
    vector<Dtype> g(n * n), g_none(n * n);
    double ga = 0;
    for (int k = 0; k < n * n; ++k) {
      g[k] = Dtype(0.1) * ((k * 7) % 11) - Dtype(0.4);
      ga += static_cast<double>(g[k]) * a[k];
      if (a[k] == Dtype(1)) {
        ++ties;
        EXPECT_EQ(7, (k / n) ^ (k % n)) << "a tie at a non-antipodal pair";
      } else {
        EXPECT_LT(a[k], Dtype(1));
      }
    }
    ASSERT_EQ(8, ties);
    for (int k = 0; k < n * n; ++k) {
      g_none[k] = static_cast<Dtype>(g[k] / m
          - (a[k] == Dtype(1) ? ga / m / ties : 0.));
    }
    std::copy(g.begin(), g.end(), this->blob_top_->mutable_cpu_diff());
    layer.Backward(this->blob_top_vec_, vector<bool>(1, true), bottom_vec);
    const vector<Dtype> dx_max(bottom.cpu_diff(),
        bottom.cpu_diff() + bottom.count());
    BatchEuclideanMapLayer<Dtype> none(
        this->Param(IRGParameter_Normalize_NONE, sq == 1));
    none.SetUp(bottom_vec, this->blob_top_vec_);
    none.Forward(bottom_vec, this->blob_top_vec_);
    std::copy(g_none.begin(), g_none.end(),
        this->blob_top_->mutable_cpu_diff());
    none.Backward(this->blob_top_vec_, vector<bool>(1, true), bottom_vec);
    for (int k = 0; k < bottom.count(); ++k) {
      EXPECT_NEAR(dx_max[k], bottom.cpu_diff()[k], 1e-5) << "at " << k;
    }
  }
}

// Bad input dies with a message naming the layer, the blobs and the shapes
// (the blob counts: Caffe's own message, naming the layer type).
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
  // Caffe's own blob-count check (ExactNumBottomBlobs), naming the type.
  EXPECT_DEATH(layer.SetUp(bottom_vec, top_vec),
      "BatchEuclideanMap Layer takes 1 bottom blob\\(s\\) as input");
}

TYPED_TEST(BatchEuclideanMapLayerDeathTest, TestNoTopDies) {
  ::testing::FLAGS_gtest_death_test_style = "threadsafe";
  Blob<TypeParam> a(3, 2, 1, 1);
  vector<Blob<TypeParam>*> bottom_vec(1, &a), top_vec;
  LayerParameter param;
  param.set_name("edges");
  BatchEuclideanMapLayer<TypeParam> layer(param);
  EXPECT_DEATH(layer.SetUp(bottom_vec, top_vec),
      "BatchEuclideanMap Layer produces 1 top blob\\(s\\) as output");
}

// N = 46341: the N x N top would pass the 2^31 - 1 entries of a blob.
TYPED_TEST(BatchEuclideanMapLayerDeathTest, TestTooManyInstancesDies) {
  ::testing::FLAGS_gtest_death_test_style = "threadsafe";
  Blob<TypeParam> a(46341, 1, 1, 1), top;
  vector<Blob<TypeParam>*> bottom_vec(1, &a), top_vec(1, &top);
  LayerParameter param;
  param.set_name("edges");
  param.add_bottom("feat");
  BatchEuclideanMapLayer<TypeParam> layer(param);
  EXPECT_DEATH(layer.SetUp(bottom_vec, top_vec),
      "BatchEuclideanMap layer 'edges': bottom\\[0\\] 'feat' "
      "\\(46341 1 1 1 \\(46341\\)\\) has N = 46341 instances; its N x N "
      "distance matrix would exceed the 2147483647 entries");
}

#ifndef CPU_ONLY
// The GPU path against the CPU path on the same inputs, at sizes where the
// launches span many blocks and the grid-stride loops and reductions run
// several rounds: every normalize x squared x backward, float and double.
// Tolerance: irg_test::DeviceTolerance (rounding of sums of D or N terms,
// relative to the largest entry). Where two pairs are within rounding of the
// largest distance, which one is the maximum may legitimately differ between
// the devices, so random inputs get one clearly farthest pair (instances 0 and
// 1 pushed apart); exact ties are tested with exactly representable inputs.
template <typename Dtype>
class BatchEuclideanMapLayerGPUvsCPUTest : public GPUDeviceTest<Dtype> {
 protected:
  static LayerParameter Param(int normalize, bool squared, int backward) {
    LayerParameter param;
    param.set_name("edges");
    IRGParameter* p = param.mutable_irg_param();
    p->set_normalize(static_cast<IRGParameter_Normalize>(normalize));
    p->set_squared(squared);
    p->set_backward(static_cast<IRGParameter_Backward>(backward));
    return param;
  }

  // Random N x D features with one clearly farthest pair. Below D = 8,
  // random points in a large batch come within 1e-6 of each other, where
  // the Euclidean gradient's 1 / d makes the comparison ill-conditioned, so
  // the instances also sit one apart along the first axis.
  static void FillSeparated(Blob<Dtype>* x) {
    FillerParameter filler_param;
    GaussianFiller<Dtype> filler(filler_param);
    filler.Fill(x);
    const int n = x->shape(0), dim = x->count(1);
    Dtype* data = x->mutable_cpu_data();
    if (dim < 8) {
      for (int i = 0; i < n; ++i) {
        data[i * dim] = Dtype(0.1) * data[i * dim] + i;
      }
    }
    if (n < 2) return;
    for (int k = 0; k < dim; ++k) {
      data[k] += 8;
      data[dim + k] -= 8;
    }
  }

  // The distances of x (squared or not) from a CPU layer with normalize:
  // NONE, for the comparison's floor (irg_test::TermScale).
  static vector<double> RawDistances(Blob<Dtype>* x, const bool squared) {
    BatchEuclideanMapLayer<Dtype> layer(Param(IRGParameter_Normalize_NONE,
        squared, IRGParameter_Backward_EXACT));
    vector<Blob<Dtype>*> bottom(1, x);
    Blob<Dtype> top;
    vector<Blob<Dtype>*> top_vec(1, &top);
    const Caffe::Brew previous = Caffe::mode();
    Caffe::set_mode(Caffe::CPU);
    layer.SetUp(bottom, top_vec);
    layer.Forward(bottom, top_vec);
    Caffe::set_mode(previous);
    return vector<double>(top.cpu_data(), top.cpu_data() + top.count());
  }

  // Runs one layer per device and parameter combination on `x` and
  // compares top data and bottom diff.
  void Compare(Blob<Dtype>* x, const std::string& what) {
    const int n = x->shape(0), dim = x->count(1);
    vector<Blob<Dtype>*> bottom(1, x);
    Blob<Dtype> top;
    vector<Dtype> g(static_cast<size_t>(n) * n);
    for (size_t k = 0; k < g.size(); ++k) {
      g[k] = Dtype(0.01) * static_cast<Dtype>((k * 7919) % 201) - Dtype(1);
    }
    const double max_x = irg_test::MaxAbs(x->cpu_data(), x->count());
    const double max_g = irg_test::MaxAbs(&g[0], static_cast<int>(g.size()));
    for (int sq = 0; sq < 2; ++sq) {
      const vector<double> raw = RawDistances(x, sq == 1);
      for (int normalize = 0; normalize < 3; ++normalize) {
        const double floor =
            irg_test::TermScale(raw, normalize, sq == 1, max_g, max_x, n);
        for (int backward = 0; backward < 2; ++backward) {
          std::ostringstream label;
          label << what << " N=" << n << " D=" << dim << " normalize="
              << normalize << " squared=" << sq << " backward=" << backward;
          const LayerParameter param = Param(normalize, sq == 1, backward);
          BatchEuclideanMapLayer<Dtype> cpu_layer(param), gpu_layer(param);
          const irg_test::Pass<Dtype> cpu =
              irg_test::RunOn(Caffe::CPU, &cpu_layer, bottom, &top, g);
          const irg_test::Pass<Dtype> gpu =
              irg_test::RunOn(Caffe::GPU, &gpu_layer, bottom, &top, g);
          irg_test::ExpectNearRelative(cpu.top, gpu.top,
              irg_test::DeviceTolerance<Dtype>(dim), label.str() + " top");
          irg_test::ExpectNearRelative(cpu.bottom_diff[0], gpu.bottom_diff[0],
              irg_test::DeviceTolerance<Dtype>(std::max(n, dim)),
              label.str() + " bottom diff", floor);
        }
      }
    }
  }
};

TYPED_TEST_CASE(BatchEuclideanMapLayerGPUvsCPUTest, TestDtypes);

TYPED_TEST(BatchEuclideanMapLayerGPUvsCPUTest, TestRandomSizes) {
  const int ns[] = {1, 2, 63, 64, 513, 1500};
  const int dims[] = {1, 3, 511, 4096};
  for (int a = 0; a < 6; ++a) {
    for (int b = 0; b < 4; ++b) {
      Blob<TypeParam> x(ns[a], dims[b], 1, 1);
      this->FillSeparated(&x);
      this->Compare(&x, "random");
    }
  }
}

// Every pair cancels: all instances equal, so every distance is exactly 0
// (the Gram formula's noise is recomputed away), and the normalizer is 0.
TYPED_TEST(BatchEuclideanMapLayerGPUvsCPUTest, TestAllInstancesEqual) {
  Blob<TypeParam> x(513, 511, 1, 1);
  TypeParam* data = x.mutable_cpu_data();
  for (int k = 0; k < x.count(); ++k) data[k] = TypeParam(0.25) * (k % 511);
  this->Compare(&x, "all equal");
}

// Dead-ReLU-like features: 590 zero rows and 10 live ones; one live row is
// large, so the maximum is tied across its 590 distances to the zero rows.
TYPED_TEST(BatchEuclideanMapLayerGPUvsCPUTest, TestDeadRowsAndTies) {
  Blob<TypeParam> x(600, 1024, 1, 1);
  FillerParameter filler_param;
  UniformFiller<TypeParam> filler(filler_param);
  filler.Fill(&x);
  TypeParam* data = x.mutable_cpu_data();
  const int dim = 1024;
  for (int k = 10 * dim; k < x.count(); ++k) data[k] = 0;
  for (int k = 0; k < dim; ++k) data[k] *= 3;
  this->Compare(&x, "dead rows");
}

// Exact ties with exactly representable distances: the 64 corners of the
// 6-cube, whose 32 antipodal pairs share the largest distance. The forward
// is exact on both devices, so the ties must be the same entries.
TYPED_TEST(BatchEuclideanMapLayerGPUvsCPUTest, TestExactTies) {
  Blob<TypeParam> x(64, 6, 1, 1);
  TypeParam* data = x.mutable_cpu_data();
  for (int i = 0; i < 64; ++i) {
    for (int k = 0; k < 6; ++k) data[i * 6 + k] = (i >> k) & 1;
  }
  vector<Blob<TypeParam>*> bottom(1, &x);
  Blob<TypeParam> top;
  const vector<TypeParam> g(64 * 64, TypeParam(1));
  BatchEuclideanMapLayer<TypeParam> cpu_layer(
      this->Param(IRGParameter_Normalize_MAX, true,
                  IRGParameter_Backward_EXACT));
  BatchEuclideanMapLayer<TypeParam> gpu_layer(
      this->Param(IRGParameter_Normalize_MAX, true,
                  IRGParameter_Backward_EXACT));
  const irg_test::Pass<TypeParam> cpu =
      irg_test::RunOn(Caffe::CPU, &cpu_layer, bottom, &top, g);
  const irg_test::Pass<TypeParam> gpu =
      irg_test::RunOn(Caffe::GPU, &gpu_layer, bottom, &top, g);
  int ties = 0;
  for (int k = 0; k < 64 * 64; ++k) {
    EXPECT_EQ(cpu.top[k], gpu.top[k]) << "at " << k;
    ties += gpu.top[k] == TypeParam(1);
  }
  EXPECT_EQ(64, ties);
  this->Compare(&x, "6-cube");
}

// N changing between forwards of the same layer (the scratch blobs and the
// ones vector are resized, on the device): each pass against a fresh CPU
// layer.
TYPED_TEST(BatchEuclideanMapLayerGPUvsCPUTest, TestChangingN) {
  const LayerParameter param = this->Param(IRGParameter_Normalize_MAX, true,
      IRGParameter_Backward_EXACT);
  BatchEuclideanMapLayer<TypeParam> gpu_layer(param);
  const int ns[] = {100, 600, 50, 600};
  for (int a = 0; a < 4; ++a) {
    Blob<TypeParam> x(ns[a], 33, 1, 1);
    this->FillSeparated(&x);
    vector<Blob<TypeParam>*> bottom(1, &x);
    Blob<TypeParam> top;
    vector<TypeParam> g(ns[a] * ns[a]);
    for (size_t k = 0; k < g.size(); ++k) g[k] = TypeParam(k % 13) / 13;
    BatchEuclideanMapLayer<TypeParam> cpu_layer(param);
    const irg_test::Pass<TypeParam> cpu =
        irg_test::RunOn(Caffe::CPU, &cpu_layer, bottom, &top, g);
    const irg_test::Pass<TypeParam> gpu =
        irg_test::RunOn(Caffe::GPU, &gpu_layer, bottom, &top, g);
    irg_test::ExpectNearRelative(cpu.top, gpu.top,
        irg_test::DeviceTolerance<TypeParam>(33), "top");
    irg_test::ExpectNearRelative(cpu.bottom_diff[0], gpu.bottom_diff[0],
        irg_test::DeviceTolerance<TypeParam>(ns[a]), "bottom diff");
  }
}

// The GPU gradient against finite differences at N = 40 (1,600 entries, four
// blocks of the N x N kernels), on a few top entries spread over the blocks.
TYPED_TEST(BatchEuclideanMapLayerGPUvsCPUTest, TestGradientSeveralBlocks) {
  Blob<TypeParam> x(40, 3, 1, 1);
  this->FillSeparated(&x);
  vector<Blob<TypeParam>*> bottom(1, &x);
  Blob<TypeParam> top;
  vector<Blob<TypeParam>*> top_vec(1, &top);
  const int entries[] = {1, 555, 1031, 1598};
  for (int normalize = 0; normalize < 3; ++normalize) {
    for (int sq = 0; sq < 2; ++sq) {
      BatchEuclideanMapLayer<TypeParam> layer(
          this->Param(normalize, sq == 1, IRGParameter_Backward_EXACT));
      layer.SetUp(bottom, top_vec);
      GradientChecker<TypeParam> checker(1e-2, 1e-3);
      for (int e = 0; e < 4; ++e) {
        checker.CheckGradientSingle(&layer, bottom, top_vec, 0, 0,
            entries[e]);
      }
    }
  }
}

// N = 33,000: N x N = 1.09e9 entries, past the 2^30 where Caffe's 32-bit
// CUDA_KERNEL_LOOP stride overflows. D = 1, so every distance is
// (x_i - x_j)^2; sampled entries and gradients are checked against that.
// Needs about 13 GB of device memory (float) or 26 GB (double); skipped
// with a message where the GPU has less free.
TYPED_TEST(BatchEuclideanMapLayerGPUvsCPUTest, TestIndicesPast32Bits) {
  const int n = 33000;
  size_t free_bytes = 0, total_bytes = 0;
  CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  const size_t need = 3 * sizeof(TypeParam) * static_cast<size_t>(n) * n;
  if (free_bytes < need + (need >> 3)) {
    LOG(WARNING) << "TestIndicesPast32Bits skipped: needs " << (need >> 20)
        << " MiB of GPU memory, " << (free_bytes >> 20) << " MiB free";
    return;
  }
  // x_i in [0, 1), except the last two rows at 2 and -2: the one largest
  // distance, (2 - -2)^2 = 16, sits at entries past 2^30 only, both ways.
  Blob<TypeParam> x(n, 1, 1, 1);
  TypeParam* data = x.mutable_cpu_data();
  for (int i = 0; i < n; ++i) data[i] = TypeParam(i % 1000) / 1000;
  data[n - 1] = 2;
  data[n - 2] = -2;
  vector<Blob<TypeParam>*> bottom(1, &x);
  Blob<TypeParam> top;
  vector<Blob<TypeParam>*> top_vec(1, &top);
  const int64_t last = static_cast<int64_t>(n) * n - 1;
  const int64_t samples[] = {1, 12345, 1073741823, 1073741824, last - n,
                             last - 1, last - n - 1};
  {  // MAX: the normalizer reductions and the normalize loop over N x N
    BatchEuclideanMapLayer<TypeParam> layer(this->Param(
        IRGParameter_Normalize_MAX, true, IRGParameter_Backward_EXACT));
    layer.SetUp(bottom, top_vec);
    layer.Forward(bottom, top_vec);
    for (int s = 0; s < 7; ++s) {
      // One entry down, not the whole 4 GB top.
      const int64_t k = samples[s];
      TypeParam got = 0;
      caffe_gpu_memcpy(sizeof(got), top.gpu_data() + k, &got);
      const double d = static_cast<double>(data[k / n]) - data[k % n];
      EXPECT_NEAR(d * d / 16, got, 1e-5) << "entry " << k;
    }
  }
  // NONE, EXACT, with G = 1 on row n - 1 only: dx_i = 2 (x_i - x_{n-1})
  // for i < n - 1, through the G_{n-1,i} half of each pair.
  BatchEuclideanMapLayer<TypeParam> layer(this->Param(
      IRGParameter_Normalize_NONE, true, IRGParameter_Backward_EXACT));
  layer.SetUp(bottom, top_vec);
  layer.Forward(bottom, top_vec);
  caffe_gpu_set(top.count(), TypeParam(0), top.mutable_gpu_diff());
  caffe_gpu_set(n, TypeParam(1), top.mutable_gpu_diff() + last - n + 1);
  layer.Backward(top_vec, vector<bool>(1, true), bottom);
  const int rows[] = {0, 777, 32767, 32768, n - 3};
  for (int r = 0; r < 5; ++r) {
    const int i = rows[r];
    const double want = 2. * (static_cast<double>(data[i]) - data[n - 1]);
    EXPECT_NEAR(want, x.cpu_diff()[i], 1e-4) << "row " << i;
  }
}
#endif  // CPU_ONLY

}  // namespace caffe
