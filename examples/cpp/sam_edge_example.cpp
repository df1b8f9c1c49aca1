// sam_edge_example: embed and decode one image with a sam-edge bundle from C++,
// through ONNX Runtime's C API and sam-edge's op library, without Python.
// With --ops, the encoder is the bundle's one graph whose attentions are the
// library's RelPosAttention nodes (manifest "encoder_ops"); without it, or for
// a bundle that has no such graph, the standard-op encoder graph.
//
//   sam_edge_example --runtime LIBONNXRUNTIME [--ops LIBSAM_EDGE_OPS] [--threads N]
//                    BUNDLE IMAGE.rgb WIDTH HEIGHT X Y OUT_DIR
//
// IMAGE.rgb: WIDTH x HEIGHT x 3 uint8, row-major RGB, already resized so that
//   its longest side is at most the bundle's image_size (the backends' embed
//   takes the resized image too; the resize itself is the caller's).
// X Y: one foreground point, in that image's pixels.
// OUT_DIR receives, as raw little-endian arrays (shapes, and the encoder file
// loaded, printed on stdout):
//   image_embeddings.f32  (1, 256, g, g) float32, the encoder's output
//   iou_predictions.f32   (1, 4) float32, the decoder's scores, all four tokens
//   low_res_masks.f32     (1, 4, m, m) float32, the decoder's mask logits
//   masks.u8              (4, HEIGHT, WIDTH) uint8 0/1, logits > 0 after the
//                         bilinear upscale to the frame and the crop
//
// onnxruntime is dlopened and its function table taken from OrtGetApiBase,
// declared by sam-edge's own csrc/ort/ort_abi.h: the wheels ship no headers.
#include <dlfcn.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <sys/stat.h>
#include <vector>

#include "bundle_manifest.h"
#include "ort_abi.h"

using namespace sam_edge::ort;
using namespace sam_edge_example;

namespace {

// Sam.preprocess's constants (sam_edge/config.py), in float32 as there.
constexpr float kPixelMean[3] = {123.675f, 116.28f, 103.53f};
constexpr float kPixelStd[3] = {58.395f, 57.12f, 57.375f};

// ---- ONNX Runtime through its C API ----

class Runtime {
 public:
  explicit Runtime(const std::string& library) {
    // The runtime stays loaded until exit: its threads and handlers may outlive
    // the last object we release.
    handle_ = dlopen(library.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!handle_) throw Error("cannot load onnxruntime from " + library + ": " + dlerror());
    using GetApiBase = const OrtApiBase* (*)();
    auto get_api_base = reinterpret_cast<GetApiBase>(dlsym(handle_, "OrtGetApiBase"));
    if (!get_api_base) throw Error(library + " exports no OrtGetApiBase: not an onnxruntime library");
    const OrtApiBase* base = get_api_base();
    version_ = base->GetVersionString();
    api_ = base->GetApi(kOrtApiVersion);
    if (!api_)
      throw Error("onnxruntime " + version_ + " is older than C API " + std::to_string(kOrtApiVersion) +
                  " (ONNX Runtime 1.16), which this example is built against");
  }

  const OrtApi* api() const { return api_; }
  const std::string& version() const { return version_; }

  // Throws with ORT's message when status is an error; releases it either way.
  void check(OrtStatus* status, const std::string& what) const {
    if (!status) return;
    const std::string message = what + ": " + api_->GetErrorMessage(status);
    api_->ReleaseStatus(status);
    throw Error(message);
  }

 private:
  void* handle_ = nullptr;
  const OrtApi* api_ = nullptr;
  std::string version_;
};

// Owners that call the matching Release* of the table.
template <typename T>
struct Releaser {
  const OrtApi* api;
  void (*OrtApi::*release)(T*) noexcept;
  void operator()(T* p) const {
    if (p) (api->*release)(p);
  }
};
template <typename T>
using Owned = std::unique_ptr<T, Releaser<T>>;

template <typename T>
Owned<T> own(const OrtApi* api, void (*OrtApi::*release)(T*) noexcept, T* p) {
  return Owned<T>(p, Releaser<T>{api, release});
}

struct Tensor {
  std::vector<int64_t> shape;
  const float* data = nullptr;
  size_t count = 0;
};

// The float32 data and shape of a value the runtime returned.
Tensor view(const Runtime& ort, OrtValue* value, const std::string& name) {
  const OrtApi* api = ort.api();
  OrtTensorTypeAndShapeInfo* raw_info = nullptr;
  ort.check(api->GetTensorTypeAndShape(value, &raw_info), name + ": GetTensorTypeAndShape");
  auto info = own(api, &OrtApi::ReleaseTensorTypeAndShapeInfo, raw_info);
  ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  ort.check(api->GetTensorElementType(info.get(), &type), name + ": GetTensorElementType");
  if (type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)
    throw Error(name + " has element type " + std::to_string(type) + ", not float32");
  size_t rank = 0;
  ort.check(api->GetDimensionsCount(info.get(), &rank), name + ": GetDimensionsCount");
  Tensor tensor;
  tensor.shape.resize(rank);
  ort.check(api->GetDimensions(info.get(), tensor.shape.data(), rank), name + ": GetDimensions");
  tensor.count = 1;
  for (int64_t d : tensor.shape) tensor.count *= static_cast<size_t>(d);
  void* data = nullptr;
  ort.check(api->GetTensorMutableData(value, &data), name + ": GetTensorMutableData");
  tensor.data = static_cast<const float*>(data);
  return tensor;
}

// Whether ORT's u8 x s8 GEMM adds product pairs in int16 here: x86 without
// AVX512-VNNI or AVX-VNNI (onnxruntime_backend.int8_gemm_saturates).
bool int8_gemm_saturates() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  return !__builtin_cpu_supports("avx512vnni") && !__builtin_cpu_supports("avxvnni");
#else
  return false;
#endif
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string text;
  for (int64_t d : shape) text += (text.empty() ? "" : "x") + std::to_string(d);
  return text;
}

void write_file(const std::string& path, const void* data, size_t bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(static_cast<const char*>(data), static_cast<std::streamsize>(bytes));
  if (!out) throw Error("cannot write " + path);
}

// ---- the image side ----

// (h, w, 3) uint8 RGB -> (1, 3, S, S) float32, normalised and zero-padded at
// the bottom/right, as OnnxRuntimeBackend.preprocess.
std::vector<float> preprocess(const std::string& rgb, long width, long height, long size) {
  std::vector<float> out(3 * size * size, 0.0f);
  for (long c = 0; c < 3; ++c)
    for (long y = 0; y < height; ++y)
      for (long x = 0; x < width; ++x) {
        const auto pixel = static_cast<unsigned char>(rgb[(y * width + x) * 3 + c]);
        out[(c * size + y) * size + x] = (static_cast<float>(pixel) - kPixelMean[c]) / kPixelStd[c];
      }
  return out;
}

// One axis of a bilinear resize with align_corners=False, as torch computes it
// in float32: the source index pair and the weight of the second.
struct Tap {
  long lo, hi;
  float weight;
};

std::vector<Tap> taps(long in, long out, long count) {
  std::vector<Tap> result(count);
  const float scale = static_cast<float>(in) / static_cast<float>(out);
  for (long i = 0; i < count; ++i) {
    const float source = std::max(0.0f, scale * (static_cast<float>(i) + 0.5f) - 0.5f);
    const long lo = std::min(static_cast<long>(source), in - 1);
    result[i] = {lo, std::min(lo + 1, in - 1), source - static_cast<float>(lo)};
  }
  return result;
}

// (C, m, m) logits -> (C, height, width) masks: the bilinear upscale to the
// S x S frame, cropped to the image, thresholded at 0 (Sam's mask_threshold).
// The image is not resized back, so its size is the original size.
std::vector<unsigned char> masks_from_logits(const Tensor& low_res, long frame, long width, long height) {
  const long channels = low_res.shape[1], m = low_res.shape[2];
  const std::vector<Tap> rows = taps(m, frame, height), columns = taps(m, frame, width);
  std::vector<unsigned char> masks(channels * height * width);
  for (long c = 0; c < channels; ++c) {
    const float* plane = low_res.data + c * m * m;
    for (long y = 0; y < height; ++y) {
      const Tap r = rows[y];
      for (long x = 0; x < width; ++x) {
        const Tap q = columns[x];
        const float top = (1.0f - q.weight) * plane[r.lo * m + q.lo] + q.weight * plane[r.lo * m + q.hi];
        const float bottom = (1.0f - q.weight) * plane[r.hi * m + q.lo] + q.weight * plane[r.hi * m + q.hi];
        const float logit = (1.0f - r.weight) * top + r.weight * bottom;
        masks[(c * height + y) * width + x] = logit > 0.0f;
      }
    }
  }
  return masks;
}

// ---- the command line ----

struct Arguments {
  std::string runtime, ops, bundle, image, out_dir;
  long threads = 0, width = 0, height = 0;
  float x = 0, y = 0;
};

const char* kUsage =
    "usage: sam_edge_example --runtime LIBONNXRUNTIME [--ops LIBSAM_EDGE_OPS] [--threads N]\n"
    "                        BUNDLE IMAGE.rgb WIDTH HEIGHT X Y OUT_DIR\n";

long parse_long(const std::string& text, const char* what) {
  char* end = nullptr;
  errno = 0;
  const long value = std::strtol(text.c_str(), &end, 10);
  if (text.empty() || *end || errno) throw Error(std::string(what) + " must be an integer; got \"" + text + "\"");
  return value;
}

float parse_float(const std::string& text, const char* what) {
  char* end = nullptr;
  errno = 0;
  const float value = std::strtof(text.c_str(), &end);
  if (text.empty() || *end || errno || !std::isfinite(value))
    throw Error(std::string(what) + " must be a number; got \"" + text + "\"");
  return value;
}

Arguments parse(int argc, char** argv) {
  Arguments args;
  std::vector<std::string> positional;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "-h" || arg == "--help") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    }
    if (arg.size() > 2 && arg.compare(0, 2, "--") == 0 && arg != "--runtime" && arg != "--ops" && arg != "--threads")
      throw Error("unknown option " + arg + "\n" + kUsage);
    if (arg == "--runtime" || arg == "--ops" || arg == "--threads") {
      if (i + 1 == argc) throw Error(arg + " needs a value");
      const std::string value = argv[++i];
      if (arg == "--runtime") args.runtime = value;
      if (arg == "--ops") args.ops = value;
      if (arg == "--threads") args.threads = parse_long(value, "--threads");
    } else {
      positional.push_back(arg);
    }
  }
  if (args.runtime.empty() || positional.size() != 7)
    throw Error(std::string("expected --runtime and 7 arguments\n") + kUsage);
  args.bundle = positional[0];
  args.image = positional[1];
  args.width = parse_long(positional[2], "WIDTH");
  args.height = parse_long(positional[3], "HEIGHT");
  args.x = parse_float(positional[4], "X");
  args.y = parse_float(positional[5], "Y");
  args.out_dir = positional[6];
  if (args.threads < 0) throw Error("--threads must be >= 0 (0: onnxruntime's default)");
  return args;
}

int run(const Arguments& args) {
  // Everything that needs no runtime is checked first, so that a bad path is
  // one line, not a half-created session.
  const Bundle bundle = read_bundle(args.bundle);
  if (!args.ops.empty() && !is_file(args.ops)) throw Error("op library not found: " + args.ops + " is not a file");
  if (args.width < 1 || args.height < 1 || std::max(args.width, args.height) > bundle.image_size)
    throw Error("the image must be at most " + std::to_string(bundle.image_size) + " pixels on its longest side "
                "(resize it first); got " + std::to_string(args.width) + "x" + std::to_string(args.height));
  const std::string image_bytes = read_file(args.image);
  if (image_bytes.size() != static_cast<size_t>(args.width * args.height * 3))
    throw Error(args.image + " has " + std::to_string(image_bytes.size()) + " bytes; WIDTH x HEIGHT x 3 RGB is " +
                std::to_string(args.width * args.height * 3));
  if (!is_dir(args.out_dir)) throw Error("OUT_DIR " + args.out_dir + " is not a directory");

  const Runtime ort(args.runtime);
  const OrtApi* api = ort.api();

  OrtEnv* raw_env = nullptr;
  ort.check(api->CreateEnv(ORT_LOGGING_LEVEL_ERROR, "sam_edge_example", &raw_env), "CreateEnv");
  auto env = own(api, &OrtApi::ReleaseEnv, raw_env);

  OrtSessionOptions* raw_options = nullptr;
  ort.check(api->CreateSessionOptions(&raw_options), "CreateSessionOptions");
  auto options = own(api, &OrtApi::ReleaseSessionOptions, raw_options);
  if (args.threads)
    ort.check(api->SetIntraOpNumThreads(options.get(), static_cast<int>(args.threads)), "SetIntraOpNumThreads");
  // As the Python runtime's sessions (onnxruntime_backend.session_options): on
  // x86 CPUs without VNNI, int8 bundles' u8s8 GEMMs would saturate in int16, so
  // ORT is moved to its u8u8 kernels there; elsewhere the option would only
  // trade the VNNI and AMX u8s8 kernels for slower u8u8 ones.
  if (int8_gemm_saturates())
    ort.check(api->AddSessionConfigEntry(options.get(), "session.x64quantprecision", "1"), "AddSessionConfigEntry");
  // The memory pattern plans one block per run on top of the arena, which for
  // the encoder holds every attention map at once; the arena alone reuses them
  // (the decoder shares these options and is small either way).
  ort.check(api->DisableMemPattern(options.get()), "DisableMemPattern");

  // Registered on the options, so both sessions see the domain ai.sam_edge.
  // The library stays loaded until exit, as the runtime does: it keeps its
  // domain, which the runtime points into, for the life of the process.
  if (!args.ops.empty()) {
    void* handle = nullptr;
    ort.check(api->RegisterCustomOpsLibrary(options.get(), args.ops.c_str(), &handle),
              "cannot register the op library " + args.ops);
  }
  // The one graph needs the library; the standard graph runs anywhere.
  const bool ops_graph = !args.ops.empty() && !bundle.encoder_ops.empty();
  const std::string encoder_file = ops_graph ? bundle.encoder_ops : bundle.encoder;
  // ORT's spinning stays on: the library's ops run on the session's own pool
  // (onnxruntime >= 1.17), as the Python runtime's ops session keeps it where no
  // cut runs the AMX-BF16 or AVX512-FP16 attention, which keep an OpenMP team.

  OrtSession* raw_session = nullptr;
  ort.check(api->CreateSession(env.get(), bundle.path(encoder_file).c_str(), options.get(), &raw_session),
            "cannot load the encoder " + bundle.path(encoder_file));
  auto encoder = own(api, &OrtApi::ReleaseSession, raw_session);
  raw_session = nullptr;
  ort.check(api->CreateSession(env.get(), bundle.path(bundle.decoder).c_str(), options.get(), &raw_session),
            "cannot load the decoder " + bundle.path(bundle.decoder));
  auto decoder = own(api, &OrtApi::ReleaseSession, raw_session);

  OrtMemoryInfo* raw_memory = nullptr;
  ort.check(api->CreateCpuMemoryInfo(OrtArenaAllocator, OrtMemTypeDefault, &raw_memory), "CreateCpuMemoryInfo");
  auto memory = own(api, &OrtApi::ReleaseMemoryInfo, raw_memory);
  // Inputs wrap our own buffers, which outlive every run below.
  auto input = [&](std::vector<float>& data, std::vector<int64_t> shape, const char* name) {
    OrtValue* value = nullptr;
    ort.check(api->CreateTensorWithDataAsOrtValue(memory.get(), data.data(), data.size() * sizeof(float),
                                                  shape.data(), shape.size(), ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT,
                                                  &value),
              std::string("input ") + name);
    return own(api, &OrtApi::ReleaseValue, value);
  };

  // Encoder: image -> image_embeddings.
  const long size = bundle.image_size;
  std::vector<float> pixels = preprocess(image_bytes, args.width, args.height, size);
  auto image = input(pixels, {1, 3, size, size}, "image");
  const char* encoder_inputs[] = {"image"};
  const char* encoder_outputs[] = {"image_embeddings"};
  const OrtValue* encoder_feed[] = {image.get()};
  OrtValue* raw_embedding = nullptr;
  ort.check(api->Run(encoder.get(), nullptr, encoder_inputs, encoder_feed, 1, encoder_outputs, 1, &raw_embedding),
            "running the encoder");
  auto embedding = own(api, &OrtApi::ReleaseValue, raw_embedding);

  // Decoder: one point, then the padding point (label -1) the prompt encoder
  // adds when there is no box; no mask input (prompt_layout.decoder_prompt_feed).
  const long m = bundle.mask_input_size;
  std::vector<float> coords = {args.x, args.y, 0.0f, 0.0f};
  std::vector<float> labels = {1.0f, -1.0f};
  std::vector<float> mask_input(m * m, 0.0f);
  std::vector<float> has_mask_input = {0.0f};
  auto point_coords = input(coords, {1, 2, 2}, "point_coords");
  auto point_labels = input(labels, {1, 2}, "point_labels");
  auto mask_value = input(mask_input, {1, 1, m, m}, "mask_input");
  auto has_mask = input(has_mask_input, {1}, "has_mask_input");
  const char* decoder_inputs[] = {"image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input"};
  const OrtValue* decoder_feed[] = {embedding.get(), point_coords.get(), point_labels.get(), mask_value.get(),
                                    has_mask.get()};
  const char* decoder_outputs[] = {"iou_predictions", "low_res_masks"};
  OrtValue* raw_outputs[2] = {nullptr, nullptr};
  OrtStatus* decoded = api->Run(decoder.get(), nullptr, decoder_inputs, decoder_feed, 5, decoder_outputs, 2, raw_outputs);
  auto iou = own(api, &OrtApi::ReleaseValue, raw_outputs[0]);
  auto low_res = own(api, &OrtApi::ReleaseValue, raw_outputs[1]);
  ort.check(decoded, "running the decoder");

  const Tensor embedding_tensor = view(ort, embedding.get(), "image_embeddings");
  const Tensor iou_tensor = view(ort, iou.get(), "iou_predictions");
  const Tensor low_res_tensor = view(ort, low_res.get(), "low_res_masks");
  if (low_res_tensor.shape.size() != 4 || low_res_tensor.shape[0] != 1 || low_res_tensor.shape[2] != low_res_tensor.shape[3])
    throw Error("low_res_masks has shape " + shape_text(low_res_tensor.shape) + ", not (1, C, m, m)");
  const std::vector<unsigned char> masks = masks_from_logits(low_res_tensor, size, args.width, args.height);

  std::printf("onnxruntime %s, bundle %s (image_size %ld)\n", ort.version().c_str(), args.bundle.c_str(), size);
  std::printf("op library: %s\n", args.ops.empty() ? "none" : args.ops.c_str());
  std::printf("encoder: %s\n", encoder_file.c_str());
  for (const auto& [name, tensor] : {std::pair<const char*, const Tensor*>{"image_embeddings", &embedding_tensor},
                                     {"iou_predictions", &iou_tensor},
                                     {"low_res_masks", &low_res_tensor}}) {
    write_file(args.out_dir + "/" + name + ".f32", tensor->data, tensor->count * sizeof(float));
    std::printf("%s.f32 float32 %s\n", name, shape_text(tensor->shape).c_str());
  }
  write_file(args.out_dir + "/masks.u8", masks.data(), masks.size());
  std::printf("masks.u8 uint8 %ldx%ldx%ld\n", static_cast<long>(low_res_tensor.shape[1]), args.height, args.width);
  std::printf("scores:");
  for (size_t i = 0; i < iou_tensor.count; ++i) std::printf(" %.6f", iou_tensor.data[i]);
  std::printf("\n");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(parse(argc, argv));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "sam_edge_example: error: %s\n", e.what());
    return 1;
  }
}
