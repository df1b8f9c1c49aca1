// Our declarations of the part of ONNX Runtime's C ABI that sam_edge_ops and
// the C++ example (examples/cpp/) use.
//
// The onnxruntime wheels ship no C headers, and the library must not link
// onnxruntime: ORT hands it the function table at registration
// (RegisterCustomOps(options, api_base) -> api_base->GetApi(version)). So this
// file declares, from ORT's documented C API, only what we call:
//   - OrtApiBase, the two entry points every runtime exports;
//   - OrtApi, the function table, as pointer slots in ABI order. The table is
//     append-only, so slot n means the same function in every runtime that has
//     it; the slots we do not call are placeholders;
//   - OrtCustomOp, the op description we fill in, as laid out at
//     kOrtApiVersion (fields past it are never read by ORT when an op states
//     that version);
//   - the enums those use.
// Every slot we declare is checked against the installed runtime by
// sam_edge_ops_check_api (abi_check.cpp) and tests/kernels/test_ort_ops.py,
// except those that need a loaded model (Run, the kernel slots), which the op
// tests and tests/test_cpp_example.py exercise.
// A host that loads onnxruntime itself gets the table from the library's one
// exported function, OrtGetApiBase() -> const OrtApiBase*.
#pragma once

#include <cstddef>
#include <cstdint>

namespace sam_edge::ort {

// The ABI version we build against: the first with CreateKernelV2 and
// KernelComputeV2, through which a kernel returns an error status instead of
// throwing across the C boundary (ONNX Runtime 1.16).
constexpr uint32_t kOrtApiVersion = 16;
// The version whose table has KernelContext_ParallelFor, called only where the runtime has it.
constexpr uint32_t kOrtParallelForApiVersion = 17;

// Opaque runtime objects, only ever handled by pointer.
struct OrtStatus;
struct OrtEnv;
struct OrtSession;
struct OrtRunOptions;
struct OrtMemoryInfo;
struct OrtValue;
struct OrtTensorTypeAndShapeInfo;
struct OrtSessionOptions;
struct OrtCustomOpDomain;
struct OrtKernelInfo;
struct OrtKernelContext;
struct OrtApi;
struct OrtCustomOp;

enum OrtErrorCode : int {
  ORT_OK = 0,
  ORT_FAIL = 1,
  ORT_INVALID_ARGUMENT = 2,
  ORT_NO_SUCHFILE = 3,
  ORT_NO_MODEL = 4,
  ORT_ENGINE_ERROR = 5,
  ORT_RUNTIME_EXCEPTION = 6,
};

// ONNX's TensorProto element types, as ORT numbers them.
enum ONNXTensorElementDataType : int {
  ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED = 0,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT = 1,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8 = 2,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16 = 10,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE = 11,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16 = 16,
};

enum OrtLoggingLevel : int {
  ORT_LOGGING_LEVEL_VERBOSE = 0,
  ORT_LOGGING_LEVEL_INFO = 1,
  ORT_LOGGING_LEVEL_WARNING = 2,
  ORT_LOGGING_LEVEL_ERROR = 3,
  ORT_LOGGING_LEVEL_FATAL = 4,
};

enum OrtAllocatorType : int { OrtInvalidAllocator = -1, OrtDeviceAllocator = 0, OrtArenaAllocator = 1 };

enum OrtMemType : int { OrtMemTypeCPUInput = -2, OrtMemTypeCPUOutput = -1, OrtMemTypeDefault = 0 };

enum OrtCustomOpInputOutputCharacteristic : int {
  INPUT_OUTPUT_REQUIRED = 0,
  INPUT_OUTPUT_OPTIONAL = 1,
  INPUT_OUTPUT_VARIADIC = 2,
};

extern "C" {

struct OrtApiBase {
  const OrtApi* (*GetApi)(uint32_t version) noexcept;  // null when the runtime lacks that version
  const char* (*GetVersionString)() noexcept;
};

// Slot indices are in the names of the placeholders and pinned by the
// static_asserts below; a function's index is its position in ORT's table.
struct OrtApi {
  OrtStatus* (*CreateStatus)(OrtErrorCode code, const char* message) noexcept;  // 0
  OrtErrorCode (*GetErrorCode)(const OrtStatus* status) noexcept;                // 1
  const char* (*GetErrorMessage)(const OrtStatus* status) noexcept;             // 2
  OrtStatus* (*CreateEnv)(OrtLoggingLevel level, const char* log_id, OrtEnv** out) noexcept;  // 3
  void* slots_4_to_6[3];
  OrtStatus* (*CreateSession)(const OrtEnv* env, const char* model_path, const OrtSessionOptions* options,
                              OrtSession** out) noexcept;  // 7
  void* slot_8;
  // outputs: null entries are filled with values the caller releases.
  OrtStatus* (*Run)(OrtSession* session, const OrtRunOptions* run_options, const char* const* input_names,
                    const OrtValue* const* inputs, size_t input_count, const char* const* output_names,
                    size_t output_count, OrtValue** outputs) noexcept;  // 9
  OrtStatus* (*CreateSessionOptions)(OrtSessionOptions** out) noexcept;  // 10
  void* slots_11_to_16[6];
  OrtStatus* (*DisableMemPattern)(OrtSessionOptions* options) noexcept;  // 17
  void* slots_18_to_23[6];
  OrtStatus* (*SetIntraOpNumThreads)(OrtSessionOptions* options, int threads) noexcept;  // 24
  void* slot_25;
  OrtStatus* (*CreateCustomOpDomain)(const char* domain, OrtCustomOpDomain** out) noexcept;  // 26
  OrtStatus* (*CustomOpDomain_Add)(OrtCustomOpDomain* domain, const OrtCustomOp* op) noexcept;  // 27
  OrtStatus* (*AddCustomOpDomain)(OrtSessionOptions* options, OrtCustomOpDomain* domain) noexcept;  // 28
  // dlopens library_path and calls its RegisterCustomOps; *library_handle is
  // the caller's: dlclose it, if at all, once no session from these options remains.
  OrtStatus* (*RegisterCustomOpsLibrary)(OrtSessionOptions* options, const char* library_path,
                                         void** library_handle) noexcept;  // 29
  void* slots_30_to_48[19];
  OrtStatus* (*CreateTensorWithDataAsOrtValue)(const OrtMemoryInfo* info, void* data, size_t bytes,
                                               const int64_t* shape, size_t rank, ONNXTensorElementDataType type,
                                               OrtValue** out) noexcept;  // 49
  OrtStatus* (*IsTensor)(const OrtValue* value, int* out) noexcept;          // 50
  OrtStatus* (*GetTensorMutableData)(OrtValue* value, void** out) noexcept;  // 51
  void* slots_52_to_59[8];
  OrtStatus* (*GetTensorElementType)(const OrtTensorTypeAndShapeInfo* info,
                                     ONNXTensorElementDataType* out) noexcept;                       // 60
  OrtStatus* (*GetDimensionsCount)(const OrtTensorTypeAndShapeInfo* info, size_t* out) noexcept;     // 61
  OrtStatus* (*GetDimensions)(const OrtTensorTypeAndShapeInfo* info, int64_t* dims, size_t rank) noexcept;  // 62
  void* slots_63_to_64[2];
  OrtStatus* (*GetTensorTypeAndShape)(const OrtValue* value, OrtTensorTypeAndShapeInfo** out) noexcept;  // 65
  void* slots_66_to_68[3];
  OrtStatus* (*CreateCpuMemoryInfo)(OrtAllocatorType type, OrtMemType mem_type, OrtMemoryInfo** out) noexcept;  // 69
  void* slot_70;
  OrtStatus* (*MemoryInfoGetName)(const OrtMemoryInfo* info, const char** out) noexcept;  // 71
  void* slots_72_to_84[13];
  OrtStatus* (*KernelInfoGetAttribute_float)(const OrtKernelInfo* info, const char* name, float* out) noexcept;  // 85
  OrtStatus* (*KernelInfoGetAttribute_int64)(const OrtKernelInfo* info, const char* name, int64_t* out) noexcept;  // 86
  // out null: sets *size to the string's size with its terminator.
  OrtStatus* (*KernelInfoGetAttribute_string)(const OrtKernelInfo* info, const char* name, char* out,
                                              size_t* size) noexcept;                                   // 87
  OrtStatus* (*KernelContext_GetInputCount)(const OrtKernelContext* context, size_t* out) noexcept;   // 88
  OrtStatus* (*KernelContext_GetOutputCount)(const OrtKernelContext* context, size_t* out) noexcept;  // 89
  // *out is null for an optional input the node leaves out.
  OrtStatus* (*KernelContext_GetInput)(const OrtKernelContext* context, size_t index,
                                       const OrtValue** out) noexcept;  // 90
  OrtStatus* (*KernelContext_GetOutput)(OrtKernelContext* context, size_t index, const int64_t* dims,
                                        size_t rank, OrtValue** out) noexcept;  // 91
  void (*ReleaseEnv)(OrtEnv* env) noexcept;                   // 92
  void (*ReleaseStatus)(OrtStatus* status) noexcept;          // 93
  void (*ReleaseMemoryInfo)(OrtMemoryInfo* info) noexcept;    // 94
  void (*ReleaseSession)(OrtSession* session) noexcept;       // 95
  void (*ReleaseValue)(OrtValue* value) noexcept;             // 96
  void* slots_97_to_98[2];
  void (*ReleaseTensorTypeAndShapeInfo)(OrtTensorTypeAndShapeInfo* info) noexcept;  // 99
  void (*ReleaseSessionOptions)(OrtSessionOptions* options) noexcept;              // 100
  void (*ReleaseCustomOpDomain)(OrtCustomOpDomain* domain) noexcept;               // 101
  void* slots_102_to_129[28];
  // key: at most 128 bytes, not empty (else ORT_INVALID_ARGUMENT); see ORT's
  // session options config keys.
  OrtStatus* (*AddSessionConfigEntry)(OrtSessionOptions* options, const char* key, const char* value) noexcept;  // 130
  void* slots_131_to_273[143];
  // API version 17 (onnxruntime 1.17): fn(usr_data, i) for every i in [0, total) on the
  // session's intra-op thread pool, returning when all have run; num_batch 0 lets ORT batch.
  OrtStatus* (*KernelContext_ParallelFor)(const OrtKernelContext* context, void (*fn)(void* usr_data, size_t i),
                                          size_t total, size_t num_batch, void* usr_data) noexcept;  // 274
  // Later slots exist in the runtime's table; we declare none of them.
};

// An op as ORT reads it, up to the fields of version 16.
struct OrtCustomOp {
  uint32_t version;
  void* (*CreateKernel)(const OrtCustomOp* op, const OrtApi* api, const OrtKernelInfo* info) noexcept;
  const char* (*GetName)(const OrtCustomOp* op) noexcept;
  const char* (*GetExecutionProviderType)(const OrtCustomOp* op) noexcept;  // null: the CPU provider
  ONNXTensorElementDataType (*GetInputType)(const OrtCustomOp* op, size_t index) noexcept;
  size_t (*GetInputTypeCount)(const OrtCustomOp* op) noexcept;
  ONNXTensorElementDataType (*GetOutputType)(const OrtCustomOp* op, size_t index) noexcept;
  size_t (*GetOutputTypeCount)(const OrtCustomOp* op) noexcept;
  void (*KernelCompute)(void* kernel, OrtKernelContext* context) noexcept;
  void (*KernelDestroy)(void* kernel) noexcept;
  OrtCustomOpInputOutputCharacteristic (*GetInputCharacteristic)(const OrtCustomOp* op, size_t index) noexcept;
  OrtCustomOpInputOutputCharacteristic (*GetOutputCharacteristic)(const OrtCustomOp* op, size_t index) noexcept;
  OrtMemType (*GetInputMemoryType)(const OrtCustomOp* op, size_t index) noexcept;
  int (*GetVariadicInputMinArity)(const OrtCustomOp* op) noexcept;
  int (*GetVariadicInputHomogeneity)(const OrtCustomOp* op) noexcept;
  int (*GetVariadicOutputMinArity)(const OrtCustomOp* op) noexcept;
  int (*GetVariadicOutputHomogeneity)(const OrtCustomOp* op) noexcept;
  // Version 16: used instead of CreateKernel and KernelCompute when set.
  OrtStatus* (*CreateKernelV2)(const OrtCustomOp* op, const OrtApi* api, const OrtKernelInfo* info,
                               void** kernel) noexcept;
  OrtStatus* (*KernelComputeV2)(void* kernel, OrtKernelContext* context) noexcept;
};

}  // extern "C"

// The slot counting, pinned: a miscount is a compile error here, not a call
// into the wrong function at run time.
#define SAM_EDGE_ORT_SLOT(name, index) \
  static_assert(offsetof(OrtApi, name) == (index) * sizeof(void*), #name " is slot " #index)
SAM_EDGE_ORT_SLOT(CreateStatus, 0);
SAM_EDGE_ORT_SLOT(GetErrorMessage, 2);
SAM_EDGE_ORT_SLOT(CreateEnv, 3);
SAM_EDGE_ORT_SLOT(CreateSession, 7);
SAM_EDGE_ORT_SLOT(Run, 9);
SAM_EDGE_ORT_SLOT(CreateSessionOptions, 10);
SAM_EDGE_ORT_SLOT(DisableMemPattern, 17);
SAM_EDGE_ORT_SLOT(SetIntraOpNumThreads, 24);
SAM_EDGE_ORT_SLOT(CreateCustomOpDomain, 26);
SAM_EDGE_ORT_SLOT(AddCustomOpDomain, 28);
SAM_EDGE_ORT_SLOT(RegisterCustomOpsLibrary, 29);
SAM_EDGE_ORT_SLOT(CreateTensorWithDataAsOrtValue, 49);
SAM_EDGE_ORT_SLOT(GetTensorMutableData, 51);
SAM_EDGE_ORT_SLOT(GetTensorElementType, 60);
SAM_EDGE_ORT_SLOT(GetDimensions, 62);
SAM_EDGE_ORT_SLOT(GetTensorTypeAndShape, 65);
SAM_EDGE_ORT_SLOT(CreateCpuMemoryInfo, 69);
SAM_EDGE_ORT_SLOT(MemoryInfoGetName, 71);
SAM_EDGE_ORT_SLOT(KernelInfoGetAttribute_float, 85);
SAM_EDGE_ORT_SLOT(KernelContext_GetOutput, 91);
SAM_EDGE_ORT_SLOT(ReleaseEnv, 92);
SAM_EDGE_ORT_SLOT(ReleaseStatus, 93);
SAM_EDGE_ORT_SLOT(ReleaseSession, 95);
SAM_EDGE_ORT_SLOT(ReleaseValue, 96);
SAM_EDGE_ORT_SLOT(ReleaseTensorTypeAndShapeInfo, 99);
SAM_EDGE_ORT_SLOT(ReleaseCustomOpDomain, 101);
SAM_EDGE_ORT_SLOT(AddSessionConfigEntry, 130);
SAM_EDGE_ORT_SLOT(KernelContext_ParallelFor, 274);
#undef SAM_EDGE_ORT_SLOT
// version, padded to a pointer, then 18 function pointers.
static_assert(offsetof(OrtCustomOp, KernelComputeV2) == 18 * sizeof(void*), "OrtCustomOp's version-16 layout");

}  // namespace sam_edge::ort
