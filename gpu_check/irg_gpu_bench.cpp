// irg_gpu_bench: the IRG layers' forward+backward time on the GPU, beside the
// work the algorithm cannot avoid (for BatchEuclideanMap its two cuBLAS
// GEMMs, for BatchEuclideanVector a device copy of its two inputs), and the
// kernel launches and device-to-host copies of one pass, counted by CUPTI's
// activity records when libcupti can be loaded.
//
//   irg_gpu_bench [--out FILE.tsv] [--ns 64,256,1024,4096]
//                 [--cs 64,512,2048] [--device 0]
//   irg_gpu_bench --probe      (the GPU's name, or "no GPU" and exit 77)
//
// No pycaffe, no data layers: the layers are built directly, as the gtests
// build them. float, irg_param defaults (normalize MAX, squared, EXACT).

#include <cuda.h>
#include <cuda_runtime.h>
#include <cupti.h>
#include <dlfcn.h>
#include <inttypes.h>
#include <stdint.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include "caffe/blob.hpp"
#include "caffe/common.hpp"
#include "caffe/filler.hpp"
#include "caffe/layer.hpp"
#include "caffe/layers/batch_euclidean_map_layer.hpp"
#include "caffe/layers/batch_euclidean_vector_layer.hpp"
#include "caffe/util/math_functions.hpp"

namespace {

using caffe::Blob;
using caffe::Caffe;
using caffe::Layer;
using std::string;
using std::vector;

// --- CUPTI, loaded at run time: the bundle must start without it. -----------

typedef CUptiResult (*RegisterFn)(CUpti_BuffersCallbackRequestFunc,
    CUpti_BuffersCallbackCompleteFunc);
typedef CUptiResult (*KindFn)(CUpti_ActivityKind);
typedef CUptiResult (*FlushFn)(uint32_t);
typedef CUptiResult (*NextFn)(uint8_t*, size_t, CUpti_Activity**);

struct Cupti {
  RegisterFn register_callbacks;
  KindFn enable, disable;
  FlushFn flush_all;
  NextFn next_record;
  string error;  // why it is not there, when it is not
};

Cupti g_cupti = {NULL, NULL, NULL, NULL, NULL, ""};
// Written by CUPTI's buffer-completion callback, which may run on its thread.
std::atomic<int64_t> g_kernels(0), g_d2h(0), g_h2d(0);

void CUPTIAPI BufferRequested(uint8_t** buffer, size_t* size,
    size_t* max_records) {
  *size = 1 << 20;
  *buffer = static_cast<uint8_t*>(aligned_alloc(8, *size));
  *max_records = 0;
}

void CUPTIAPI BufferCompleted(CUcontext, uint32_t, uint8_t* buffer,
    size_t, size_t valid) {
  CUpti_Activity* record = NULL;
  while (g_cupti.next_record(buffer, valid, &record) == CUPTI_SUCCESS) {
    if (record->kind == CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL ||
        record->kind == CUPTI_ACTIVITY_KIND_KERNEL) {
      ++g_kernels;
    } else if (record->kind == CUPTI_ACTIVITY_KIND_MEMCPY) {
      // copyKind directly follows kind in every version of the record.
      const uint8_t kind =
          reinterpret_cast<const CUpti_ActivityMemcpy6*>(record)->copyKind;
      if (kind == CUPTI_ACTIVITY_MEMCPY_KIND_DTOH) ++g_d2h;
      if (kind == CUPTI_ACTIVITY_MEMCPY_KIND_HTOD) ++g_h2d;
    }
  }
  free(buffer);
}

bool LoadCupti() {
  void* lib = dlopen("libcupti.so.13", RTLD_NOW);
  if (!lib) lib = dlopen("libcupti.so", RTLD_NOW);
  if (!lib) {
    g_cupti.error = dlerror();
    return false;
  }
  g_cupti.register_callbacks = reinterpret_cast<RegisterFn>(
      dlsym(lib, "cuptiActivityRegisterCallbacks"));
  g_cupti.enable = reinterpret_cast<KindFn>(dlsym(lib, "cuptiActivityEnable"));
  g_cupti.disable =
      reinterpret_cast<KindFn>(dlsym(lib, "cuptiActivityDisable"));
  g_cupti.flush_all =
      reinterpret_cast<FlushFn>(dlsym(lib, "cuptiActivityFlushAll"));
  g_cupti.next_record =
      reinterpret_cast<NextFn>(dlsym(lib, "cuptiActivityGetNextRecord"));
  if (!g_cupti.register_callbacks || !g_cupti.enable || !g_cupti.disable ||
      !g_cupti.flush_all || !g_cupti.next_record) {
    g_cupti.error = "libcupti lacks the activity API";
    return false;
  }
  if (g_cupti.register_callbacks(BufferRequested, BufferCompleted) !=
      CUPTI_SUCCESS) {
    g_cupti.error = "cuptiActivityRegisterCallbacks failed";
    return false;
  }
  return true;
}

struct Counts {
  int64_t kernels, d2h, h2d;
};

// Kernels and copies while `pass` runs once; -1 where CUPTI is not there.
template <typename F>
Counts Count(F pass) {
  Counts counts = {-1, -1, -1};
  if (!g_cupti.error.empty()) return counts;
  CUDA_CHECK(cudaDeviceSynchronize());
  g_cupti.flush_all(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED);
  g_kernels = g_d2h = g_h2d = 0;
  if (g_cupti.enable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL) != CUPTI_SUCCESS
      || g_cupti.enable(CUPTI_ACTIVITY_KIND_MEMCPY) != CUPTI_SUCCESS) {
    g_cupti.error = "cuptiActivityEnable refused (a profiler already on?)";
    std::printf("launch and copy counts: not measured (CUPTI: %s)\n",
        g_cupti.error.c_str());
    return counts;
  }
  pass();
  CUDA_CHECK(cudaDeviceSynchronize());
  g_cupti.disable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL);
  g_cupti.disable(CUPTI_ACTIVITY_KIND_MEMCPY);
  if (g_cupti.flush_all(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED) != CUPTI_SUCCESS) {
    g_cupti.error = "cuptiActivityFlushAll failed";
    return counts;
  }
  counts.kernels = g_kernels;
  counts.d2h = g_d2h;
  counts.h2d = g_h2d;
  return counts;
}

// --- timing --------------------------------------------------------------

// Mean milliseconds of `f` with CUDA events, after a warm-up; enough
// repetitions for about 200 ms of work (3 to 200).
template <typename F>
double TimeMs(F f) {
  cudaEvent_t start, stop;
  CUDA_CHECK(cudaEventCreate(&start));
  CUDA_CHECK(cudaEventCreate(&stop));
  f();
  CUDA_CHECK(cudaEventRecord(start));
  f();
  CUDA_CHECK(cudaEventRecord(stop));
  CUDA_CHECK(cudaEventSynchronize(stop));
  float once = 0;
  CUDA_CHECK(cudaEventElapsedTime(&once, start, stop));
  const int reps = std::max(3, std::min(200, static_cast<int>(200 / (once
      + 1e-3))));
  CUDA_CHECK(cudaEventRecord(start));
  for (int r = 0; r < reps; ++r) f();
  CUDA_CHECK(cudaEventRecord(stop));
  CUDA_CHECK(cudaEventSynchronize(stop));
  float total = 0;
  CUDA_CHECK(cudaEventElapsedTime(&total, start, stop));
  CUDA_CHECK(cudaEventDestroy(start));
  CUDA_CHECK(cudaEventDestroy(stop));
  return static_cast<double>(total) / reps;
}

struct Row {
  string layer;
  int n, c;
  double ms, fwd_ms, ref_ms;
  string ref;
  Counts fwd, bwd;
};

void FillGaussian(Blob<float>* blob) {
  caffe::FillerParameter param;
  caffe::GaussianFiller<float> filler(param);
  filler.Fill(blob);
}

// One layer at one size: forward, backward and the reference.
Row Measure(const string& layer_type, const int n, const int c) {
  caffe::LayerParameter param;
  param.set_name(layer_type);
  param.set_type(layer_type);
  const bool is_map = layer_type == "BatchEuclideanMap";
  Blob<float> x(n, c, 1, 1), y(n, c, 1, 1), top, scratch(n, std::max(n, c),
      1, 1);
  FillGaussian(&x);
  FillGaussian(&y);
  vector<Blob<float>*> bottom(1, &x), top_vec(1, &top);
  if (!is_map) bottom.push_back(&y);
  Layer<float>* layer = is_map
      ? static_cast<Layer<float>*>(
            new caffe::BatchEuclideanMapLayer<float>(param))
      : static_cast<Layer<float>*>(
            new caffe::BatchEuclideanVectorLayer<float>(param));
  layer->SetUp(bottom, top_vec);
  FillGaussian(&top);  // data overwritten by Forward; the diff stays
  caffe::caffe_copy(top.count(), top.cpu_data(), top.mutable_cpu_diff());
  const vector<bool> down(bottom.size(), true);
  for (size_t b = 0; b < bottom.size(); ++b) bottom[b]->gpu_data();
  top.gpu_diff();
  scratch.mutable_gpu_data();
  scratch.mutable_gpu_diff();
  Row row;
  row.layer = layer_type;
  row.n = n;
  row.c = c;
  row.ms = TimeMs([&] {
    layer->Forward(bottom, top_vec);
    layer->Backward(top_vec, down, bottom);
  });
  row.fwd_ms = TimeMs([&] { layer->Forward(bottom, top_vec); });
  row.fwd = Count([&] { layer->Forward(bottom, top_vec); });
  row.bwd = Count([&] { layer->Backward(top_vec, down, bottom); });
  if (is_map) {
    // K = X X^T (N x N x C) and dX = -2 S X (N x C x N).
    row.ref = "cuBLAS GEMMs";
    float* gram = scratch.mutable_gpu_data();
    float* dx = scratch.mutable_gpu_diff();
    row.ref_ms = TimeMs([&] {
      caffe::caffe_gpu_gemm<float>(CblasNoTrans, CblasTrans, n, n, c, 1.f,
          x.gpu_data(), x.gpu_data(), 0.f, gram);
      caffe::caffe_gpu_gemm<float>(CblasNoTrans, CblasNoTrans, n, c, n, -2.f,
          gram, x.gpu_data(), 0.f, dx);
    });
  } else {
    row.ref = "device copy of x, y";
    float* out = scratch.mutable_gpu_data();
    row.ref_ms = TimeMs([&] {
      CUDA_CHECK(cudaMemcpyAsync(out, x.gpu_data(), sizeof(float) * n * c,
          cudaMemcpyDeviceToDevice));
      CUDA_CHECK(cudaMemcpyAsync(out, y.gpu_data(), sizeof(float) * n * c,
          cudaMemcpyDeviceToDevice));
    });
  }
  delete layer;
  return row;
}

vector<int> ParseList(const char* text) {
  vector<int> out;
  std::stringstream in(text);
  string item;
  while (std::getline(in, item, ',')) out.push_back(std::atoi(item.c_str()));
  return out;
}

string CountText(const int64_t v) {
  if (v < 0) return "-";
  char text[32];
  std::snprintf(text, sizeof(text), "%" PRId64, v);
  return text;
}

}  // namespace

int main(int argc, char** argv) {
  string out_path;
  vector<int> ns = ParseList("64,256,1024,4096");
  vector<int> cs = ParseList("64,512,2048");
  int device = 0;
  bool probe = false;
  for (int a = 1; a < argc; ++a) {
    const string arg = argv[a];
    if (arg == "--probe") {
      probe = true;
    } else if (arg == "--out" && a + 1 < argc) {
      out_path = argv[++a];
    } else if (arg == "--ns" && a + 1 < argc) {
      ns = ParseList(argv[++a]);
    } else if (arg == "--cs" && a + 1 < argc) {
      cs = ParseList(argv[++a]);
    } else if (arg == "--device" && a + 1 < argc) {
      device = std::atoi(argv[++a]);
    } else {
      std::fprintf(stderr, "irg_gpu_bench: unknown argument %s\n",
          arg.c_str());
      return 2;
    }
  }
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess || count == 0) {
    std::printf("no GPU: %s\n", status != cudaSuccess
        ? cudaGetErrorString(status) : "the CUDA runtime sees no device");
    return 77;
  }
  if (device < 0 || device >= count) {
    std::fprintf(stderr, "irg_gpu_bench: --device %d, but there are %d GPUs\n",
        device, count);
    return 2;
  }
  cudaDeviceProp prop;
  CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  int runtime = 0, driver = 0;
  cudaRuntimeGetVersion(&runtime);
  cudaDriverGetVersion(&driver);
  std::printf("GPU %d: %s (sm_%d%d, %.0f GiB), CUDA runtime %d, driver %d\n",
      device, prop.name, prop.major, prop.minor,
      prop.totalGlobalMem / 1073741824.0, runtime, driver);
  if (probe) return 0;
  ::google::InitGoogleLogging(argv[0]);
  Caffe::SetDevice(device);
  Caffe::set_mode(Caffe::GPU);
  if (!LoadCupti()) {
    std::printf("launch and copy counts: not measured (CUPTI: %s); the code "
        "launches map 4 forward / 5 backward, vector 3 / 2, no copies\n",
        g_cupti.error.c_str());
  }
  FILE* out = NULL;
  if (!out_path.empty()) {
    out = std::fopen(out_path.c_str(), "w");
    if (!out) {
      std::fprintf(stderr, "irg_gpu_bench: cannot write %s\n",
          out_path.c_str());
      return 2;
    }
    std::fprintf(out, "layer\tn\tc\tms\tfwd_ms\tref\tref_ms\tfwd_kernels"
        "\tbwd_kernels\td2h\th2d\n");
  }
  const char* layers[] = {"BatchEuclideanMap", "BatchEuclideanVector"};
  std::printf("%-20s %5s %5s %11s %11s %7s %17s %4s\n", "layer", "N", "C",
      "fwd+bwd ms", "reference ms", "ratio", "launches fwd/bwd", "D2H");
  for (int l = 0; l < 2; ++l) {
    for (size_t i = 0; i < ns.size(); ++i) {
      for (size_t j = 0; j < cs.size(); ++j) {
        const Row r = Measure(layers[l], ns[i], cs[j]);
        const string launches = CountText(r.fwd.kernels) + "/" +
            CountText(r.bwd.kernels);
        const int64_t d2h = r.fwd.d2h < 0 ? -1 : r.fwd.d2h + r.bwd.d2h;
        std::printf("%-20s %5d %5d %11.4f %11.4f %7.2f %17s %4s\n",
            r.layer.c_str(), r.n, r.c, r.ms, r.ref_ms, r.ms / r.ref_ms,
            launches.c_str(), CountText(d2h).c_str());
        if (out) {
          const int64_t h2d = r.fwd.h2d < 0 ? -1 : r.fwd.h2d + r.bwd.h2d;
          std::fprintf(out, "%s\t%d\t%d\t%.6f\t%.6f\t%s\t%.6f\t%" PRId64
              "\t%" PRId64 "\t%" PRId64 "\t%" PRId64 "\n", r.layer.c_str(),
              r.n, r.c, r.ms, r.fwd_ms, r.ref.c_str(), r.ref_ms, r.fwd.kernels,
              r.bwd.kernels, d2h, h2d);
          std::fflush(out);
        }
      }
    }
  }
  if (out) std::fclose(out);
  return 0;
}
