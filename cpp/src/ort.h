// ONNX Runtime, loaded at run time: the library of the onnxruntime wheel (or any newer one) is opened
// with dlopen and its API table taken from OrtGetApiBase, so one libseer binary runs on every ONNX
// Runtime version from its headers' (1.21) on; the wheel's library versions its symbols, which a
// link-time dependency would pin to one wheel.
#pragma once

#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT

#include <memory>
#include <string>
#include <vector>

#include "manifest.h"

namespace seer {

// Opens the library once per process (later calls must name the same one, or none); returns its version.
// `path` empty: $SEER_ONNXRUNTIME_LIB, else the library found when libseer was built.
std::string load_onnxruntime(const std::string& path);

Ort::Env& ort_env();
std::string onnxruntime_version();  // "" before the library is loaded

class Graph {
 public:
  // `model` holds the graph's verified bytes; a graph with external weights is loaded from `path`.
  Graph(const std::string& name, const GraphSpec& spec, const std::string& model, const std::string& path, int threads);
  // Runs with every input and output bound to the caller's buffers (nothing allocated by the run).
  void run(const std::vector<std::pair<std::string, const Ort::Value*>>& inputs,
           const std::vector<std::pair<std::string, const Ort::Value*>>& outputs);
  // Runs once-per-request graphs (text encoders, decoder): ONNX Runtime allocates the outputs.
  std::vector<Ort::Value> run_plain(const std::vector<std::pair<std::string, const Ort::Value*>>& inputs,
                                    const std::vector<std::string>& outputs);
  const std::string& name() const { return name_; }

 private:
  std::string name_;
  std::unique_ptr<Ort::Session> session_;
  std::unique_ptr<Ort::IoBinding> binding_;
  Ort::RunOptions run_options_;
};

// A float32 or int64 tensor over caller-owned memory.
Ort::Value tensor(float* data, const std::vector<int64_t>& shape);
Ort::Value tensor(int64_t* data, const std::vector<int64_t>& shape);
Ort::Value tensor_f16(uint16_t* data, const std::vector<int64_t>& shape);  // IEEE half-precision bits
size_t numel(const std::vector<int64_t>& shape);

}  // namespace seer
