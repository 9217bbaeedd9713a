#include "numerics.h"

#include <cmath>
#include <cstring>
#include <random>

#include "errors.h"

namespace seer {

namespace {

void box_muller(const float* u, float* out) {
  const float two_pi = static_cast<float>(2 * M_PI);
  for (int j = 0; j < 8; ++j) {
    float radius = std::sqrt(-2.0f * std::log(1.0f - u[j]));
    float theta = two_pi * u[j + 8];
    out[j] = radius * std::cos(theta);
    out[j + 8] = radius * std::sin(theta);
  }
}

float f32(double v) { return static_cast<float>(v); }

}  // namespace

std::vector<float> randn(size_t n, uint64_t seed) {
  if (n < 16) throw UsageError("noise of " + std::to_string(n) + " values is below the 16 this generator reproduces; use a larger latent");
  std::mt19937 gen(static_cast<uint32_t>(seed & 0xFFFFFFFFu));  // init_genrand, as torch's CPU generator
  size_t tail = n % 16 ? 16 : 0;
  std::vector<float> u(n + tail);
  for (auto& v : u) v = static_cast<float>(gen() & 0xFFFFFF) * (1.0f / 16777216.0f);
  std::vector<float> out(n);
  size_t whole = n - n % 16;
  for (size_t b = 0; b < whole; b += 16) box_muller(&u[b], &out[b]);
  if (tail) box_muller(&u[n], &out[n - 16]);
  return out;
}

void flux_rope(int64_t text_len, int64_t rows, int64_t cols, const std::vector<int64_t>& axes_dims, double theta,
               std::vector<float>* cos, std::vector<float>* sin) {
  int64_t width = 0;
  for (auto d : axes_dims) width += d;
  int64_t tokens = text_len + rows * cols;
  cos->assign(static_cast<size_t>(tokens * width), 0.0f);
  sin->assign(static_cast<size_t>(tokens * width), 0.0f);
  for (int64_t t = 0; t < tokens; ++t) {
    double pos[3] = {0, 0, 0};
    if (t >= text_len) {
      pos[1] = static_cast<double>((t - text_len) / cols);
      pos[2] = static_cast<double>((t - text_len) % cols);
    }
    int64_t col = 0;
    for (size_t a = 0; a < axes_dims.size(); ++a) {
      int64_t dim = axes_dims[a];
      for (int64_t j = 0; j < dim / 2; ++j) {
        double freq = 1.0 / std::pow(theta, static_cast<double>(2 * j) / static_cast<double>(dim));
        double angle = (a < 3 ? pos[a] : 0.0) * freq;
        float c = f32(std::cos(angle)), s = f32(std::sin(angle));
        size_t at = static_cast<size_t>(t * width + col + 2 * j);
        (*cos)[at] = (*cos)[at + 1] = c;
        (*sin)[at] = (*sin)[at + 1] = s;
      }
      col += dim;
    }
  }
}

float round_to(float x, const std::string& dtype) {
  if (dtype == "float32") return x;
  if (dtype == "bfloat16") {
    uint32_t bits;
    std::memcpy(&bits, &x, 4);
    uint64_t b = bits;
    b = (b + 0x7FFF + ((b >> 16) & 1)) & 0xFFFF0000u;
    bits = static_cast<uint32_t>(b);
    std::memcpy(&x, &bits, 4);
    return x;
  }
  if (dtype == "float16") return static_cast<float>(static_cast<_Float16>(x));
  throw EngineDirError("unknown dtype " + dtype + "; re-export the directory");
}

// ------------------------------------------------------------------------------------------------

namespace {

double num(const json& cfg, const char* k, double def) {
  if (!cfg.contains(k)) return def;
  const json& v = cfg.at(k);
  if (!v.is_number() || !std::isfinite(v.get<double>()))
    throw EngineDirError(std::string("manifest.json: sampler.") + k + " must be a finite number; re-export the engine directory");
  return v.get<double>();
}
// a whole number from 0 to 2^31 - 1 (checked before any cast: the manifest is untrusted)
int64_t whole(const json& cfg, const char* k, int64_t def) {
  double v = num(cfg, k, static_cast<double>(def));
  if (v != std::floor(v) || v < 0 || v > 2147483647.0)
    throw EngineDirError(std::string("manifest.json: sampler.") + k + " must be a whole number from 0 to 2147483647; re-export the engine directory");
  return static_cast<int64_t>(v);
}
bool flag(const json& cfg, const char* k, bool def) {
  if (!cfg.contains(k)) return def;
  if (!cfg.at(k).is_boolean()) throw EngineDirError(std::string("manifest.json: sampler.") + k + " must be true or false; re-export the engine directory");
  return cfg.at(k).get<bool>();
}
std::string text(const json& cfg, const char* k, const char* def) {
  if (!cfg.contains(k)) return def;
  if (!cfg.at(k).is_string()) throw EngineDirError(std::string("manifest.json: sampler.") + k + " must be a string; re-export the engine directory");
  return cfg.at(k).get<std::string>();
}

// np.linspace(start, end, n) in float64 (start + i * step, the last value exactly end), rounded to float32
std::vector<float> linspace32(double start, double end, int n) {
  std::vector<float> out(static_cast<size_t>(n));
  if (n == 1) { out[0] = f32(start); return out; }
  double step = (end - start) / (n - 1);
  for (int i = 0; i < n; ++i) out[static_cast<size_t>(i)] = f32(start + i * step);
  out[static_cast<size_t>(n - 1)] = f32(end);
  return out;
}

}  // namespace

Sampler::Sampler(const json& cfg) {
  type_ = cfg.at("type").get<std::string>();
  double ntt = num(cfg, "num_train_timesteps", 1000);
  if (ntt != std::floor(ntt) || ntt < 1 || ntt > 100000)
    throw EngineDirError("manifest.json: sampler.num_train_timesteps must be an integer in [1, 100000]; re-export the engine directory");
  num_train_timesteps_ = static_cast<int>(ntt);
  if (type_ == "flow_match_euler") {
    shift_ = num(cfg, "shift", 3.0);
    dynamic_ = flag(cfg, "use_dynamic_shifting", true);
    base_shift_ = num(cfg, "base_shift", 0.5);
    max_shift_ = num(cfg, "max_shift", 1.15);
    base_seq_ = whole(cfg, "base_image_seq_len", 256);
    max_seq_ = whole(cfg, "max_image_seq_len", 4096);
    if (dynamic_ && base_seq_ == max_seq_)
      throw EngineDirError("manifest.json: sampler.base_image_seq_len equals max_image_seq_len; re-export the engine directory");
    return;
  }
  // DDIM (eta 0), as runtime/samplers/ddim.py reproduces diffusers' DDIMScheduler
  double beta_start = num(cfg, "beta_start", 0.0001), beta_end = num(cfg, "beta_end", 0.02);
  std::string schedule = text(cfg, "beta_schedule", "linear");
  set_alpha_to_one_ = flag(cfg, "set_alpha_to_one", true);
  steps_offset_ = static_cast<int>(whole(cfg, "steps_offset", 0));
  prediction_type_ = text(cfg, "prediction_type", "epsilon");
  clip_sample_ = flag(cfg, "clip_sample", true);
  clip_range_ = num(cfg, "clip_sample_range", 1.0);
  spacing_ = text(cfg, "timestep_spacing", "leading");
  bool zero_snr = flag(cfg, "rescale_betas_zero_snr", false);
  auto refuse = [](const std::string& what) {
    throw EngineDirError("the manifest's ddim sampler is damaged: " + what + "; re-export the directory");
  };
  if (!(beta_start >= 0 && beta_start < 1 && beta_end >= 0 && beta_end < 1)) refuse("beta_start and beta_end must be in [0, 1)");
  if (prediction_type_ != "epsilon" && prediction_type_ != "v_prediction" && prediction_type_ != "sample")
    refuse("prediction_type '" + prediction_type_ + "' is not supported");
  if (spacing_ != "leading" && spacing_ != "trailing" && spacing_ != "linspace") refuse("timestep_spacing '" + spacing_ + "' is not supported");
  if (steps_offset_ >= num_train_timesteps_) refuse("steps_offset must be an integer in [0, num_train_timesteps)");
  if (!(clip_range_ > 0)) refuse("clip_sample_range must be positive");
  int n = num_train_timesteps_;
  std::vector<float> betas;
  if (schedule == "linear") {
    betas = linspace32(f32(beta_start), f32(beta_end), n);
  } else if (schedule == "scaled_linear") {
    betas = linspace32(f32(std::sqrt(beta_start)), f32(std::sqrt(beta_end)), n);  // endpoints rounded first, as torch's float32 linspace
    for (auto& b : betas) b = b * b;
  } else if (schedule == "squaredcos_cap_v2") {
    auto alpha_bar = [](double t) { double c = std::cos((t + 0.008) / 1.008 * M_PI / 2); return c * c; };
    for (int i = 0; i < n; ++i) betas.push_back(f32(std::min(1 - alpha_bar(double(i + 1) / n) / alpha_bar(double(i) / n), 0.999)));
  } else {
    refuse("beta_schedule '" + schedule + "' is not supported");
  }
  auto cumprod = [](const std::vector<float>& x) {  // torch's CPU cumprod: a float64 running product
    std::vector<float> out(x.size());
    double p = 1;
    for (size_t i = 0; i < x.size(); ++i) { p *= static_cast<double>(x[i]); out[i] = f32(p); }
    return out;
  };
  if (zero_snr) {
    std::vector<float> a(betas.size());
    for (size_t i = 0; i < a.size(); ++i) a[i] = 1.0f - betas[i];
    std::vector<float> s = cumprod(a);
    for (auto& v : s) v = std::sqrt(v);
    float first = s.front(), last = s.back();
    float scale = first / (first - last);
    for (auto& v : s) v = (v - last) * scale;
    std::vector<float> ab(s.size());
    for (size_t i = 0; i < s.size(); ++i) ab[i] = s[i] * s[i];
    for (size_t i = 0; i < s.size(); ++i) betas[i] = 1.0f - (i == 0 ? ab[0] : ab[i] / ab[i - 1]);
  }
  std::vector<float> alphas(betas.size());
  for (size_t i = 0; i < betas.size(); ++i) alphas[i] = 1.0f - betas[i];
  alphas_cumprod_ = cumprod(alphas);
  for (size_t i = 0; i < alphas_cumprod_.size(); ++i) {
    float v = alphas_cumprod_[i];
    bool inner_ok = (zero_snr && i + 1 == alphas_cumprod_.size()) ? v >= 0 : v > 0;
    if (!std::isfinite(v) || !inner_ok || !(v < 1)) refuse("the beta schedule gives alpha products outside (0, 1)");
  }
}

SamplerPlan Sampler::plan(int steps, int64_t image_seq_len, const std::string& latent_dtype) const {
  SamplerPlan p;
  int n = num_train_timesteps_;
  if (type_ == "flow_match_euler") {
    std::vector<float> s = linspace32(1.0, 1.0 / steps, steps);
    if (dynamic_) {
      double m = (max_shift_ - base_shift_) / static_cast<double>(max_seq_ - base_seq_);
      double mu = static_cast<double>(image_seq_len) * m + (base_shift_ - m * static_cast<double>(base_seq_));
      float e = f32(std::exp(mu));
      if (!std::isfinite(e))
        throw RunError("the sampler's time shift overflows at " + std::to_string(image_seq_len) + " image tokens; the directory's sampler settings are damaged, re-export it");
      for (auto& v : s) v = e / (e + (1.0f / v - 1.0f));
    } else {
      float shift = f32(shift_), shift_1 = f32(shift_ - 1.0);  // numpy rounds each Python float to float32
      for (auto& v : s) v = shift * v / (1.0f + shift_1 * v);
    }
    p.sigmas = s;
    p.sigmas.push_back(0.0f);
    for (float v : p.sigmas)
      if (!std::isfinite(v)) throw RunError("the sampler's sigmas are not finite; the directory's sampler settings are damaged, re-export it");
    for (int i = 0; i < steps; ++i) {
      float t = round_to(s[static_cast<size_t>(i)] * static_cast<float>(n), latent_dtype);
      p.model_timesteps.push_back(round_to(t / 1000.0f, latent_dtype));
    }
    return p;
  }
  if (steps < 1 || steps > n)
    throw UsageError("steps must be between 1 and " + std::to_string(n) + " (the sampler's training timesteps), not " + std::to_string(steps));
  std::vector<int64_t> t;
  if (spacing_ == "linspace") {
    std::vector<double> v(static_cast<size_t>(steps));
    double step = steps > 1 ? static_cast<double>(n - 1) / (steps - 1) : 0;
    for (int i = 0; i < steps; ++i) v[static_cast<size_t>(i)] = i == steps - 1 && steps > 1 ? n - 1 : i * step;
    for (int i = steps - 1; i >= 0; --i) t.push_back(static_cast<int64_t>(std::nearbyint(v[static_cast<size_t>(i)])));
  } else if (spacing_ == "leading") {
    int64_t ratio = n / steps;
    for (int i = steps - 1; i >= 0; --i) t.push_back(i * ratio + steps_offset_);
  } else {  // trailing: np.round(np.arange(n, 0, -n / steps)) - 1
    double step = -static_cast<double>(n) / steps;
    int64_t count = static_cast<int64_t>(std::ceil((0 - static_cast<double>(n)) / step));
    for (int64_t i = 0; i < count; ++i) t.push_back(static_cast<int64_t>(std::nearbyint(n + i * step)) - 1);
    if (static_cast<int>(t.size()) != steps)
      throw UsageError("trailing timestep spacing cannot take " + std::to_string(steps) + " steps of " + std::to_string(n) +
                       "; choose " + std::to_string(steps - 1) + " or " + std::to_string(steps + 1) + " steps");
  }
  for (auto v : t)
    if (v >= n) throw UsageError(std::to_string(steps) + " steps with steps_offset " + std::to_string(steps_offset_) + " reach timestep " +
                                 std::to_string(v) + ", past the sampler's " + std::to_string(n) + " training timesteps; choose fewer steps");
  float final_alpha = set_alpha_to_one_ ? 1.0f : alphas_cumprod_[0];
  for (auto v : t) {
    int64_t prev = v - n / steps;
    p.timesteps.push_back(v);
    p.prev_timesteps.push_back(prev);
    p.alpha_t.push_back(alphas_cumprod_[static_cast<size_t>(v)]);
    p.alpha_prev.push_back(prev >= 0 ? alphas_cumprod_[static_cast<size_t>(prev)] : final_alpha);
    p.model_timesteps.push_back(static_cast<float>(v));
    if (prediction_type_ == "epsilon" && p.alpha_t.back() == 0)
      throw UsageError("epsilon prediction cannot step from timestep " + std::to_string(v) +
                       ", where the zero-terminal-SNR schedule has no signal left; use another timestep spacing");
  }
  return p;
}

namespace {

struct Term {
  double k;
  const float* t;
};

// wide <- m * wide + sum(k * T), in place, as runtime/samplers/ddim.py's _accumulate forms it (a running
// sum kept scaled: adding k * T is wide *= m / k; wide += T; m = k; the last wide *= m applies it).
void accumulate(float* wide, double m, const Term* terms, int count, size_t n) {
  for (int q = 0; q < count; ++q) {
    const auto& [k, t] = terms[q];
    if (k == 0.0) continue;
    if (m == 0.0) {
      std::memcpy(wide, t, n * sizeof(float));
    } else {
      if (m != k) {
        float r = f32(m / k);
        for (size_t i = 0; i < n; ++i) wide[i] *= r;
      }
      for (size_t i = 0; i < n; ++i) wide[i] += t[i];
    }
    m = k;
  }
  if (m != 1.0) {
    float r = f32(m);
    for (size_t i = 0; i < n; ++i) wide[i] *= r;
  }
}

}  // namespace

void Sampler::step(const SamplerPlan& p, int i, float* latents, const float* pred, float* wide, size_t n, bool half_pred,
                   bool half_latents) const {
  if (type_ == "flow_match_euler") {  // docs/engine-dir.md step 8: dt * prediction in the prediction's dtype, the sum in float32
    float dt = p.sigmas[static_cast<size_t>(i) + 1] - p.sigmas[static_cast<size_t>(i)];
    if (half_pred) {
      float dt16 = half_round(dt);
      for (size_t k = 0; k < n; ++k) latents[k] = half_round(half_round(pred[k] * dt16) + latents[k]);
    } else if (half_latents) {
      for (size_t k = 0; k < n; ++k) latents[k] = half_round(dt * pred[k] + latents[k]);
    } else {
      for (size_t k = 0; k < n; ++k) latents[k] = dt * pred[k] + latents[k];
    }
    return;
  }
  // DDIM, with the float32 operations of runtime/samplers/ddim.py in the same order; the scalars are
  // float32 square roots, combined in double as Python combines them
  float a_t = p.alpha_t[static_cast<size_t>(i)], a_prev = p.alpha_prev[static_cast<size_t>(i)];
  double sa = std::sqrt(a_t), sb = std::sqrt(1.0f - a_t);
  double A = std::sqrt(a_prev), B = std::sqrt(1.0f - a_prev);
  Term terms[2];
  int count = 0;
  if (prediction_type_ == "epsilon") {  // x_0 = (x - sqrt(1 - a) eps) / sqrt(a)
    float msb = f32(-sb), fsa = f32(sa);
    for (size_t k = 0; k < n; ++k) {
      float w = pred[k] * msb;
      w = w + latents[k];
      wide[k] = w / fsa;
    }
    terms[count++] = {B, pred};
  } else if (prediction_type_ == "v_prediction") {  // x_0 = sqrt(a) x - sqrt(1 - a) v; eps = sqrt(a) v + sqrt(1 - a) x
    Term x0[2] = {{-sb, pred}, {sa, latents}};
    accumulate(wide, 0.0, x0, 2, n);
    terms[count++] = {B * sb, latents};
    terms[count++] = {B * sa, pred};
  } else {  // sample: x_0 = prediction; eps = (x - sqrt(a) x_0) / sqrt(1 - a)
    std::memcpy(wide, pred, n * sizeof(float));
    terms[count++] = {B / sb, latents};
    terms[count++] = {-B * sa / sb, pred};
  }
  if (clip_sample_) {
    float r = f32(clip_range_);
    for (size_t k = 0; k < n; ++k) wide[k] = std::min(std::max(wide[k], -r), r);
  }
  accumulate(wide, A, terms, count, n);  // prev = sqrt(a_prev) x_0 + sqrt(1 - a_prev) eps
  if (half_latents)
    for (size_t k = 0; k < n; ++k) latents[k] = half_round(wide[k]);
  else
    std::memcpy(latents, wide, n * sizeof(float));
}

}  // namespace seer
