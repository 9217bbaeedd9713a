// The host-side numbers of a request, as docs/engine-dir.md defines them and the Python runtime
// computes them: seeded noise, FLUX's rotary tables, and the two samplers' per-step values.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "manifest.h"

namespace seer {

// torch.randn(n, generator=torch.Generator("cpu").manual_seed(seed)), as runtime/noise.py describes it.
std::vector<float> randn(size_t n, uint64_t seed);

// [L + rows*cols, sum(axes_dims)] cos and sin tables of FLUX's joint sequence (float64, cast to float32).
void flux_rope(int64_t text_len, int64_t rows, int64_t cols, const std::vector<int64_t>& axes_dims, double theta,
               std::vector<float>* cos, std::vector<float>* sin);

inline float half_round(float x) { return static_cast<float>(static_cast<_Float16>(x)); }

// A float32 value rounded to `dtype` ("float32", "float16", "bfloat16") and back.
float round_to(float x, const std::string& dtype);

// Everything a request's steps need from its sampler, computed once.
struct SamplerPlan {
  std::vector<float> model_timesteps;  // [steps]: the transformer's timestep input
  // flow-match Euler
  std::vector<float> sigmas;  // [steps + 1]
  // DDIM
  std::vector<int64_t> timesteps, prev_timesteps;
  std::vector<float> alpha_t, alpha_prev;
};

class Sampler {
 public:
  explicit Sampler(const json& cfg);
  SamplerPlan plan(int steps, int64_t image_seq_len, const std::string& latent_dtype) const;
  // latents <- step i -> i + 1, in place; `wide` is scratch of the same size. The values are float32,
  // rounded as the graphs' dtypes are: `half_prediction` / `half_latents` for float16 ones.
  void step(const SamplerPlan& p, int i, float* latents, const float* prediction, float* wide, size_t n, bool half_prediction = false,
            bool half_latents = false) const;
  int max_steps() const { return num_train_timesteps_; }
  const std::string& type() const { return type_; }
  std::vector<float> alphas_cumprod() const { return alphas_cumprod_; }

 private:
  std::string type_;
  int num_train_timesteps_ = 1000;
  // flow-match
  double shift_ = 3.0, base_shift_ = 0.5, max_shift_ = 1.15;
  bool dynamic_ = true;
  int64_t base_seq_ = 256, max_seq_ = 4096;
  // ddim
  std::vector<float> alphas_cumprod_;
  bool set_alpha_to_one_ = true, clip_sample_ = true;
  int steps_offset_ = 0;
  double clip_range_ = 1.0;
  std::string prediction_type_ = "epsilon", spacing_ = "leading";
};

}  // namespace seer
