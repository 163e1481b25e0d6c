#include <algorithm>
#include <cmath>
#include <vector>

#include "gtest/gtest.h"

#include "caffe/blob.hpp"
#include "caffe/common.hpp"
#include "caffe/filler.hpp"
#include "caffe/layers/triplet_relation_loss_layer.hpp"

#include "caffe/test/test_caffe_main.hpp"
#include "caffe/test/test_gradient_check_util.hpp"

namespace caffe {

// The loss written out with plain loops in double, independently of the
// layer: normalize, direct Euclidean distances, mine, score.
struct TripletReference {
  double loss;
  int triplets;
  int tuples;
};

template <typename Dtype>
static vector<double> UnitRows(const Blob<Dtype>& x) {
  const int n = x.shape(0), dim = x.count(1);
  vector<double> u(x.cpu_data(), x.cpu_data() + x.count());
  for (int i = 0; i < n; ++i) {
    double q = 0;
    for (int k = 0; k < dim; ++k) q += u[i * dim + k] * u[i * dim + k];
    for (int k = 0; k < dim; ++k) {
      u[i * dim + k] = q > 0 ? u[i * dim + k] / std::sqrt(q) : 0;
    }
  }
  return u;
}

template <typename Dtype>
static vector<double> Distances(const Blob<Dtype>& x) {
  const int n = x.shape(0), dim = x.count(1);
  const vector<double> u = UnitRows(x);
  vector<double> d(n * n);
  for (int i = 0; i < n; ++i) {
    for (int j = 0; j < n; ++j) {
      double q = 0;
      for (int k = 0; k < dim; ++k) {
        const double diff = u[i * dim + k] - u[j * dim + k];
        q += diff * diff;
      }
      d[i * n + j] = std::sqrt(q);
    }
  }
  return d;
}

static double Sigmoid(double x) { return 1 / (1 + std::exp(-x)); }

static double BernoulliKL(double pt, double ps) {
  return pt * std::log(pt / ps) + (1 - pt) * std::log((1 - pt) / (1 - ps));
}

// KL(softmax(t) || softmax(s)).
static double SoftmaxKL(const vector<double>& t, const vector<double>& s) {
  double zt = 0, zs = 0;
  for (size_t j = 0; j < t.size(); ++j) {
    zt += std::exp(t[j]);
    zs += std::exp(s[j]);
  }
  double kl = 0;
  for (size_t j = 0; j < t.size(); ++j) {
    const double pt = std::exp(t[j]) / zt, ps = std::exp(s[j]) / zs;
    kl += pt * std::log(pt / ps);
  }
  return kl;
}

template <typename Dtype>
static TripletReference ReferenceLoss(const Blob<Dtype>& student,
    const Blob<Dtype>& teacher, const Blob<Dtype>& label,
    const RelationParameter& p) {
  const int n = student.shape(0);
  const vector<double> ds = Distances(student), dt = Distances(teacher);
  const Dtype* y = label.cpu_data();
  TripletReference ref = {0, 0, 0};
  double sum = 0;
  for (int a = 0; a < n; ++a) {
    for (int q = 0; q < n; ++q) {
      if (q == a || y[q] != y[a]) continue;
      vector<double> t(1, -dt[a * n + q] / p.tau1());
      vector<double> s(1, -ds[a * n + q] / p.tau1());
      for (int k = 0; k < n; ++k) {
        const double gap = ds[a * n + k] - ds[a * n + q];
        if (y[k] == y[a] || !(gap > 0 && gap <= p.margin())) continue;
        ++ref.triplets;
        t.push_back(-dt[a * n + k] / p.tau1());
        s.push_back(-ds[a * n + k] / p.tau1());
        if (p.mode() == RelationParameter_Mode_TRIPLET) {
          sum += BernoulliKL(
              Sigmoid((dt[a * n + k] - dt[a * n + q]) / p.tau1()),
              Sigmoid(gap / p.tau1()));
        }
      }
      if (t.size() == 1) continue;
      ++ref.tuples;
      if (p.mode() == RelationParameter_Mode_TUPLE) sum += SoftmaxKL(t, s);
    }
  }
  const int terms = p.mode() == RelationParameter_Mode_TUPLE
      ? ref.tuples : 2 * ref.triplets;
  ref.loss = terms ? p.scale() * sum / terms : 0;
  return ref;
}

template <typename TypeParam>
class TripletRelationLossLayerTest : public MultiDeviceTest<TypeParam> {
  typedef typename TypeParam::Dtype Dtype;

 protected:
  // Six instances of classes 0, 0, 0, 1, 1, 2 (class 2 has no positive).
  TripletRelationLossLayerTest()
      : student_(new Blob<Dtype>(6, 4, 1, 1)),
        teacher_(new Blob<Dtype>(6, 3, 1, 1)),
        label_(new Blob<Dtype>(vector<int>(1, 6))),
        top_(new Blob<Dtype>()) {
    const Dtype labels[6] = {0, 0, 0, 1, 1, 2};
    for (int i = 0; i < 6; ++i) label_->mutable_cpu_data()[i] = labels[i];
    bottom_vec_.push_back(student_);
    bottom_vec_.push_back(teacher_);
    bottom_vec_.push_back(label_);
    top_vec_.push_back(top_);
  }
  virtual ~TripletRelationLossLayerTest() {
    delete student_;
    delete teacher_;
    delete label_;
    delete top_;
  }

  static LayerParameter Param(RelationParameter_Mode mode, float margin,
      float tau1, float scale) {
    LayerParameter param;
    param.set_name("rel");
    RelationParameter* p = param.mutable_relation_param();
    p->set_mode(mode);
    p->set_margin(margin);
    p->set_tau1(tau1);
    p->set_scale(scale);
    return param;
  }

  // The mining is a step function of the student's distances: the gradient
  // checker's finite differences (step 1e-2 on one coordinate moves a
  // normalized row by at most 1e-2 / |x_i|, a distance gap by at most twice
  // that) must not move any candidate triplet across 0 or the margin. Draw
  // Gaussian inputs until every candidate's gap d(a,n) - d(a,p) is at least
  // 0.08 away from both, every row norm is above 0.5, and enough is mined.
  void FillClearOfBoundaries(const RelationParameter& p, int min_triplets,
      int min_tuple_size) {
    FillerParameter filler_param;
    GaussianFiller<Dtype> filler(filler_param);
    const int n = student_->shape(0), dim = student_->count(1);
    const Dtype* y = label_->cpu_data();
    for (int attempt = 0; attempt < 5000; ++attempt) {
      filler.Fill(student_);
      filler.Fill(teacher_);
      bool clear = true;
      const Dtype* x = student_->cpu_data();
      for (int i = 0; i < n && clear; ++i) {
        double q = 0;
        for (int k = 0; k < dim; ++k) q += x[i * dim + k] * x[i * dim + k];
        clear = std::sqrt(q) > 0.5;
      }
      const vector<double> d = Distances(*student_);
      int mined = 0, largest_tuple = 0;
      for (int a = 0; a < n && clear; ++a) {
        for (int q = 0; q < n && clear; ++q) {
          if (q == a || y[q] != y[a]) continue;
          int tuple = 0;
          for (int k = 0; k < n && clear; ++k) {
            if (y[k] == y[a]) continue;
            const double gap = d[a * n + k] - d[a * n + q];
            clear = std::fabs(gap) > 0.08 && std::fabs(gap - p.margin()) > 0.08;
            if (gap > 0 && gap <= p.margin()) ++tuple;
          }
          mined += tuple;
          largest_tuple = std::max(largest_tuple, tuple);
        }
      }
      if (clear && mined >= min_triplets && largest_tuple >= min_tuple_size) {
        return;
      }
    }
    FAIL() << "no input clear of the mining boundaries in 5000 draws";
  }

  void CheckGradient(const LayerParameter& param) {
    FillClearOfBoundaries(param.relation_param(), 3, 2);
    TripletRelationLossLayer<Dtype> layer(param);
    GradientChecker<Dtype> checker(1e-2, 1e-3);
    checker.CheckGradientExhaustive(&layer, bottom_vec_, top_vec_, 0);
  }

  void CheckAgainstReference(const LayerParameter& param) {
    FillClearOfBoundaries(param.relation_param(), 3, 2);
    TripletRelationLossLayer<Dtype> layer(param);
    layer.SetUp(bottom_vec_, top_vec_);
    layer.Forward(bottom_vec_, top_vec_);
    const TripletReference ref = ReferenceLoss(*student_, *teacher_, *label_,
        param.relation_param());
    EXPECT_EQ(ref.triplets, layer.num_triplets());
    EXPECT_EQ(ref.tuples, layer.num_tuples());
    EXPECT_GT(ref.loss, 0);
    EXPECT_NEAR(ref.loss, top_->cpu_data()[0], 1e-4 * (1 + ref.loss));
  }

  // Forward and Backward; the loss and every gradient entry must be finite.
  void RunBoth(TripletRelationLossLayer<Dtype>* layer) {
    layer->SetUp(bottom_vec_, top_vec_);
    layer->Forward(bottom_vec_, top_vec_);
    EXPECT_TRUE(std::isfinite(top_->cpu_data()[0]));
    caffe_set(student_->count(), Dtype(42), student_->mutable_cpu_diff());
    vector<bool> propagate_down(3, false);
    propagate_down[0] = true;
    layer->Backward(top_vec_, propagate_down, bottom_vec_);
    for (int k = 0; k < student_->count(); ++k) {
      EXPECT_TRUE(std::isfinite(student_->cpu_diff()[k])) << "at " << k;
    }
  }

  void ExpectZeroLossAndGradient(TripletRelationLossLayer<Dtype>* layer) {
    RunBoth(layer);
    EXPECT_EQ(0, layer->num_triplets());
    EXPECT_EQ(Dtype(0), top_->cpu_data()[0]);
    for (int k = 0; k < student_->count(); ++k) {
      EXPECT_EQ(Dtype(0), student_->cpu_diff()[k]) << "at " << k;
    }
  }

  void SetRows(Blob<Dtype>* blob, const Dtype* rows, int n, int dim) {
    vector<int> shape(2);
    shape[0] = n;
    shape[1] = dim;
    blob->Reshape(shape);
    caffe_copy(n * dim, rows, blob->mutable_cpu_data());
  }

  void SetLabels(const Dtype* labels, int n) {
    label_->Reshape(vector<int>(1, n));
    caffe_copy(n, labels, label_->mutable_cpu_data());
  }

  Blob<Dtype>* const student_;
  Blob<Dtype>* const teacher_;
  Blob<Dtype>* const label_;
  Blob<Dtype>* const top_;
  vector<Blob<Dtype>*> bottom_vec_;
  vector<Blob<Dtype>*> top_vec_;
};

TYPED_TEST_CASE(TripletRelationLossLayerTest, TestDtypesAndDevices);

TYPED_TEST(TripletRelationLossLayerTest, TestSetUp) {
  LayerParameter param;
  TripletRelationLossLayer<typename TypeParam::Dtype> layer(param);
  layer.SetUp(this->bottom_vec_, this->top_vec_);
  EXPECT_EQ(0, this->top_->num_axes());
  EXPECT_EQ(1, this->top_->count());
}

TYPED_TEST(TripletRelationLossLayerTest, TestDefaultsMatchRelease) {
  LayerParameter param;
  const RelationParameter& p = param.relation_param();
  EXPECT_EQ(RelationParameter_Mode_TRIPLET, p.mode());
  EXPECT_FLOAT_EQ(0.2, p.margin());
  EXPECT_FLOAT_EQ(4, p.tau1());
  EXPECT_FLOAT_EQ(1000, p.scale());
}

// Student rows (unnormalized) along u0 = (1, 0), u1 = (.8, .6) [class 0],
// u2 = (.6, .8), u3 = (.6, -.8) [class 1]: d01 = sqrt(.4), d02 = d03 =
// sqrt(.8), d12 = sqrt(.08), d13 = sqrt(2), d23 = 1.6. With margin .6 only
// (0, 1, 2) and (0, 1, 3) are mined (gap sqrt(.8) - sqrt(.4) = .262; the
// others are negative or above .78). Teacher: (1, 0), (0, 1), (-1, 0),
// (0, -1), so dT01 = sqrt(2), dT02 = 2, dT03 = sqrt(2).
TYPED_TEST(TripletRelationLossLayerTest, TestForwardHandComputed) {
  typedef typename TypeParam::Dtype Dtype;
  const Dtype s[8] = {3, 0, 2.4, 1.8, 0.6, 0.8, 1.2, -1.6};
  const Dtype t[8] = {2, 0, 0, 0.5, -1, 0, 0, -7};
  const Dtype y[4] = {0, 0, 1, 1};
  this->SetRows(this->student_, s, 4, 2);
  this->SetRows(this->teacher_, t, 4, 2);
  this->SetLabels(y, 4);
  const double gap_s = std::sqrt(0.8) - std::sqrt(0.4);
  // TRIPLET, tau1 = 1, scale = 10: 10 / (2 * 2) * (KL_1 + KL_2).
  const double triplet = 10.0 / 4 * (
      BernoulliKL(Sigmoid(2 - std::sqrt(2.0)), Sigmoid(gap_s))
      + BernoulliKL(Sigmoid(0), Sigmoid(gap_s)));
  // TUPLE, tau1 = 1, scale = 10: one tuple, logits -[d_ap, d_an1, d_an2].
  const double lt[3] = {-std::sqrt(2.0), -2, -std::sqrt(2.0)};
  const double ls[3] = {-std::sqrt(0.4), -std::sqrt(0.8), -std::sqrt(0.8)};
  double zt = 0, zs = 0, kl = 0;
  for (int j = 0; j < 3; ++j) {
    zt += std::exp(lt[j]);
    zs += std::exp(ls[j]);
  }
  for (int j = 0; j < 3; ++j) {
    const double pt = std::exp(lt[j]) / zt;
    kl += pt * (std::log(pt) - std::log(std::exp(ls[j]) / zs));
  }
  const double tuple = 10 * kl;
  for (int mode = 0; mode < 2; ++mode) {
    TripletRelationLossLayer<Dtype> layer(this->Param(
        static_cast<RelationParameter_Mode>(mode), 0.6, 1, 10));
    layer.SetUp(this->bottom_vec_, this->top_vec_);
    const Dtype loss = layer.Forward(this->bottom_vec_, this->top_vec_);
    EXPECT_EQ(2, layer.num_triplets());
    EXPECT_EQ(1, layer.num_tuples());
    const double expected = mode == 0 ? triplet : tuple;
    EXPECT_NEAR(expected, this->top_->cpu_data()[0], 1e-5 * (1 + expected))
        << "mode " << mode;
    EXPECT_NEAR(expected, loss, 1e-5 * (1 + expected));  // loss_weight 1
  }
}

TYPED_TEST(TripletRelationLossLayerTest, TestForwardTripletMatchesLoops) {
  this->CheckAgainstReference(
      this->Param(RelationParameter_Mode_TRIPLET, 0.6, 0.5, 10));
}

TYPED_TEST(TripletRelationLossLayerTest, TestForwardTupleMatchesLoops) {
  this->CheckAgainstReference(
      this->Param(RelationParameter_Mode_TUPLE, 0.6, 0.5, 10));
}

TYPED_TEST(TripletRelationLossLayerTest, TestForwardDefaultsMatchLoops) {
  LayerParameter param;
  param.set_name("rel");
  this->FillClearOfBoundaries(param.relation_param(), 1, 1);
  TripletRelationLossLayer<typename TypeParam::Dtype> layer(param);
  layer.SetUp(this->bottom_vec_, this->top_vec_);
  layer.Forward(this->bottom_vec_, this->top_vec_);
  const TripletReference ref = ReferenceLoss(*this->student_,
      *this->teacher_, *this->label_, param.relation_param());
  EXPECT_EQ(ref.triplets, layer.num_triplets());
  EXPECT_NEAR(ref.loss, this->top_->cpu_data()[0], 1e-4 * (1 + ref.loss));
}

TYPED_TEST(TripletRelationLossLayerTest, TestGradientTriplet) {
  this->CheckGradient(this->Param(RelationParameter_Mode_TRIPLET, 0.6, 0.5,
      10));
}

TYPED_TEST(TripletRelationLossLayerTest, TestGradientTuple) {
  this->CheckGradient(this->Param(RelationParameter_Mode_TUPLE, 0.6, 0.5,
      10));
}

TYPED_TEST(TripletRelationLossLayerTest, TestGradientTripletDefaults) {
  LayerParameter param;
  param.set_name("rel");
  param.mutable_relation_param()->set_scale(100);
  this->FillClearOfBoundaries(param.relation_param(), 1, 1);
  TripletRelationLossLayer<typename TypeParam::Dtype> layer(param);
  GradientChecker<typename TypeParam::Dtype> checker(1e-2, 1e-3);
  checker.CheckGradientExhaustive(&layer, this->bottom_vec_, this->top_vec_,
      0);
}

// Embeddings of 4-D blobs are flattened per instance.
TYPED_TEST(TripletRelationLossLayerTest, TestGradientTuple4D) {
  typedef typename TypeParam::Dtype Dtype;
  this->student_->Reshape(6, 2, 2, 1);
  this->teacher_->Reshape(6, 1, 3, 1);
  LayerParameter param = this->Param(RelationParameter_Mode_TUPLE, 0.6, 0.5,
      10);
  this->FillClearOfBoundaries(param.relation_param(), 3, 2);
  TripletRelationLossLayer<Dtype> layer(param);
  GradientChecker<Dtype> checker(1e-2, 1e-3);
  checker.CheckGradientExhaustive(&layer, this->bottom_vec_, this->top_vec_,
      0);
}

TYPED_TEST(TripletRelationLossLayerTest, TestLossWeight) {
  typedef typename TypeParam::Dtype Dtype;
  LayerParameter param = this->Param(RelationParameter_Mode_TRIPLET, 0.6,
      0.5, 10);
  this->FillClearOfBoundaries(param.relation_param(), 3, 1);
  TripletRelationLossLayer<Dtype> plain(param);
  this->RunBoth(&plain);
  const Dtype loss = this->top_->cpu_data()[0];
  vector<Dtype> diff(this->student_->cpu_diff(),
      this->student_->cpu_diff() + this->student_->count());
  param.add_loss_weight(3);
  TripletRelationLossLayer<Dtype> weighted(param);
  weighted.SetUp(this->bottom_vec_, this->top_vec_);
  const Dtype weighted_loss =
      weighted.Forward(this->bottom_vec_, this->top_vec_);
  EXPECT_NEAR(3 * loss, weighted_loss, 1e-5 * (1 + loss));
  vector<bool> propagate_down(3, false);
  propagate_down[0] = true;
  weighted.Backward(this->top_vec_, propagate_down, this->bottom_vec_);
  for (int k = 0; k < this->student_->count(); ++k) {
    EXPECT_NEAR(3 * diff[k], this->student_->cpu_diff()[k],
        1e-5 * (1 + std::fabs(diff[k])));
  }
}

// One instance per class: no positive, so nothing is mined.
TYPED_TEST(TripletRelationLossLayerTest, TestNoTripletGivesZeros) {
  typedef typename TypeParam::Dtype Dtype;
  FillerParameter filler_param;
  GaussianFiller<Dtype> filler(filler_param);
  filler.Fill(this->student_);
  filler.Fill(this->teacher_);
  const Dtype y[6] = {0, 1, 2, 3, 4, 5};
  this->SetLabels(y, 6);
  for (int mode = 0; mode < 2; ++mode) {
    TripletRelationLossLayer<Dtype> layer(this->Param(
        static_cast<RelationParameter_Mode>(mode), 2, 4, 1000));
    this->ExpectZeroLossAndGradient(&layer);
  }
}

// One class: no negative, so nothing is mined.
TYPED_TEST(TripletRelationLossLayerTest, TestOneClassGivesZeros) {
  typedef typename TypeParam::Dtype Dtype;
  FillerParameter filler_param;
  GaussianFiller<Dtype> filler(filler_param);
  filler.Fill(this->student_);
  filler.Fill(this->teacher_);
  caffe_set(6, Dtype(3), this->label_->mutable_cpu_data());
  for (int mode = 0; mode < 2; ++mode) {
    TripletRelationLossLayer<Dtype> layer(this->Param(
        static_cast<RelationParameter_Mode>(mode), 2, 4, 1000));
    this->ExpectZeroLossAndGradient(&layer);
  }
}

// Axis-aligned rows give exactly representable distances: u0 = (1, 0),
// u1 = (0, 1) [class 0], u2 = (0, -1), u3 = (-1, 0) [class 1]. Every anchor
// has one negative at the same distance as its positive (gap exactly 0: not
// mined, the window is open at 0) and one at gap 2 - sqrt(2) (mined).
TYPED_TEST(TripletRelationLossLayerTest, TestTiedDistances) {
  typedef typename TypeParam::Dtype Dtype;
  const Dtype s[8] = {1, 0, 0, 1, 0, -1, -1, 0};
  const Dtype t[8] = {1, 0, 1, 1, 0, 1, -1, 0.5};
  const Dtype y[4] = {0, 0, 1, 1};
  this->SetRows(this->student_, s, 4, 2);
  this->SetRows(this->teacher_, t, 4, 2);
  this->SetLabels(y, 4);
  for (int mode = 0; mode < 2; ++mode) {
    LayerParameter param = this->Param(
        static_cast<RelationParameter_Mode>(mode), 0.6, 1, 10);
    TripletRelationLossLayer<Dtype> layer(param);
    this->RunBoth(&layer);
    EXPECT_EQ(4, layer.num_triplets());
    EXPECT_EQ(4, layer.num_tuples());
    const TripletReference ref = ReferenceLoss(*this->student_,
        *this->teacher_, *this->label_, param.relation_param());
    EXPECT_EQ(4, ref.triplets);
    EXPECT_NEAR(ref.loss, this->top_->cpu_data()[0], 1e-5 * (1 + ref.loss));
  }
}

// The window is closed at the margin: a duplicated positive (d_ap = 0, whose
// gradient is taken as 0) and an opposite negative (d_an = 2) give a gap of
// exactly 2, mined with margin 2 and not with margin 1.99.
TYPED_TEST(TripletRelationLossLayerTest, TestGapAtMargin) {
  typedef typename TypeParam::Dtype Dtype;
  const Dtype s[6] = {1, 0, 2, 0, -1, 0};
  const Dtype t[6] = {1, 0, 0, 1, -1, 0};
  const Dtype y[3] = {0, 0, 1};
  this->SetRows(this->student_, s, 3, 2);
  this->SetRows(this->teacher_, t, 3, 2);
  this->SetLabels(y, 3);
  TripletRelationLossLayer<Dtype> closed(this->Param(
      RelationParameter_Mode_TRIPLET, 2, 1, 10));
  this->RunBoth(&closed);
  EXPECT_EQ(2, closed.num_triplets());
  EXPECT_GT(this->top_->cpu_data()[0], 0);
  TripletRelationLossLayer<Dtype> narrow(this->Param(
      RelationParameter_Mode_TRIPLET, 1.99, 1, 10));
  this->ExpectZeroLossAndGradient(&narrow);
}

// A zero student row and a zero teacher row: normalized to 0, distance 1 to
// every unit row; the loss and gradient stay finite, the zero row's gradient
// is 0. The zero student row is instance 5, alone in its class: were it in a
// class with others, its distances to them (1 in exact arithmetic, 1 +- an
// ulp from the rows' rounded norms) would tie and the mined set would
// depend on rounding.
TYPED_TEST(TripletRelationLossLayerTest, TestZeroRows) {
  typedef typename TypeParam::Dtype Dtype;
  LayerParameter param = this->Param(RelationParameter_Mode_TUPLE, 2, 0.5,
      10);
  this->FillClearOfBoundaries(param.relation_param(), 1, 1);
  caffe_set(4, Dtype(0), this->student_->mutable_cpu_data() + 20);  // row 5
  caffe_set(3, Dtype(0), this->teacher_->mutable_cpu_data() + 6);  // row 2
  for (int mode = 0; mode < 2; ++mode) {
    param.mutable_relation_param()->set_mode(
        static_cast<RelationParameter_Mode>(mode));
    TripletRelationLossLayer<Dtype> layer(param);
    this->RunBoth(&layer);
    const TripletReference ref = ReferenceLoss(*this->student_,
        *this->teacher_, *this->label_, param.relation_param());
    EXPECT_GT(ref.triplets, 0);
    EXPECT_EQ(ref.triplets, layer.num_triplets());
    EXPECT_NEAR(ref.loss, this->top_->cpu_data()[0], 1e-4 * (1 + ref.loss));
    for (int k = 20; k < 24; ++k) {
      EXPECT_EQ(Dtype(0), this->student_->cpu_diff()[k]);
    }
  }
}

// Bad input dies with a message naming the layer, the blobs and the shapes.
template <typename Dtype>
class TripletRelationLossLayerDeathTest : public CPUDeviceTest<Dtype> {
 protected:
  TripletRelationLossLayerDeathTest()
      : student_(4, 3, 1, 1), teacher_(4, 2, 1, 1),
        label_(vector<int>(1, 4)), top_vec_(1, &top_) {
    FillerParameter filler_param;
    GaussianFiller<Dtype> filler(filler_param);
    filler.Fill(&student_);
    filler.Fill(&teacher_);
    for (int i = 0; i < 4; ++i) label_.mutable_cpu_data()[i] = i % 2;
    bottom_vec_.push_back(&student_);
    bottom_vec_.push_back(&teacher_);
    bottom_vec_.push_back(&label_);
    ::testing::FLAGS_gtest_death_test_style = "threadsafe";
  }
  static LayerParameter Param() {
    LayerParameter param;
    param.set_name("rel");
    param.add_bottom("feat_s");
    param.add_bottom("feat_t");
    param.add_bottom("label");
    return param;
  }
  void SetUpAndForward(const LayerParameter& param) {
    TripletRelationLossLayer<Dtype> layer(param);
    layer.SetUp(bottom_vec_, top_vec_);
    layer.Forward(bottom_vec_, top_vec_);
  }
  Blob<Dtype> student_, teacher_, label_, top_;
  vector<Blob<Dtype>*> bottom_vec_, top_vec_;
};

TYPED_TEST_CASE(TripletRelationLossLayerDeathTest, TestDtypes);

TYPED_TEST(TripletRelationLossLayerDeathTest, TestInstanceMismatchDies) {
  this->teacher_.Reshape(5, 2, 1, 1);
  EXPECT_DEATH(this->SetUpAndForward(this->Param()),
      "TripletRelationLoss layer 'rel': "
      "bottom\\[0\\] 'feat_s' \\(4 3 1 1 \\(12\\)\\) and "
      "bottom\\[1\\] 'feat_t' \\(5 2 1 1 \\(10\\)\\) must hold the same "
      "number of instances");
}

TYPED_TEST(TripletRelationLossLayerDeathTest, TestLabelCountDies) {
  this->label_.Reshape(vector<int>(1, 3));
  EXPECT_DEATH(this->SetUpAndForward(this->Param()),
      "TripletRelationLoss layer 'rel': bottom\\[2\\] 'label' \\(3 \\(3\\)\\) "
      "must hold N = 4 labels, one per instance of "
      "bottom\\[0\\] 'feat_s' \\(4 3 1 1 \\(12\\)\\)");
}

TYPED_TEST(TripletRelationLossLayerDeathTest, TestNonIntegerLabelDies) {
  this->label_.mutable_cpu_data()[1] = 1.5;
  EXPECT_DEATH(this->SetUpAndForward(this->Param()),
      "TripletRelationLoss layer 'rel': bottom\\[2\\] 'label' \\(4 \\(4\\)\\) "
      "entry 1 is 1.5; labels must be non-negative integers");
}

TYPED_TEST(TripletRelationLossLayerDeathTest, TestNegativeLabelDies) {
  this->label_.mutable_cpu_data()[3] = -1;
  EXPECT_DEATH(this->SetUpAndForward(this->Param()),
      "TripletRelationLoss layer 'rel': bottom\\[2\\] 'label' \\(4 \\(4\\)\\) "
      "entry 3 is -1; labels must be non-negative integers");
}

TYPED_TEST(TripletRelationLossLayerDeathTest, TestNegativeMarginDies) {
  LayerParameter param = this->Param();
  param.mutable_relation_param()->set_margin(-0.1);
  EXPECT_DEATH(this->SetUpAndForward(param),
      "TripletRelationLoss layer 'rel': relation_param.margin is -0.1; "
      "it must be >= 0");
}

TYPED_TEST(TripletRelationLossLayerDeathTest, TestNonPositiveTau1Dies) {
  LayerParameter param = this->Param();
  param.mutable_relation_param()->set_tau1(0);
  EXPECT_DEATH(this->SetUpAndForward(param),
      "TripletRelationLoss layer 'rel': relation_param.tau1 is 0; "
      "it must be > 0");
}

TYPED_TEST(TripletRelationLossLayerDeathTest, TestTeacherGradientDies) {
  TripletRelationLossLayer<TypeParam> layer(this->Param());
  layer.SetUp(this->bottom_vec_, this->top_vec_);
  layer.Forward(this->bottom_vec_, this->top_vec_);
  vector<bool> propagate_down(3, true);
  propagate_down[2] = false;
  EXPECT_DEATH(layer.Backward(this->top_vec_, propagate_down,
      this->bottom_vec_),
      "TripletRelationLoss layer 'rel' cannot backpropagate to "
      "bottom\\[1\\] 'feat_t' \\(4 2 1 1 \\(8\\)\\), the teacher embedding");
}

TYPED_TEST(TripletRelationLossLayerDeathTest, TestLabelGradientDies) {
  TripletRelationLossLayer<TypeParam> layer(this->Param());
  layer.SetUp(this->bottom_vec_, this->top_vec_);
  layer.Forward(this->bottom_vec_, this->top_vec_);
  vector<bool> propagate_down(3, false);
  propagate_down[2] = true;
  EXPECT_DEATH(layer.Backward(this->top_vec_, propagate_down,
      this->bottom_vec_),
      "TripletRelationLoss layer 'rel' cannot backpropagate to "
      "bottom\\[2\\] 'label' \\(4 \\(4\\)\\), the labels");
}

}  // namespace caffe
