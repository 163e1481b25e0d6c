#include <algorithm>
#include <cmath>
#include <sstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"

#include "caffe/blob.hpp"
#include "caffe/common.hpp"
#include "caffe/filler.hpp"
#include "caffe/layers/batch_euclidean_vector_layer.hpp"

#include "caffe/test/test_caffe_main.hpp"
#include "caffe/test/test_gradient_check_util.hpp"
#include "caffe/test/test_irg_device_util.hpp"

namespace caffe {

template <typename TypeParam>
class BatchEuclideanVectorLayerTest : public MultiDeviceTest<TypeParam> {
  typedef typename TypeParam::Dtype Dtype;

 protected:
  BatchEuclideanVectorLayerTest()
      : blob_x_(new Blob<Dtype>(5, 2, 2, 1)),
        blob_y_(new Blob<Dtype>(5, 4, 1, 1)),
        blob_top_(new Blob<Dtype>()) {
    FillerParameter filler_param;
    GaussianFiller<Dtype> filler(filler_param);
    filler.Fill(blob_x_);
    filler.Fill(blob_y_);
    // Instance 0 moves clearly the farthest: no kink of MAX within the step.
    for (int k = 0; k < 4; ++k) blob_x_->mutable_cpu_data()[k] += 4;
    blob_bottom_vec_.push_back(blob_x_);
    blob_bottom_vec_.push_back(blob_y_);
    blob_top_vec_.push_back(blob_top_);
  }
  virtual ~BatchEuclideanVectorLayerTest() {
    delete blob_x_;
    delete blob_y_;
    delete blob_top_;
  }

  static LayerParameter Param(IRGParameter_Normalize normalize, bool squared,
      IRGParameter_Backward backward = IRGParameter_Backward_EXACT) {
    LayerParameter param;
    param.set_name("transform");
    param.mutable_irg_param()->set_normalize(normalize);
    param.mutable_irg_param()->set_squared(squared);
    param.mutable_irg_param()->set_backward(backward);
    return param;
  }

  void CheckGradient(IRGParameter_Normalize normalize, bool squared) {
    BatchEuclideanVectorLayer<Dtype> layer(Param(normalize, squared));
    GradientChecker<Dtype> checker(1e-2, 1e-3);
    checker.CheckGradientExhaustive(&layer, blob_bottom_vec_, blob_top_vec_);
  }

  // x = (0, 1, 3), y = (1, 1, 1): the instances move by -1, 0 and 2.
  void CheckHandComputed(IRGParameter_Normalize normalize, bool squared,
      const Dtype expected[3]) {
    Blob<Dtype> x(3, 1, 1, 1), y(3, 1, 1, 1);
    x.mutable_cpu_data()[0] = 0;
    x.mutable_cpu_data()[1] = 1;
    x.mutable_cpu_data()[2] = 3;
    caffe_set(3, Dtype(1), y.mutable_cpu_data());
    vector<Blob<Dtype>*> bottom_vec;
    bottom_vec.push_back(&x);
    bottom_vec.push_back(&y);
    BatchEuclideanVectorLayer<Dtype> layer(Param(normalize, squared));
    layer.SetUp(bottom_vec, blob_top_vec_);
    layer.Forward(bottom_vec, blob_top_vec_);
    for (int i = 0; i < 3; ++i) {
      EXPECT_NEAR(expected[i], blob_top_->cpu_data()[i], 1e-6) << i;
    }
  }

  Blob<Dtype>* const blob_x_;
  Blob<Dtype>* const blob_y_;
  Blob<Dtype>* const blob_top_;
  vector<Blob<Dtype>*> blob_bottom_vec_;
  vector<Blob<Dtype>*> blob_top_vec_;
};

TYPED_TEST_CASE(BatchEuclideanVectorLayerTest, TestDtypesAndDevices);

TYPED_TEST(BatchEuclideanVectorLayerTest, TestSetUpTopShapeAsReleased) {
  typedef typename TypeParam::Dtype Dtype;
  LayerParameter param;
  BatchEuclideanVectorLayer<Dtype> layer(param);
  layer.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
  EXPECT_EQ(this->blob_top_->num_axes(), 4);
  EXPECT_EQ(this->blob_top_->shape(0), 1);
  EXPECT_EQ(this->blob_top_->shape(1), 1);
  EXPECT_EQ(this->blob_top_->shape(2), 1);
  EXPECT_EQ(this->blob_top_->shape(3), 5);
}

TYPED_TEST(BatchEuclideanVectorLayerTest, TestForwardHandComputed) {
  typedef typename TypeParam::Dtype Dtype;
  const Dtype max_sq[3] = {Dtype(0.25), 0, 1};  // 1, 0, 4 over 4
  this->CheckHandComputed(IRGParameter_Normalize_MAX, true, max_sq);
  const Dtype mean_sq[3] = {Dtype(0.6), 0, Dtype(2.4)};  // over 5 / 3
  this->CheckHandComputed(IRGParameter_Normalize_MEAN, true, mean_sq);
  const Dtype none_sq[3] = {1, 0, 4};
  this->CheckHandComputed(IRGParameter_Normalize_NONE, true, none_sq);
  const Dtype max_l2[3] = {Dtype(0.5), 0, 1};  // 1, 0, 2 over 2
  this->CheckHandComputed(IRGParameter_Normalize_MAX, false, max_l2);
  const Dtype mean_l2[3] = {1, 0, 2};  // over 1
  this->CheckHandComputed(IRGParameter_Normalize_MEAN, false, mean_l2);
  const Dtype none_l2[3] = {1, 0, 2};
  this->CheckHandComputed(IRGParameter_Normalize_NONE, false, none_l2);
}

TYPED_TEST(BatchEuclideanVectorLayerTest, TestGradientMaxSquared) {
  this->CheckGradient(IRGParameter_Normalize_MAX, true);
}

TYPED_TEST(BatchEuclideanVectorLayerTest, TestGradientMaxL2) {
  this->CheckGradient(IRGParameter_Normalize_MAX, false);
}

TYPED_TEST(BatchEuclideanVectorLayerTest, TestGradientMeanSquared) {
  this->CheckGradient(IRGParameter_Normalize_MEAN, true);
}

TYPED_TEST(BatchEuclideanVectorLayerTest, TestGradientMeanL2) {
  this->CheckGradient(IRGParameter_Normalize_MEAN, false);
}

TYPED_TEST(BatchEuclideanVectorLayerTest, TestGradientNoneSquared) {
  this->CheckGradient(IRGParameter_Normalize_NONE, true);
}

TYPED_TEST(BatchEuclideanVectorLayerTest, TestGradientNoneL2) {
  this->CheckGradient(IRGParameter_Normalize_NONE, false);
}

// RELEASED: dx_i = G_i dd_i/dx_i / m with m constant, dy_i = -dx_i.
TYPED_TEST(BatchEuclideanVectorLayerTest, TestReleasedBackwardFormula) {
  typedef typename TypeParam::Dtype Dtype;
  const int n = 5, dim = 4;
  for (int squared = 0; squared < 2; ++squared) {
    for (int mode = 0; mode < 3; ++mode) {
      BatchEuclideanVectorLayer<Dtype> layer(this->Param(
          static_cast<IRGParameter_Normalize>(mode), squared,
          IRGParameter_Backward_RELEASED));
      layer.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
      layer.Forward(this->blob_bottom_vec_, this->blob_top_vec_);
      const Dtype* x = this->blob_x_->cpu_data();
      const Dtype* y = this->blob_y_->cpu_data();
      vector<Dtype> d(n);
      for (int i = 0; i < n; ++i) {
        Dtype q = 0;
        for (int k = 0; k < dim; ++k) {
          const Dtype e = x[i * dim + k] - y[i * dim + k];
          q += e * e;
        }
        d[i] = squared ? q : std::sqrt(q);
      }
      const Dtype m = d[0] / this->blob_top_->cpu_data()[0];
      Dtype* g = this->blob_top_->mutable_cpu_diff();
      for (int i = 0; i < n; ++i) g[i] = Dtype(0.3) * i - Dtype(0.5);
      layer.Backward(this->blob_top_vec_, vector<bool>(2, true),
          this->blob_bottom_vec_);
      for (int i = 0; i < n; ++i) {
        for (int k = 0; k < dim; ++k) {
          const Dtype diff = x[i * dim + k] - y[i * dim + k];
          const Dtype expected = g[i] * (squared ? 2 * diff : diff / d[i]) / m;
          EXPECT_NEAR(expected, this->blob_x_->cpu_diff()[i * dim + k],
              1e-5 * (1 + std::fabs(expected)));
          EXPECT_NEAR(-expected, this->blob_y_->cpu_diff()[i * dim + k],
              1e-5 * (1 + std::fabs(expected)));
        }
      }
    }
  }
}

TYPED_TEST(BatchEuclideanVectorLayerTest, TestZeroNormalizerGivesZeros) {
  typedef typename TypeParam::Dtype Dtype;
  for (int squared = 0; squared < 2; ++squared) {
    for (int mode = 0; mode < 2; ++mode) {
      caffe_copy(this->blob_x_->count(), this->blob_y_->cpu_data(),
          this->blob_x_->mutable_cpu_data());
      BatchEuclideanVectorLayer<Dtype> layer(
          this->Param(static_cast<IRGParameter_Normalize>(mode), squared));
      layer.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
      layer.Forward(this->blob_bottom_vec_, this->blob_top_vec_);
      caffe_set(5, Dtype(1), this->blob_top_->mutable_cpu_diff());
      layer.Backward(this->blob_top_vec_, vector<bool>(2, true),
          this->blob_bottom_vec_);
      for (int i = 0; i < 5; ++i) {
        EXPECT_EQ(Dtype(0), this->blob_top_->cpu_data()[i]);
      }
      for (int k = 0; k < this->blob_x_->count(); ++k) {
        EXPECT_EQ(Dtype(0), this->blob_x_->cpu_diff()[k]);
        EXPECT_EQ(Dtype(0), this->blob_y_->cpu_diff()[k]);
      }
    }
  }
}

TYPED_TEST(BatchEuclideanVectorLayerTest, TestSingleInstance) {
  typedef typename TypeParam::Dtype Dtype;
  Blob<Dtype> x(1, 3, 1, 1), y(1, 3, 1, 1);
  FillerParameter filler_param;
  GaussianFiller<Dtype> filler(filler_param);
  filler.Fill(&x);
  filler.Fill(&y);
  vector<Blob<Dtype>*> bottom_vec;
  bottom_vec.push_back(&x);
  bottom_vec.push_back(&y);
  BatchEuclideanVectorLayer<Dtype> layer(
      this->Param(IRGParameter_Normalize_MAX, true));
  layer.SetUp(bottom_vec, this->blob_top_vec_);
  layer.Forward(bottom_vec, this->blob_top_vec_);
  ASSERT_EQ(1, this->blob_top_->count());
  // One instance is its own maximum: t = 1, and the exact gradient of the
  // constant d / max(d) is 0.
  EXPECT_NEAR(Dtype(1), this->blob_top_->cpu_data()[0], 1e-6);
  this->blob_top_->mutable_cpu_diff()[0] = 1;
  layer.Backward(this->blob_top_vec_, vector<bool>(2, true), bottom_vec);
  for (int k = 0; k < 3; ++k) {
    EXPECT_NEAR(Dtype(0), x.cpu_diff()[k], 1e-6);
    EXPECT_NEAR(Dtype(0), y.cpu_diff()[k], 1e-6);
  }
}

TYPED_TEST(BatchEuclideanVectorLayerTest, TestPropagateDownPerBottom) {
  typedef typename TypeParam::Dtype Dtype;
  for (int which = 0; which < 2; ++which) {
    BatchEuclideanVectorLayer<Dtype> layer(
        this->Param(IRGParameter_Normalize_MAX, true));
    layer.SetUp(this->blob_bottom_vec_, this->blob_top_vec_);
    layer.Forward(this->blob_bottom_vec_, this->blob_top_vec_);
    caffe_set(5, Dtype(1), this->blob_top_->mutable_cpu_diff());
    caffe_set(20, Dtype(42), this->blob_x_->mutable_cpu_diff());
    caffe_set(20, Dtype(42), this->blob_y_->mutable_cpu_diff());
    vector<bool> propagate_down(2, false);
    propagate_down[which] = true;
    layer.Backward(this->blob_top_vec_, propagate_down, this->blob_bottom_vec_);
    Blob<Dtype>* skipped = which == 0 ? this->blob_y_ : this->blob_x_;
    Blob<Dtype>* written = which == 0 ? this->blob_x_ : this->blob_y_;
    bool any_written = false;
    for (int k = 0; k < 20; ++k) {
      EXPECT_EQ(Dtype(42), skipped->cpu_diff()[k]);
      any_written |= written->cpu_diff()[k] != Dtype(42);
    }
    EXPECT_TRUE(any_written);
  }
}

// Bad input dies with a message naming the layer, the blobs and the shapes
// (the blob counts: Caffe's own message, naming the layer type).
template <typename Dtype>
class BatchEuclideanVectorLayerDeathTest : public CPUDeviceTest<Dtype> {
 protected:
  void ExpectDeath(int nx, int dx, int ny, int dy, const char* pattern) {
    ::testing::FLAGS_gtest_death_test_style = "threadsafe";
    Blob<Dtype> x(nx, dx, 1, 1), y(ny, dy, 1, 1), top;
    vector<Blob<Dtype>*> bottom_vec, top_vec(1, &top);
    bottom_vec.push_back(&x);
    bottom_vec.push_back(&y);
    LayerParameter param;
    param.set_name("bem13");
    param.add_bottom("pool_eltwise3");
    param.add_bottom("pool_eltwise1");
    BatchEuclideanVectorLayer<Dtype> layer(param);
    EXPECT_DEATH(layer.SetUp(bottom_vec, top_vec), pattern);
  }
};

TYPED_TEST_CASE(BatchEuclideanVectorLayerDeathTest, TestDtypes);

TYPED_TEST(BatchEuclideanVectorLayerDeathTest, TestDifferentNDies) {
  this->ExpectDeath(8, 16, 4, 16,
      "BatchEuclideanVector layer 'bem13': "
      "bottom\\[0\\] 'pool_eltwise3' \\(8 16 1 1 \\(128\\)\\) and "
      "bottom\\[1\\] 'pool_eltwise1' \\(4 16 1 1 \\(64\\)\\) "
      "must have the same number of instances");
}

TYPED_TEST(BatchEuclideanVectorLayerDeathTest, TestDifferentSizeDies) {
  this->ExpectDeath(8, 16, 8, 32,
      "BatchEuclideanVector layer 'bem13': "
      "bottom\\[0\\] 'pool_eltwise3' \\(8 16 1 1 \\(128\\)\\) and "
      "bottom\\[1\\] 'pool_eltwise1' \\(8 32 1 1 \\(256\\)\\)");
}

TYPED_TEST(BatchEuclideanVectorLayerDeathTest, TestOneBottomDies) {
  ::testing::FLAGS_gtest_death_test_style = "threadsafe";
  Blob<TypeParam> x(8, 16, 1, 1), top;
  vector<Blob<TypeParam>*> bottom_vec(1, &x), top_vec(1, &top);
  LayerParameter param;
  param.set_name("bem13");
  param.add_bottom("pool_eltwise3");
  BatchEuclideanVectorLayer<TypeParam> layer(param);
  // Caffe's own blob-count check (ExactNumBottomBlobs), naming the type.
  EXPECT_DEATH(layer.SetUp(bottom_vec, top_vec),
      "BatchEuclideanVector Layer takes 2 bottom blob\\(s\\) as input");
}

#ifndef CPU_ONLY
// The GPU path against the CPU path on the same inputs (see the map layer's
// GPUvsCPU tests for the tolerance): N > 512 and D > 512, so the per-instance
// reduction runs several rounds per block and the normalizer reductions and
// the gradient loop span many blocks; every normalize x squared x backward,
// float and double. Random inputs get one clearly largest distance.
template <typename Dtype>
class BatchEuclideanVectorLayerGPUvsCPUTest : public GPUDeviceTest<Dtype> {
 protected:
  static LayerParameter Param(int normalize, bool squared, int backward) {
    LayerParameter param;
    param.set_name("transform");
    IRGParameter* p = param.mutable_irg_param();
    p->set_normalize(static_cast<IRGParameter_Normalize>(normalize));
    p->set_squared(squared);
    p->set_backward(static_cast<IRGParameter_Backward>(backward));
    return param;
  }

  // The distances of the rows of x and y (squared or not) from a CPU layer
  // with normalize: NONE, for the comparison's floor (irg_test::TermScale).
  static vector<double> RawDistances(const vector<Blob<Dtype>*>& bottom,
      const bool squared) {
    BatchEuclideanVectorLayer<Dtype> layer(Param(IRGParameter_Normalize_NONE,
        squared, IRGParameter_Backward_EXACT));
    Blob<Dtype> top;
    vector<Blob<Dtype>*> top_vec(1, &top);
    const Caffe::Brew previous = Caffe::mode();
    Caffe::set_mode(Caffe::CPU);
    layer.SetUp(bottom, top_vec);
    layer.Forward(bottom, top_vec);
    Caffe::set_mode(previous);
    return vector<double>(top.cpu_data(), top.cpu_data() + top.count());
  }

  void Compare(Blob<Dtype>* x, Blob<Dtype>* y, const std::string& what) {
    const int n = x->shape(0), dim = x->count(1);
    vector<Blob<Dtype>*> bottom;
    bottom.push_back(x);
    bottom.push_back(y);
    Blob<Dtype> top;
    vector<Dtype> g(n);
    for (int i = 0; i < n; ++i) {
      g[i] = Dtype(0.01) * static_cast<Dtype>((i * 7919) % 201) - Dtype(1);
    }
    double max_diff = 0;  // max |x - y|: the factor of every gradient entry
    for (int k = 0; k < x->count(); ++k) {
      max_diff = std::max(max_diff, std::fabs(static_cast<double>(
          x->cpu_data()[k]) - y->cpu_data()[k]));
    }
    const double max_g = irg_test::MaxAbs(&g[0], n);
    for (int sq = 0; sq < 2; ++sq) {
      const vector<double> raw = RawDistances(bottom, sq == 1);
      for (int normalize = 0; normalize < 3; ++normalize) {
        const double floor =
            irg_test::TermScale(raw, normalize, sq == 1, max_g, max_diff, 1);
        for (int backward = 0; backward < 2; ++backward) {
          std::ostringstream label;
          label << what << " N=" << n << " D=" << dim << " normalize="
              << normalize << " squared=" << sq << " backward=" << backward;
          const LayerParameter param = Param(normalize, sq == 1, backward);
          BatchEuclideanVectorLayer<Dtype> cpu_layer(param), gpu_layer(param);
          const irg_test::Pass<Dtype> cpu =
              irg_test::RunOn(Caffe::CPU, &cpu_layer, bottom, &top, g);
          const irg_test::Pass<Dtype> gpu =
              irg_test::RunOn(Caffe::GPU, &gpu_layer, bottom, &top, g);
          irg_test::ExpectNearRelative(cpu.top, gpu.top,
              irg_test::DeviceTolerance<Dtype>(dim), label.str() + " top");
          for (int b = 0; b < 2; ++b) {
            irg_test::ExpectNearRelative(cpu.bottom_diff[b],
                gpu.bottom_diff[b],
                irg_test::DeviceTolerance<Dtype>(std::max(n, dim)),
                label.str() + (b ? " y diff" : " x diff"), floor);
          }
        }
      }
    }
  }

  void CompareRandom(const int n, const int dim) {
    Blob<Dtype> x(n, dim, 1, 1), y(n, dim, 1, 1);
    FillerParameter filler_param;
    GaussianFiller<Dtype> filler(filler_param);
    filler.Fill(&x);
    filler.Fill(&y);
    for (int k = 0; k < dim; ++k) x.mutable_cpu_data()[k] += 8;
    Compare(&x, &y, "random");
  }
};

TYPED_TEST_CASE(BatchEuclideanVectorLayerGPUvsCPUTest, TestDtypes);

TYPED_TEST(BatchEuclideanVectorLayerGPUvsCPUTest, TestRandomSizes) {
  this->CompareRandom(1, 3);
  this->CompareRandom(2, 1);
  this->CompareRandom(700, 600);
  this->CompareRandom(1500, 4096);
}

// Every instance equal in x and y: all distances and the normalizer are 0.
TYPED_TEST(BatchEuclideanVectorLayerGPUvsCPUTest, TestAllDistancesZero) {
  Blob<TypeParam> x(700, 600, 1, 1), y(700, 600, 1, 1);
  FillerParameter filler_param;
  GaussianFiller<TypeParam> filler(filler_param);
  filler.Fill(&x);
  y.CopyFrom(x);
  this->Compare(&x, &y, "all zero");
}

// Dead-ReLU-like features: most rows zero in both, a few live, and exact ties
// for the maximum (the same live row difference repeated).
TYPED_TEST(BatchEuclideanVectorLayerGPUvsCPUTest, TestDeadRowsAndTies) {
  Blob<TypeParam> x(700, 600, 1, 1), y(700, 600, 1, 1);
  caffe_set(x.count(), TypeParam(0), x.mutable_cpu_data());
  caffe_set(y.count(), TypeParam(0), y.mutable_cpu_data());
  TypeParam* xd = x.mutable_cpu_data();
  for (int i = 0; i < 700; i += 70) {
    for (int k = 0; k < 600; ++k) xd[i * 600 + k] = TypeParam(k % 5) / 4;
  }
  this->Compare(&x, &y, "dead rows");
}

// N changing between forwards of the same layer.
TYPED_TEST(BatchEuclideanVectorLayerGPUvsCPUTest, TestChangingN) {
  const LayerParameter param = this->Param(IRGParameter_Normalize_MAX, true,
      IRGParameter_Backward_EXACT);
  BatchEuclideanVectorLayer<TypeParam> gpu_layer(param);
  const int ns[] = {600, 40, 900};
  for (int a = 0; a < 3; ++a) {
    Blob<TypeParam> x(ns[a], 520, 1, 1), y(ns[a], 520, 1, 1);
    FillerParameter filler_param;
    GaussianFiller<TypeParam> filler(filler_param);
    filler.Fill(&x);
    filler.Fill(&y);
    for (int k = 0; k < 520; ++k) x.mutable_cpu_data()[k] += 8;
    vector<Blob<TypeParam>*> bottom;
    bottom.push_back(&x);
    bottom.push_back(&y);
    Blob<TypeParam> top;
    vector<TypeParam> g(ns[a], TypeParam(0.5));
    BatchEuclideanVectorLayer<TypeParam> cpu_layer(param);
    const irg_test::Pass<TypeParam> cpu =
        irg_test::RunOn(Caffe::CPU, &cpu_layer, bottom, &top, g);
    const irg_test::Pass<TypeParam> gpu =
        irg_test::RunOn(Caffe::GPU, &gpu_layer, bottom, &top, g);
    irg_test::ExpectNearRelative(cpu.top, gpu.top,
        irg_test::DeviceTolerance<TypeParam>(520), "top");
    irg_test::ExpectNearRelative(cpu.bottom_diff[0], gpu.bottom_diff[0],
        irg_test::DeviceTolerance<TypeParam>(ns[a]), "x diff");
  }
}

// The GPU gradient against finite differences with N x D = 1,040 (three
// blocks of the gradient kernel), on a few top entries.
TYPED_TEST(BatchEuclideanVectorLayerGPUvsCPUTest, TestGradientSeveralBlocks) {
  Blob<TypeParam> x(8, 130, 1, 1), y(8, 130, 1, 1);
  FillerParameter filler_param;
  GaussianFiller<TypeParam> filler(filler_param);
  filler.Fill(&x);
  filler.Fill(&y);
  for (int k = 0; k < 130; ++k) x.mutable_cpu_data()[k] += 4;
  vector<Blob<TypeParam>*> bottom;
  bottom.push_back(&x);
  bottom.push_back(&y);
  Blob<TypeParam> top;
  vector<Blob<TypeParam>*> top_vec(1, &top);
  for (int normalize = 0; normalize < 3; ++normalize) {
    for (int sq = 0; sq < 2; ++sq) {
      BatchEuclideanVectorLayer<TypeParam> layer(
          this->Param(normalize, sq == 1, IRGParameter_Backward_EXACT));
      layer.SetUp(bottom, top_vec);
      GradientChecker<TypeParam> checker(1e-2, 1e-3);
      for (int e = 0; e < 8; e += 3) {
        checker.CheckGradientSingle(&layer, bottom, top_vec, -1, 0, e);
      }
    }
  }
}
#endif  // CPU_ONLY

}  // namespace caffe
