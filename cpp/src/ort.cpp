#include "ort.h"

#include <dlfcn.h>

#include <cstdlib>
#include <mutex>

#include "errors.h"

#ifndef SEER_DEFAULT_ONNXRUNTIME_LIB
#define SEER_DEFAULT_ONNXRUNTIME_LIB ""
#endif

namespace seer {

namespace {

std::mutex load_mutex;
std::string loaded_path, loaded_version;
std::unique_ptr<Ort::Env> env;

std::string one_line(const std::string& s) {
  std::string out;
  for (char c : s) out += (c == '\n' || c == '\r') ? ' ' : c;
  return out.size() > 300 ? out.substr(0, 300) + "..." : out;
}

}  // namespace

std::string load_onnxruntime(const std::string& requested) {
  std::lock_guard<std::mutex> lock(load_mutex);
  std::string path = requested;
  if (path.empty() && std::getenv("SEER_ONNXRUNTIME_LIB")) path = std::getenv("SEER_ONNXRUNTIME_LIB");
  if (path.empty()) path = SEER_DEFAULT_ONNXRUNTIME_LIB;
  if (!loaded_path.empty()) {
    if (!requested.empty() && requested != loaded_path)
      throw UsageError("ONNX Runtime is already loaded from " + loaded_path + " in this process; open every engine with that library");
    return loaded_version;
  }
  if (path.empty())
    throw UsageError("no ONNX Runtime library given: set SEER_ONNXRUNTIME_LIB to the libonnxruntime.so of the onnxruntime wheel (onnxruntime/capi/)");
  void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!handle)
    throw UsageError("cannot load ONNX Runtime from " + path + " (" + one_line(dlerror()) + "); set SEER_ONNXRUNTIME_LIB to the libonnxruntime.so of the onnxruntime wheel");
  using GetApiBase = const OrtApiBase* (*)();
  auto get = reinterpret_cast<GetApiBase>(dlsym(handle, "OrtGetApiBase"));
  if (!get) throw UsageError(path + " is not an ONNX Runtime library (it has no OrtGetApiBase); set SEER_ONNXRUNTIME_LIB to the onnxruntime wheel's libonnxruntime.so");
  const OrtApiBase* base = get();
  const OrtApi* api = base->GetApi(ORT_API_VERSION);
  if (!api)
    throw UsageError("the ONNX Runtime at " + path + " (version " + base->GetVersionString() + ") is older than the API libseer was built with (" +
                     std::to_string(ORT_API_VERSION) + "); use onnxruntime 1." + std::to_string(ORT_API_VERSION) + " or newer");
  Ort::InitApi(api);
  env = std::make_unique<Ort::Env>(ORT_LOGGING_LEVEL_ERROR, "seer");
  loaded_path = path;
  loaded_version = base->GetVersionString();
  return loaded_version;
}

Ort::Env& ort_env() { return *env; }

std::string onnxruntime_version() {
  std::lock_guard<std::mutex> lock(load_mutex);
  return loaded_version;
}

Graph::Graph(const std::string& name, const GraphSpec& spec, const std::string& model, const std::string& path, int threads)
    : name_(name) {
  try {
    Ort::SessionOptions opts;
    opts.SetLogSeverityLevel(3);
    opts.SetGraphOptimizationLevel(GraphOptimizationLevel::ORT_ENABLE_ALL);
    opts.AddConfigEntry("session.disable_quant_qdq", "1");  // keep FP8 Q/DQ pairs as written
    opts.AddConfigEntry("session.intra_op.allow_spinning", "0");  // spinning pools steal the cores the next graph needs
    if (threads > 0) opts.SetIntraOpNumThreads(threads);
    if (model.empty())
      session_ = std::make_unique<Ort::Session>(ort_env(), path.c_str(), opts);
    else
      session_ = std::make_unique<Ort::Session>(ort_env(), model.data(), model.size(), opts);
    // the graph's interface must be the manifest's: the loop binds by those names and dtypes
    Ort::AllocatorWithDefaultOptions alloc;
    auto check = [&](size_t count, bool inputs) {
      const auto& declared = inputs ? spec.inputs : spec.outputs;
      if (count != declared.size())
        throw EngineDirError("the " + name + " graph has " + std::to_string(count) + (inputs ? " inputs" : " outputs") + ", its manifest entry lists " +
                             std::to_string(declared.size()) + "; re-export the engine directory");
      for (size_t i = 0; i < count; ++i) {
        std::string n = (inputs ? session_->GetInputNameAllocated(i, alloc) : session_->GetOutputNameAllocated(i, alloc)).get();
        const TensorSpec* t = inputs ? spec.input(n) : spec.output(n);
        if (!t) throw EngineDirError("the " + name + " graph's " + (inputs ? "input " : "output ") + n + " is not in its manifest entry; re-export the engine directory");
        Ort::TypeInfo type = inputs ? session_->GetInputTypeInfo(i) : session_->GetOutputTypeInfo(i);  // owns what info views
        auto info = type.GetTensorTypeAndShapeInfo();
        ONNXTensorElementDataType want = t->dtype == "float32" ? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT
                                         : t->dtype == "int64"  ? ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64
                                         : t->dtype == "float16" ? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16
                                                                 : ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16;
        if (info.GetElementType() != want)
          throw EngineDirError("the " + name + " graph's " + n + " is not " + t->dtype + " as its manifest entry says; re-export the engine directory");
      }
    };
    check(session_->GetInputCount(), true);
    check(session_->GetOutputCount(), false);
    binding_ = std::make_unique<Ort::IoBinding>(*session_);
  } catch (const Ort::Exception& e) {
    throw EngineDirError("cannot load the " + name + " graph (" + spec.onnx + "): " + one_line(e.what()) + "; re-export the engine directory");
  }
}

void Graph::run(const std::vector<std::pair<std::string, const Ort::Value*>>& inputs,
                const std::vector<std::pair<std::string, const Ort::Value*>>& outputs) {
  try {
    // a graph is always bound under the same names: binding a name again replaces its buffer
    for (const auto& [n, v] : inputs) binding_->BindInput(n.c_str(), *v);
    for (const auto& [n, v] : outputs) binding_->BindOutput(n.c_str(), *v);
    session_->Run(run_options_, *binding_);
  } catch (const Ort::Exception& e) {
    throw RunError("ONNX Runtime failed to run the " + name_ + " graph: " + one_line(e.what()));
  }
}

std::vector<Ort::Value> Graph::run_plain(const std::vector<std::pair<std::string, const Ort::Value*>>& inputs,
                                         const std::vector<std::string>& outputs) {
  try {
    std::vector<const char*> in_names, out_names;
    std::vector<const OrtValue*> raw;  // the caller's tensors, not owned here
    for (const auto& [n, v] : inputs) {
      in_names.push_back(n.c_str());
      raw.push_back(static_cast<const OrtValue*>(*v));
    }
    for (const auto& n : outputs) out_names.push_back(n.c_str());
    std::vector<OrtValue*> out(outputs.size(), nullptr);
    Ort::ThrowOnError(Ort::GetApi().Run(*session_, run_options_, in_names.data(), raw.data(), raw.size(), out_names.data(),
                                        out_names.size(), out.data()));
    std::vector<Ort::Value> result;
    for (auto* o : out) result.emplace_back(o);
    return result;
  } catch (const Ort::Exception& e) {
    throw RunError("ONNX Runtime failed to run the " + name_ + " graph: " + one_line(e.what()));
  }
}

namespace {
Ort::MemoryInfo& cpu() {
  static Ort::MemoryInfo info = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
  return info;
}
}  // namespace

size_t numel(const std::vector<int64_t>& shape) {
  uint64_t n = 1;
  for (auto d : shape)
    if (d < 0 || __builtin_mul_overflow(n, static_cast<uint64_t>(d), &n) || n > (uint64_t(1) << 34))
      throw UsageError("this request needs a buffer of more than 2^34 values (a " + std::to_string(shape.size()) +
                       "-dimensional tensor); use a smaller size or fewer images");
  return static_cast<size_t>(n);
}
Ort::Value tensor(float* data, const std::vector<int64_t>& shape) {
  return Ort::Value::CreateTensor<float>(cpu(), data, numel(shape), shape.data(), shape.size());
}
Ort::Value tensor_f16(uint16_t* data, const std::vector<int64_t>& shape) {
  return Ort::Value::CreateTensor(cpu(), data, numel(shape) * sizeof(uint16_t), shape.data(), shape.size(), ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16);
}
Ort::Value tensor(int64_t* data, const std::vector<int64_t>& shape) {
  return Ort::Value::CreateTensor<int64_t>(cpu(), data, numel(shape), shape.data(), shape.size());
}

}  // namespace seer
