// One engine directory, opened and ready: the denoising loop of docs/engine-dir.md ("Running it")
// for both families (flux: prompts, 2x2-packed tokens; dit: class labels, [B, C, s, s] latents) and
// both samplers, with the Taylor state in buffers that the graphs read and write in place.
#pragma once

#include <cmath>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "manifest.h"
#include "numerics.h"
#include "ort.h"
#include "plan.h"
#include "tokenizer.h"

namespace seer {

struct OpenOptions {
  bool verify = true;
  std::string expect_digest;
  int threads = 0;  // 0: ONNX Runtime's default (every core)
  std::string onnxruntime_library;  // empty: $SEER_ONNXRUNTIME_LIB or the one found at build time
  uint64_t memory_budget = 0;  // bytes a request may take; 0: none (the machine's available memory still bounds it)
};

struct Request {
  std::string prompt;  // flux
  std::string class_label;  // dit: an id ("207") or a name of the model's labels
  uint64_t seed = 0;  // image k draws its noise from seed + k
  int images = 1;
  int steps = 0, height = 0, width = 0;  // 0: the directory's defaults
  double guidance_scale = NAN;  // NaN: the directory's default
  std::string plan;  // a calibrated plan of the directory, in place of the rule below
  int interval = -1, order = -1, warmup = -1, final_full = 0;  // -1: the directory's defaults
  std::string schedule_style = "taylorseer";
  bool no_cache = false;
  std::vector<float> noise;  // the initial noise instead of the seeds', [images, C, h, w] (empty: from the seeds)
};

struct Result {
  int images = 0, height = 0, width = 0;
  std::vector<uint8_t> rgb;  // images x height x width x 3
  std::vector<float> latents;  // the final latents in the transformer's layout
  std::vector<int64_t> latent_shape;
  int steps = 0;
  std::vector<int> full_steps;
  std::vector<std::string> warnings;
  double seconds_conditioning = 0, seconds_denoise = 0, seconds_decode = 0;
};

class Engine {
 public:
  explicit Engine(const std::string& directory, const OpenOptions& options = {});
  // One request at a time per engine (others wait); safe to call from many threads.
  Result generate(const Request& request);
  const Manifest& manifest() const { return m_; }
  // the same checks as generate, tokenizing nothing: for callers that validate before queueing
  std::vector<int64_t> tokenize(const std::string& encoder, const std::string& prompt, size_t* truncated = nullptr) const;
  std::vector<float> sigmas_or_timesteps(int steps, int height, int width) const;

 private:
  struct Buffer {
    std::vector<float> data;
    Ort::Value as_factor{nullptr}, as_sample{nullptr};
  };
  int64_t class_id(const std::string& label) const;
  void check_size(int height, int width) const;
  Plan request_plan(const Request& r) const;
  void check_memory(int64_t b, int64_t mrows, int64_t height, int64_t width, int64_t tokens, int64_t context, size_t features, size_t sample, int g);

  // first: the Ort::Value members below release through ONNX Runtime's API, which must be loaded
  // before they exist (and so before a failing constructor destroys them)
  std::string onnxruntime_version_;
  Manifest m_;
  uint64_t memory_budget_ = 0;
  double held_buffers_ = 0, held_arenas_ = 0;  // what earlier requests left allocated, reusable by the next
  std::map<std::string, std::unique_ptr<Graph>> graphs_;
  std::map<std::string, Tokenizer> tokenizers_;
  std::unique_ptr<Sampler> sampler_;
  std::map<std::string, std::vector<std::string>> inputs_;  // graph -> input names, as the manifest lists them
  std::map<std::string, std::string> dtypes_;
  std::mutex lock_;
  // per-shape buffers, reused by every request of that shape
  std::string shape_key_;
  std::vector<Buffer> slots_;  // max_order + 2: the factors and the spare, re-labelled by the Taylor update
  std::vector<float> out_, latents_, model_in_, wide_, guided_, pred_, timestep_, coefficients_;
  Ort::Value out_v_{nullptr}, model_in_v_{nullptr}, latents_v_{nullptr}, timestep_v_{nullptr}, coefficients_v_{nullptr};
  // float16 graphs: the values stay float32 on the host, rounded to float16 as numpy's float16 arithmetic
  // rounds them, and these half-precision copies are what the graphs read and write
  struct Half {
    std::vector<uint16_t> h;
    Ort::Value v{nullptr};
  };
  bool half_latents_ = false, half_sample_ = false, half_features_ = false, half_factors_ = false;
  std::vector<Half> slots_h_;
  Half latents_h_, model_in_h_, out_h_, features_h_;
  std::vector<float> features_;  // modules: the full graph's features when they cannot go straight into the spare factor
  Ort::Value features_v_{nullptr};
};

}  // namespace seer
