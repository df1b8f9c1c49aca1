// Registration and the ops; see sam_edge_ops.h for their contracts.
#include "sam_edge_ops.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <exception>
#include <functional>
#include <initializer_list>
#include <iterator>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "attention.h"
#include "gelu_quantize.h"
#include "layer_norm.h"
#include "mask_upscale.h"

namespace sam_edge::ort {
namespace {

// An ORT call's failure, carried as an exception within this file only.
struct OrtCallError : std::runtime_error {
  OrtCallError(OrtErrorCode code, const std::string& message) : std::runtime_error(message), code(code) {}
  OrtErrorCode code;
};

void check(const OrtApi* api, OrtStatus* status) {
  if (!status) return;
  const OrtErrorCode code = api->GetErrorCode(status);
  std::string message = api->GetErrorMessage(status);
  api->ReleaseStatus(status);
  throw OrtCallError(code, message);
}

// Every function ORT calls runs its body through here, so no C++ exception
// crosses the C ABI: each becomes an error status, prefixed with where it arose.
template <class Body>
OrtStatus* guarded(const OrtApi* api, const char* where, Body&& body) noexcept {
  try {
    body();
    return nullptr;
  } catch (const OrtCallError& e) {
    return api->CreateStatus(e.code, (std::string(where) + ": " + e.what()).c_str());
  } catch (const std::invalid_argument& e) {
    return api->CreateStatus(ORT_INVALID_ARGUMENT, (std::string(where) + ": " + e.what()).c_str());
  } catch (const std::bad_alloc&) {
    return api->CreateStatus(ORT_RUNTIME_EXCEPTION, "sam_edge_ops: out of memory");
  } catch (const std::exception& e) {
    return api->CreateStatus(ORT_RUNTIME_EXCEPTION, (std::string(where) + ": " + e.what()).c_str());
  } catch (...) {
    return api->CreateStatus(ORT_FAIL, where);
  }
}

std::string shape_string(const std::vector<int64_t>& shape) {
  std::string s = "(";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + (shape.size() == 1 ? ",)" : ")");
}

// The ONNX element type of each C++ type an op reads or writes.
template <class T>
constexpr ONNXTensorElementDataType kElementType = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
template <>
constexpr ONNXTensorElementDataType kElementType<uint8_t> = ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8;

const char* type_name(ONNXTensorElementDataType type) {
  return type == ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8 ? "uint8" : "float32";
}

// An input's data and shape; data null for an optional input left out.
template <class T>
struct Tensor {
  const T* data = nullptr;
  std::vector<int64_t> shape;
};
using Input = Tensor<float>;

template <class T = float>
Tensor<T> input(const OrtApi* api, const OrtKernelContext* context, size_t index, const char* name) {
  Tensor<T> in;
  const OrtValue* value = nullptr;
  check(api, api->KernelContext_GetInput(context, index, &value));
  if (!value) return in;
  OrtTensorTypeAndShapeInfo* info = nullptr;
  check(api, api->GetTensorTypeAndShape(value, &info));
  // Released on every path: the calls below may throw.
  struct Release {
    const OrtApi* api;
    OrtTensorTypeAndShapeInfo* info;
    ~Release() { api->ReleaseTensorTypeAndShapeInfo(info); }
  } release{api, info};
  ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  check(api, api->GetTensorElementType(info, &type));
  if (type != kElementType<T>)
    throw std::invalid_argument(std::string(name) + " must be " + type_name(kElementType<T>) +
                                "; got ONNX element type " + std::to_string(type));
  size_t rank = 0;
  check(api, api->GetDimensionsCount(info, &rank));
  in.shape.resize(rank);
  check(api, api->GetDimensions(info, in.shape.data(), rank));
  void* data = nullptr;
  // ORT's C API has one accessor for inputs and outputs; we only read through it.
  check(api, api->GetTensorMutableData(const_cast<OrtValue*>(value), &data));
  in.data = static_cast<const T*>(data);
  return in;
}

// Output `index` with `shape`, allocated by ORT with the op's declared type.
template <class T>
T* output(const OrtApi* api, OrtKernelContext* context, size_t index, const std::vector<int64_t>& shape) {
  OrtValue* out = nullptr;
  check(api, api->KernelContext_GetOutput(context, index, shape.data(), shape.size(), &out));
  void* data = nullptr;
  check(api, api->GetTensorMutableData(out, &data));
  return static_cast<T*>(data);
}

int64_t element_count(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// ---- the session's pool ----

// The runtimes whose table has KernelContext_ParallelFor (noted at registration).
std::mutex parallel_for_mutex;
std::vector<const OrtApi*> parallel_for_apis;

void note_parallel_for(const OrtApi* api, const OrtApiBase* api_base) {
  if (!api_base->GetApi(kOrtParallelForApiVersion)) return;
  std::lock_guard<std::mutex> lock(parallel_for_mutex);
  if (std::find(parallel_for_apis.begin(), parallel_for_apis.end(), api) == parallel_for_apis.end())
    parallel_for_apis.push_back(api);
}

bool has_parallel_for(const OrtApi* api) {
  std::lock_guard<std::mutex> lock(parallel_for_mutex);
  return std::find(parallel_for_apis.begin(), parallel_for_apis.end(), api) != parallel_for_apis.end();
}

// The kernel's tasks on the session's intra-op pool: the op shares the session's
// threads, where an OpenMP team beside ORT's spinning pool would fight it for the cores.
// Every op's kernel runs its loops through it.
TaskRunner session_pool(const OrtApi* api, OrtKernelContext* context) {
  return [api, context](int64_t tasks, const std::function<void(int64_t)>& body) {
    struct Call {
      const std::function<void(int64_t)>* body;
      std::mutex mutex;
      std::exception_ptr error;
    } call;
    call.body = &body;
    // No exception may cross ORT's C callback: the first is kept and rethrown here.
    const auto run = [](void* data, size_t i) noexcept {
      auto* c = static_cast<Call*>(data);
      try {
        (*c->body)(static_cast<int64_t>(i));
      } catch (...) {
        std::lock_guard<std::mutex> lock(c->mutex);
        if (!c->error) c->error = std::current_exception();
      }
    };
    check(api, api->KernelContext_ParallelFor(context, run, static_cast<size_t>(tasks), 0, &call));
    if (call.error) std::rethrow_exception(call.error);
  };
}

// The pool a kernel is handed, or null on a runtime older than 1.17, which has
// none to lend: the kernel's own OpenMP team runs it there.
struct SessionPool {
  SessionPool(const OrtApi* api, OrtKernelContext* context)
      : runner(session_pool(api, context)), usable(has_parallel_for(api)) {}
  const TaskRunner* get() const { return usable ? &runner : nullptr; }
  TaskRunner runner;
  bool usable;
};

// ---- RelPosAttention ----

// The attribute's name as attention.h's Compute.
Compute parse_compute(const std::string& name) {
  if (name == "fp32") return Compute::fp32;
  if (name == "fp16") return Compute::fp16;
  if (name == "bf16") return Compute::bf16;
  throw std::invalid_argument("compute must be \"fp32\", \"fp16\" or \"bf16\"; got \"" + name + "\"");
}

// The one call into the attention kernel.
void run_attention(const float* qkv, const float* rel_pos_h, const float* rel_pos_w, const float* kv_bias, float* out,
                   int64_t batch, int64_t height, int64_t width, int64_t heads, int64_t head_dim, int64_t window,
                   float scale, Compute compute, const TaskRunner* pool) {
  rel_pos_attention_qkv_cpu(qkv, rel_pos_h, rel_pos_w, kv_bias, out, batch, height, width, heads, head_dim, window,
                            scale, /*threads=*/0, /*force_portable=*/false, compute, pool);
}

// This CPU's features, probed once.
const CpuFeatures& this_cpu() {
  static const CpuFeatures cpu = rel_pos_attention_this_cpu();
  return cpu;
}

struct RelPosAttention {
  const OrtApi* api;
  int64_t heads;
  int64_t window;
  float scale;
  Compute compute;
};

int64_t int_attribute(const OrtApi* api, const OrtKernelInfo* info, const char* name) {
  int64_t value = 0;
  if (OrtStatus* status = api->KernelInfoGetAttribute_int64(info, name, &value)) {
    api->ReleaseStatus(status);
    throw std::invalid_argument(std::string("needs the int attribute ") + name);
  }
  return value;
}

RelPosAttention* create_rel_pos_attention(const OrtApi* api, const OrtKernelInfo* info) {
  RelPosAttention op{api, int_attribute(api, info, "heads"), int_attribute(api, info, "window"), 0.0f, Compute::fp32};
  if (OrtStatus* status = api->KernelInfoGetAttribute_float(info, "scale", &op.scale)) {
    api->ReleaseStatus(status);
    throw std::invalid_argument("needs the float attribute scale");
  }
  size_t size = 0;
  if (OrtStatus* status = api->KernelInfoGetAttribute_string(info, "compute", nullptr, &size)) {
    api->ReleaseStatus(status);  // absent: fp32
  } else {
    std::string name(size, '\0');
    check(api, api->KernelInfoGetAttribute_string(info, "compute", name.data(), &size));
    name.resize(size > 0 ? size - 1 : 0);  // size counts the terminator
    op.compute = parse_compute(name);
  }
  if (op.heads < 1 || op.window < 0)
    throw std::invalid_argument("heads must be >= 1 and window >= 0; got heads " + std::to_string(op.heads) +
                                ", window " + std::to_string(op.window));
  if (!std::isfinite(op.scale)) throw std::invalid_argument("scale must be finite");
  return new RelPosAttention(op);
}

void compute_rel_pos_attention(const RelPosAttention& op, OrtKernelContext* context) {
  const OrtApi* api = op.api;
  size_t inputs = 0;
  check(api, api->KernelContext_GetInputCount(context, &inputs));
  const Input qkv = input(api, context, 0, "qkv");
  const Input rel_pos_h = input(api, context, 1, "rel_pos_h");
  const Input rel_pos_w = input(api, context, 2, "rel_pos_w");
  const Input kv_bias = inputs > 3 ? input(api, context, 3, "kv_bias") : Input{};
  if (qkv.shape.size() != 4 || qkv.shape[3] % (3 * op.heads) != 0)
    throw std::invalid_argument("expected qkv (B, H, W, 3 * heads * D) with heads " + std::to_string(op.heads) +
                                "; got " + shape_string(qkv.shape));
  const int64_t batch = qkv.shape[0], height = qkv.shape[1], width = qkv.shape[2];
  const int64_t d = qkv.shape[3] / (3 * op.heads);
  // A window past the grid only adds padded keys; no SAM block has one.
  if (op.window > std::max(height, width))
    throw std::invalid_argument("window " + std::to_string(op.window) + " is larger than the " +
                                std::to_string(height) + " x " + std::to_string(width) + " grid");
  const int64_t s_h = op.window > 0 ? op.window : height, s_w = op.window > 0 ? op.window : width;
  const std::vector<int64_t> want_h{2 * s_h - 1, d}, want_w{2 * s_w - 1, d}, want_bias{2, op.heads, d};
  if (rel_pos_h.shape != want_h || rel_pos_w.shape != want_w)
    throw std::invalid_argument("expected rel_pos_h " + shape_string(want_h) + " and rel_pos_w " +
                                shape_string(want_w) + " (2 * s - 1, D), s the window or the grid; got " +
                                shape_string(rel_pos_h.shape) + " and " + shape_string(rel_pos_w.shape));
  if (kv_bias.data && kv_bias.shape != want_bias)
    throw std::invalid_argument("expected kv_bias " + shape_string(want_bias) + " (2, heads, D); got " +
                                shape_string(kv_bias.shape));
  const std::vector<int64_t> out_shape{batch, height, width, op.heads * d};
  OrtValue* out = nullptr;
  check(api, api->KernelContext_GetOutput(context, 0, out_shape.data(), out_shape.size(), &out));
  void* out_data = nullptr;
  check(api, api->GetTensorMutableData(out, &out_data));
  // The attribute allows reduced arithmetic; the bundle runs unchanged on CPUs and shapes that lack it.
  const Compute compute = rel_pos_attention_fast_compute(d, s_h, s_w, op.compute, this_cpu()).value_or(Compute::fp32);
  run_attention(qkv.data, rel_pos_h.data, rel_pos_w.data, kv_bias.data, static_cast<float*>(out_data), batch, height,
                width, op.heads, d, op.window, op.scale, compute, SessionPool(api, context).get());
}

// ---- LayerNorm ----

// The one call into the LayerNorm kernel.
void run_layer_norm(const float* x, const float* weight, const float* bias, float* out, int64_t rows, int64_t channels,
                    float epsilon, const TaskRunner* pool) {
  layer_norm_cpu(x, weight, bias, out, rows, channels, epsilon, /*threads=*/0, pool);
}

struct LayerNorm {
  const OrtApi* api;
  float epsilon;
};

LayerNorm* create_layer_norm(const OrtApi* api, const OrtKernelInfo* info) {
  float epsilon = 0.0f;
  if (OrtStatus* status = api->KernelInfoGetAttribute_float(info, "epsilon", &epsilon)) {
    api->ReleaseStatus(status);
    throw std::invalid_argument("needs the float attribute epsilon");
  }
  if (!(epsilon >= 0.0f) || !std::isfinite(epsilon))
    throw std::invalid_argument("epsilon must be finite and >= 0; got " + std::to_string(epsilon));
  return new LayerNorm{api, epsilon};
}

void compute_layer_norm(const LayerNorm& op, OrtKernelContext* context) {
  const OrtApi* api = op.api;
  const Input x = input(api, context, 0, "X");
  const Input weight = input(api, context, 1, "scale");
  const Input bias = input(api, context, 2, "B");
  if (x.shape.empty()) throw std::invalid_argument("expected X (..., C); got a scalar");
  const int64_t channels = x.shape.back();
  int64_t rows = 1;
  for (size_t i = 0; i + 1 < x.shape.size(); ++i) rows *= x.shape[i];
  const std::vector<int64_t> want{channels};
  if (weight.shape != want || bias.shape != want)
    throw std::invalid_argument("expected scale and B " + shape_string(want) + ", X's last axis; got " +
                                shape_string(weight.shape) + " and " + shape_string(bias.shape));
  OrtValue* out = nullptr;
  check(api, api->KernelContext_GetOutput(context, 0, x.shape.data(), x.shape.size(), &out));
  if (rows == 0 || channels == 0) return;  // an empty tensor: nothing to normalise
  void* out_data = nullptr;
  check(api, api->GetTensorMutableData(out, &out_data));
  run_layer_norm(x.data, weight.data, bias.data, static_cast<float*>(out_data), rows, channels, op.epsilon,
                 SessionPool(api, context).get());
}

// ---- the QuantizeLinear ops ----

// A QuantizeLinear's per-tensor y_scale (float32) and y_zero_point (uint8): each a
// scalar or a one-element vector, as ONNX allows.
struct Quantization {
  float scale;
  uint8_t zero_point;
};

Quantization quantization(const OrtApi* api, const OrtKernelContext* context, size_t scale_index) {
  const Input scale = input(api, context, scale_index, "y_scale");
  const Tensor<uint8_t> zero_point = input<uint8_t>(api, context, scale_index + 1, "y_zero_point");
  const auto scalar = [](const std::vector<int64_t>& shape) {
    return shape.empty() || (shape.size() == 1 && shape[0] == 1);
  };
  if (!scalar(scale.shape) || !scalar(zero_point.shape))
    throw std::invalid_argument("expected y_scale and y_zero_point per tensor (a scalar or (1,)); got " +
                                shape_string(scale.shape) + " and " + shape_string(zero_point.shape));
  const Quantization q{scale.data[0], zero_point.data[0]};
  if (!(q.scale > 0.0f) || !std::isfinite(q.scale))
    throw std::invalid_argument("y_scale must be finite and > 0; got " + std::to_string(q.scale));
  return q;
}

// Rows of X's last axis: (rows, channels), a scalar one row of one.
std::pair<int64_t, int64_t> rows_and_channels(const std::vector<int64_t>& shape) {
  const int64_t channels = shape.empty() ? 1 : shape.back();
  return {channels == 0 ? 0 : element_count(shape) / channels, channels};
}

struct GeluQuantizeLinear {
  const OrtApi* api;
};

GeluQuantizeLinear* create_gelu_quantize_linear(const OrtApi* api, const OrtKernelInfo*) {
  return new GeluQuantizeLinear{api};
}

void compute_gelu_quantize_linear(const GeluQuantizeLinear& op, OrtKernelContext* context) {
  const OrtApi* api = op.api;
  const Input x = input(api, context, 0, "X");
  const Quantization q = quantization(api, context, 1);
  uint8_t* out = output<uint8_t>(api, context, 0, x.shape);
  const auto [rows, channels] = rows_and_channels(x.shape);
  if (rows == 0 || channels == 0) return;  // an empty tensor
  gelu_quantize_cpu(x.data, out, rows, channels, q.scale, q.zero_point, /*threads=*/0,
                    SessionPool(api, context).get());
}

// LayerNormQuantizeLinear(X, scale, B, y_scale, y_zero_point) and, with skip,
// SkipLayerNormQuantizeLinear(X, skip, scale, B, y_scale, y_zero_point); both
// keep LayerNorm's kernel state (the epsilon attribute).
void compute_layer_norm_quantize(const LayerNorm& op, OrtKernelContext* context, bool with_skip) {
  const OrtApi* api = op.api;
  const size_t first = with_skip ? 1 : 0;  // skip sits between X and the norm's weights
  const Input x = input(api, context, 0, "X");
  const Input skip = with_skip ? input(api, context, 1, "skip") : Input{};
  const Input weight = input(api, context, first + 1, "scale");
  const Input bias = input(api, context, first + 2, "B");
  const Quantization q = quantization(api, context, first + 3);
  if (x.shape.empty()) throw std::invalid_argument("expected X (..., C); got a scalar");
  if (with_skip && skip.shape != x.shape)
    throw std::invalid_argument("expected skip shaped like X " + shape_string(x.shape) + "; got " +
                                shape_string(skip.shape));
  const auto [rows, channels] = rows_and_channels(x.shape);
  const std::vector<int64_t> want{channels};
  if (weight.shape != want || bias.shape != want)
    throw std::invalid_argument("expected scale and B " + shape_string(want) + ", X's last axis; got " +
                                shape_string(weight.shape) + " and " + shape_string(bias.shape));
  uint8_t* out = output<uint8_t>(api, context, 0, x.shape);
  float* sum = with_skip ? output<float>(api, context, 1, x.shape) : nullptr;
  if (rows == 0 || channels == 0) return;  // an empty tensor: nothing to normalise
  layer_norm_quantize_cpu(x.data, skip.data, weight.data, bias.data, q.scale, q.zero_point, out, sum, rows, channels,
                          op.epsilon, /*threads=*/0, SessionPool(api, context).get());
}

// ---- MaskUpscale ----

struct MaskUpscale {
  const OrtApi* api;
  int64_t height;
  int64_t width;
  float epsilon;
};

MaskUpscale* create_mask_upscale(const OrtApi* api, const OrtKernelInfo* info) {
  MaskUpscale op{api, int_attribute(api, info, "height"), int_attribute(api, info, "width"), 0.0f};
  if (OrtStatus* status = api->KernelInfoGetAttribute_float(info, "epsilon", &op.epsilon)) {
    api->ReleaseStatus(status);
    throw std::invalid_argument("needs the float attribute epsilon");
  }
  if (op.height < 1 || op.width < 1)
    throw std::invalid_argument("height and width must be >= 1; got " + std::to_string(op.height) + " and " +
                                std::to_string(op.width));
  if (!(op.epsilon >= 0.0f) || !std::isfinite(op.epsilon))
    throw std::invalid_argument("epsilon must be finite and >= 0; got " + std::to_string(op.epsilon));
  return new MaskUpscale(op);
}

void compute_mask_upscale(const MaskUpscale& op, OrtKernelContext* context) {
  const OrtApi* api = op.api;
  const Input src = input(api, context, 0, "src");
  const Input hyper_in = input(api, context, 1, "hyper_in");
  const char* names[] = {"conv1_weight", "conv1_bias", "norm_weight", "norm_bias", "conv2_weight", "conv2_bias"};
  Input params[6];
  for (size_t i = 0; i < 6; ++i) params[i] = input(api, context, 2 + i, names[i]);
  const int64_t pixels = op.height * op.width;
  if (src.shape.size() != 3 || src.shape[1] != pixels || src.shape[2] < 8 || src.shape[2] % 8 != 0)
    throw std::invalid_argument("expected src (S, height * width, C) with height * width = " + std::to_string(pixels) +
                                " and C a positive multiple of 8; got " + shape_string(src.shape));
  const int64_t c = src.shape[2], c1 = c / 4, c2 = c / 8;
  if (hyper_in.shape.size() != 3 || hyper_in.shape[2] != c2 || (src.shape[0] != 1 && src.shape[0] != hyper_in.shape[0]))
    throw std::invalid_argument("expected hyper_in (B, T, C / 8) = (B, T, " + std::to_string(c2) +
                                ") with src's batch 1 or B; got src " + shape_string(src.shape) + " and hyper_in " +
                                shape_string(hyper_in.shape));
  const std::vector<int64_t> want[6] = {{c, c1, 2, 2}, {c1}, {c1}, {c1}, {c1, c2, 2, 2}, {c2}};
  for (size_t i = 0; i < 6; ++i)
    if (params[i].shape != want[i])
      throw std::invalid_argument("expected " + std::string(names[i]) + " " + shape_string(want[i]) + " for C " +
                                  std::to_string(c) + "; got " + shape_string(params[i].shape));
  const int64_t batch = hyper_in.shape[0], tokens = hyper_in.shape[1];
  float* out = output<float>(api, context, 0, {batch, tokens, 4 * op.height, 4 * op.width});
  if (batch == 0 || tokens == 0) return;  // no prompts: an empty output
  if (src.shape[0] == 0) throw std::invalid_argument("src has batch 0 for " + std::to_string(batch) + " prompts");
  const MaskUpscaleWeights weights{params[0].data, params[1].data, params[2].data,
                                   params[3].data, params[4].data, params[5].data};
  mask_upscale_cpu(src.data, hyper_in.data, weights, out, src.shape[0], batch, tokens, op.height, op.width, c,
                   op.epsilon, /*threads=*/0, /*force_portable=*/false, SessionPool(api, context).get());
}

// ---- the op descriptions ----

constexpr ONNXTensorElementDataType kFloat = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
constexpr ONNXTensorElementDataType kUint8 = ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8;

// Each op's traits: its name, its inputs' and outputs' element types (the inputs
// past kRequired optional), its kernel state and the functions that make and run it.
struct RelPosAttentionOp {
  static constexpr const char* kName = "RelPosAttention";
  static constexpr ONNXTensorElementDataType kInputs[] = {kFloat, kFloat, kFloat, kFloat}, kOutputs[] = {kFloat};
  static constexpr size_t kRequired = 3;
  using Kernel = RelPosAttention;
  static Kernel* create(const OrtApi* api, const OrtKernelInfo* info) { return create_rel_pos_attention(api, info); }
  static void compute(const Kernel& kernel, OrtKernelContext* context) { compute_rel_pos_attention(kernel, context); }
};

struct LayerNormOp {
  static constexpr const char* kName = "LayerNorm";
  static constexpr ONNXTensorElementDataType kInputs[] = {kFloat, kFloat, kFloat}, kOutputs[] = {kFloat};
  static constexpr size_t kRequired = 3;
  using Kernel = LayerNorm;
  static Kernel* create(const OrtApi* api, const OrtKernelInfo* info) { return create_layer_norm(api, info); }
  static void compute(const Kernel& kernel, OrtKernelContext* context) { compute_layer_norm(kernel, context); }
};

struct LayerNormQuantizeLinearOp {
  static constexpr const char* kName = "LayerNormQuantizeLinear";
  static constexpr ONNXTensorElementDataType kInputs[] = {kFloat, kFloat, kFloat, kFloat, kUint8},
                                             kOutputs[] = {kUint8};
  static constexpr size_t kRequired = 5;
  using Kernel = LayerNorm;
  static Kernel* create(const OrtApi* api, const OrtKernelInfo* info) { return create_layer_norm(api, info); }
  static void compute(const Kernel& kernel, OrtKernelContext* context) {
    compute_layer_norm_quantize(kernel, context, /*with_skip=*/false);
  }
};

struct SkipLayerNormQuantizeLinearOp {
  static constexpr const char* kName = "SkipLayerNormQuantizeLinear";
  static constexpr ONNXTensorElementDataType kInputs[] = {kFloat, kFloat, kFloat, kFloat, kFloat, kUint8},
                                             kOutputs[] = {kUint8, kFloat};
  static constexpr size_t kRequired = 6;
  using Kernel = LayerNorm;
  static Kernel* create(const OrtApi* api, const OrtKernelInfo* info) { return create_layer_norm(api, info); }
  static void compute(const Kernel& kernel, OrtKernelContext* context) {
    compute_layer_norm_quantize(kernel, context, /*with_skip=*/true);
  }
};

struct GeluQuantizeLinearOp {
  static constexpr const char* kName = "GeluQuantizeLinear";
  static constexpr ONNXTensorElementDataType kInputs[] = {kFloat, kFloat, kUint8}, kOutputs[] = {kUint8};
  static constexpr size_t kRequired = 3;
  using Kernel = GeluQuantizeLinear;
  static Kernel* create(const OrtApi* api, const OrtKernelInfo* info) { return create_gelu_quantize_linear(api, info); }
  static void compute(const Kernel& kernel, OrtKernelContext* context) {
    compute_gelu_quantize_linear(kernel, context);
  }
};

struct MaskUpscaleOp {
  static constexpr const char* kName = "MaskUpscale";
  static constexpr ONNXTensorElementDataType kInputs[] = {kFloat, kFloat, kFloat, kFloat,
                                                          kFloat, kFloat, kFloat, kFloat},
                                             kOutputs[] = {kFloat};
  static constexpr size_t kRequired = 8;
  using Kernel = MaskUpscale;
  static Kernel* create(const OrtApi* api, const OrtKernelInfo* info) { return create_mask_upscale(api, info); }
  static void compute(const Kernel& kernel, OrtKernelContext* context) { compute_mask_upscale(kernel, context); }
};

// On the CPU provider; every output required.
template <class Op>
OrtCustomOp describe() {
  OrtCustomOp op{};
  op.version = kOrtApiVersion;
  op.GetName = [](const OrtCustomOp*) noexcept { return Op::kName; };
  op.GetExecutionProviderType = [](const OrtCustomOp*) noexcept -> const char* { return nullptr; };
  op.GetInputTypeCount = [](const OrtCustomOp*) noexcept { return std::size(Op::kInputs); };
  // ORT asks only for indexes below the counts.
  op.GetInputType = [](const OrtCustomOp*, size_t index) noexcept { return Op::kInputs[index]; };
  op.GetInputCharacteristic = [](const OrtCustomOp*, size_t index) noexcept {
    return index < Op::kRequired ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
  };
  op.GetInputMemoryType = [](const OrtCustomOp*, size_t) noexcept { return OrtMemTypeDefault; };
  op.GetOutputTypeCount = [](const OrtCustomOp*) noexcept { return std::size(Op::kOutputs); };
  op.GetOutputType = [](const OrtCustomOp*, size_t index) noexcept { return Op::kOutputs[index]; };
  op.GetOutputCharacteristic = [](const OrtCustomOp*, size_t) noexcept { return INPUT_OUTPUT_REQUIRED; };
  // No variadic inputs or outputs; the defaults ORT's own ops state.
  op.GetVariadicInputMinArity = [](const OrtCustomOp*) noexcept { return 1; };
  op.GetVariadicInputHomogeneity = [](const OrtCustomOp*) noexcept { return 1; };
  op.GetVariadicOutputMinArity = [](const OrtCustomOp*) noexcept { return 1; };
  op.GetVariadicOutputHomogeneity = [](const OrtCustomOp*) noexcept { return 1; };
  op.CreateKernelV2 = [](const OrtCustomOp*, const OrtApi* api, const OrtKernelInfo* info, void** kernel) noexcept {
    *kernel = nullptr;
    return guarded(api, Op::kName, [&] { *kernel = Op::create(api, info); });
  };
  op.KernelComputeV2 = [](void* kernel, OrtKernelContext* context) noexcept {
    const auto& state = *static_cast<const typename Op::Kernel*>(kernel);
    return guarded(state.api, Op::kName, [&] { Op::compute(state, context); });
  };
  op.KernelDestroy = [](void* kernel) noexcept { delete static_cast<typename Op::Kernel*>(kernel); };
  return op;
}

const OrtCustomOp kRelPosAttention = describe<RelPosAttentionOp>();
const OrtCustomOp kLayerNorm = describe<LayerNormOp>();
const OrtCustomOp kGeluQuantizeLinear = describe<GeluQuantizeLinearOp>();
const OrtCustomOp kLayerNormQuantizeLinear = describe<LayerNormQuantizeLinearOp>();
const OrtCustomOp kSkipLayerNormQuantizeLinear = describe<SkipLayerNormQuantizeLinearOp>();
const OrtCustomOp kMaskUpscale = describe<MaskUpscaleOp>();

// One domain per runtime in the process, never released: it must outlive every
// session built from options it was added to, which the library cannot see end.
OrtCustomOpDomain* domain_for(const OrtApi* api) {
  static std::mutex mutex;
  static std::vector<std::pair<const OrtApi*, OrtCustomOpDomain*>> domains;
  std::lock_guard<std::mutex> lock(mutex);
  for (const auto& [owner, domain] : domains)
    if (owner == api) return domain;
  OrtCustomOpDomain* domain = nullptr;
  check(api, api->CreateCustomOpDomain(kDomain, &domain));
  for (const OrtCustomOp* op : {&kRelPosAttention, &kLayerNorm, &kGeluQuantizeLinear, &kLayerNormQuantizeLinear,
                                 &kSkipLayerNormQuantizeLinear, &kMaskUpscale}) {
    if (OrtStatus* status = api->CustomOpDomain_Add(domain, op)) {
      api->ReleaseCustomOpDomain(domain);
      check(api, status);
    }
  }
  domains.emplace_back(api, domain);
  return domain;
}

}  // namespace

const OrtCustomOp* rel_pos_attention_op() { return &kRelPosAttention; }

}  // namespace sam_edge::ort

using namespace sam_edge::ort;

extern "C" OrtStatus* RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) noexcept {
  const OrtApi* api = api_base->GetApi(kOrtApiVersion);
  if (!api) {
    // Every runtime has version 1's table, whose CreateStatus is all the refusal needs.
    const OrtApi* oldest = api_base->GetApi(1);
    if (!oldest) return nullptr;  // no table to report through; the model then fails on the unknown op
    const std::string message = "sam_edge_ops needs ONNX Runtime API version " + std::to_string(kOrtApiVersion) +
                                " (onnxruntime 1.16 or later); this runtime is " + api_base->GetVersionString();
    return oldest->CreateStatus(ORT_FAIL, message.c_str());
  }
  return guarded(api, "sam_edge_ops", [&] {
    if (!sam_edge::rel_pos_attention_has_avx512())
      throw std::runtime_error("this CPU has no AVX-512, which sam_edge_ops' kernels need; "
                               "run the bundle's standard-op graph instead");
    check(api, api->AddCustomOpDomain(options, domain_for(api)));
    note_parallel_for(api, api_base);
  });
}
