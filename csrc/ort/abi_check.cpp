// sam_edge_ops_check_api: ort_abi.h's table against the runtime that hands it
// over. Each declared slot is called once, harmlessly, and its result checked
// against what the documented function returns, so a miscounted slot shows as
// a wrong answer (or a crash, hence the test's subprocess) instead of a
// misbehaving op. The kernel-info and kernel-context slots and Run need a
// running session; the op tests and the C++ example's test exercise them.
#include <cstdio>
#include <cstring>
#include <string>

#include "sam_edge_ops.h"

namespace sam_edge::ort {
namespace {

struct CheckFailed {
  std::string what;
};

void expect(bool ok, const std::string& what) {
  if (!ok) throw CheckFailed{what};
}

void expect_ok(const OrtApi* api, OrtStatus* status, const char* call) {
  if (!status) return;
  std::string message = std::string(call) + " failed: " + api->GetErrorMessage(status);
  api->ReleaseStatus(status);
  throw CheckFailed{message};
}

void check_status(const OrtApi* api) {
  const char* text = "sam_edge_ops status round trip";
  OrtStatus* status = api->CreateStatus(ORT_INVALID_ARGUMENT, text);
  expect(status != nullptr, "CreateStatus returned null");
  const OrtErrorCode code = api->GetErrorCode(status);
  const std::string message = api->GetErrorMessage(status);
  api->ReleaseStatus(status);
  expect(code == ORT_INVALID_ARGUMENT, "GetErrorCode gave " + std::to_string(code) + ", not ORT_INVALID_ARGUMENT");
  expect(message == text, "GetErrorMessage gave \"" + message + "\"");
}

void check_tensor(const OrtApi* api) {
  OrtMemoryInfo* memory = nullptr;
  expect_ok(api, api->CreateCpuMemoryInfo(OrtArenaAllocator, OrtMemTypeDefault, &memory), "CreateCpuMemoryInfo");
  const char* memory_name = nullptr;
  OrtStatus* named = api->MemoryInfoGetName(memory, &memory_name);
  const std::string name = !named && memory_name ? memory_name : "";
  if (named) api->ReleaseStatus(named);

  float data[2 * 3 * 4] = {};
  const int64_t shape[3] = {2, 3, 4};
  OrtValue* value = nullptr;
  OrtStatus* created = api->CreateTensorWithDataAsOrtValue(memory, data, sizeof(data), shape, 3,
                                                           ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, &value);
  api->ReleaseMemoryInfo(memory);  // the value keeps its own copy
  expect_ok(api, created, "CreateTensorWithDataAsOrtValue");
  expect(name == "Cpu", "MemoryInfoGetName gave \"" + name + "\", not \"Cpu\"");

  int is_tensor = -1;
  void* pointer = nullptr;
  OrtTensorTypeAndShapeInfo* info = nullptr;
  ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  size_t rank = 0;
  int64_t dims[3] = {-1, -1, -1};
  std::string failure;
  try {
    expect_ok(api, api->IsTensor(value, &is_tensor), "IsTensor");
    expect_ok(api, api->GetTensorMutableData(value, &pointer), "GetTensorMutableData");
    expect_ok(api, api->GetTensorTypeAndShape(value, &info), "GetTensorTypeAndShape");
    expect_ok(api, api->GetTensorElementType(info, &type), "GetTensorElementType");
    expect_ok(api, api->GetDimensionsCount(info, &rank), "GetDimensionsCount");
    expect(rank == 3, "GetDimensionsCount gave " + std::to_string(rank) + ", not 3");
    expect_ok(api, api->GetDimensions(info, dims, 3), "GetDimensions");
  } catch (const CheckFailed& e) {
    failure = e.what;
  }
  api->ReleaseTensorTypeAndShapeInfo(info);
  api->ReleaseValue(value);
  expect(failure.empty(), failure);
  expect(is_tensor == 1, "IsTensor gave " + std::to_string(is_tensor));
  expect(pointer == data, "GetTensorMutableData did not return the tensor's own buffer");
  expect(type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, "GetTensorElementType gave " + std::to_string(type));
  expect(dims[0] == 2 && dims[1] == 3 && dims[2] == 4, "GetDimensions did not give (2, 3, 4)");
}

void check_registration(const OrtApi* api) {
  OrtSessionOptions* options = nullptr;
  expect_ok(api, api->CreateSessionOptions(&options), "CreateSessionOptions");
  OrtCustomOpDomain* domain = nullptr;
  OrtStatus* status = api->CreateCustomOpDomain("ai.sam_edge.check", &domain);
  if (!status) status = api->CustomOpDomain_Add(domain, rel_pos_attention_op());
  if (!status) status = api->AddCustomOpDomain(options, domain);
  api->ReleaseSessionOptions(options);
  api->ReleaseCustomOpDomain(domain);
  expect_ok(api, status, "CreateCustomOpDomain, CustomOpDomain_Add or AddCustomOpDomain");
}

// The host-side slots, without a model: an env, a session from a file that is
// not there (ORT's NO_SUCHFILE, so a miscounted CreateSession shows), the
// option setters, a config entry with an empty key (ORT's INVALID_ARGUMENT)
// beside a valid one, and a library registration that fails for a missing file.
void check_host(const OrtApi* api) {
  OrtEnv* env = nullptr;
  expect_ok(api, api->CreateEnv(ORT_LOGGING_LEVEL_ERROR, "sam_edge_ops_check", &env), "CreateEnv");
  OrtSessionOptions* options = nullptr;
  OrtStatus* status = api->CreateSessionOptions(&options);
  if (!status) status = api->SetIntraOpNumThreads(options, 1);
  if (!status) status = api->DisableMemPattern(options);
  if (!status) status = api->AddSessionConfigEntry(options, "session.x64quantprecision", "1");
  OrtStatus* empty_key = status ? nullptr : api->AddSessionConfigEntry(options, "", "1");
  if (status) {
    api->ReleaseSessionOptions(options);
    api->ReleaseEnv(env);
    expect_ok(api, status, "CreateSessionOptions, SetIntraOpNumThreads, DisableMemPattern or AddSessionConfigEntry");
  }
  const OrtErrorCode empty_key_code = empty_key ? api->GetErrorCode(empty_key) : ORT_OK;
  api->ReleaseStatus(empty_key);
  const char* missing = "/nonexistent/sam_edge_ops_check/model.onnx";
  OrtSession* session = nullptr;
  OrtStatus* opened = api->CreateSession(env, missing, options, &session);
  void* handle = nullptr;
  OrtStatus* registered = api->RegisterCustomOpsLibrary(options, "/nonexistent/sam_edge_ops_check/lib.so", &handle);
  const OrtErrorCode opened_code = opened ? api->GetErrorCode(opened) : ORT_OK;
  api->ReleaseStatus(opened);
  api->ReleaseStatus(registered);
  api->ReleaseSession(session);  // null unless a miscounted slot made one; release takes null
  api->ReleaseSessionOptions(options);
  api->ReleaseEnv(env);
  expect(empty_key_code == ORT_INVALID_ARGUMENT, "AddSessionConfigEntry with an empty key gave code " +
                                                     std::to_string(empty_key_code) + ", not ORT_INVALID_ARGUMENT");
  expect(opened_code == ORT_NO_SUCHFILE,
         "CreateSession on a missing file gave code " + std::to_string(opened_code) + ", not ORT_NO_SUCHFILE");
  expect(registered != nullptr && handle == nullptr,
         "RegisterCustomOpsLibrary accepted a library that does not exist");
}

}  // namespace
}  // namespace sam_edge::ort

using namespace sam_edge::ort;

extern "C" int sam_edge_ops_check_api(const OrtApiBase* api_base, char* message, size_t size) noexcept {
  std::string failure;
  try {
    const char* version = api_base->GetVersionString();
    expect(version && *version, "GetVersionString gave nothing");
    const OrtApi* api = api_base->GetApi(kOrtApiVersion);
    expect(api != nullptr, "GetApi(" + std::to_string(kOrtApiVersion) + ") gave null: runtime " + version +
                               " is older than that API version");
    check_status(api);
    check_tensor(api);
    check_registration(api);
    check_host(api);
  } catch (const CheckFailed& e) {
    failure = e.what;
  } catch (const std::exception& e) {
    failure = e.what();
  }
  if (message && size) std::snprintf(message, size, "%s", failure.c_str());
  return failure.empty() ? 0 : 1;
}
