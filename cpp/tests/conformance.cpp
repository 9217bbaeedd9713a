// libseer against the Python runtime's golden vectors (cpp/tests/golden.py):
//   seer-conformance GOLDEN_DIR [ERRORS.json]
// Token ids must be equal; noise within 1e-6; latents within 1e-5 of their scale (max(1, max |latent|))
// from libseer's own noise, and within 1e-6 of it from the Python runtime's noise (what is left then is
// the loop alone); 8-bit images within one level per channel. ERRORS.json lists bad directories and requests with the kind of error the
// Python runtime gave; libseer must give the same kind, in one line. Prints the measured differences
// as JSON on stdout; exit code 0 when every check holds.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>

#include "engine.h"
#include "errors.h"
#include "numerics.h"
#include "seer/seer.h"

using seer::json;

namespace {

int failures = 0;

void check(bool ok, const std::string& what) {
  if (!ok) {
    ++failures;
    std::cerr << "FAIL: " << what << "\n";
  }
}

std::string read(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot read " + path);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

template <typename T>
std::vector<T> read_array(const std::string& path) {
  std::string data = read(path);
  std::vector<T> out(data.size() / sizeof(T));
  std::memcpy(out.data(), data.data(), out.size() * sizeof(T));
  return out;
}

seer_request to_request(const json& c, std::vector<std::string>& keep) {
  seer_request r;
  seer_request_init(&r);
  auto text = [&](const char* k) -> const char* {
    if (!c.contains(k)) return nullptr;
    keep.push_back(c[k].is_string() ? c[k].get<std::string>() : c[k].dump());
    return keep.back().c_str();
  };
  keep.reserve(16);
  r.prompt = text("prompt");
  r.class_label = text("class_label");
  r.plan = text("plan");
  r.schedule_style = text("schedule_style");
  if (c.contains("seed")) r.seed = c["seed"].get<uint64_t>();
  if (c.contains("images")) r.images = c["images"].get<int>();
  if (c.contains("steps")) r.steps = c["steps"].get<int>();
  if (c.contains("height")) r.height = c["height"].get<int>();
  if (c.contains("width")) r.width = c["width"].get<int>();
  if (c.contains("guidance_scale")) r.guidance_scale = c["guidance_scale"].get<double>();
  if (c.contains("interval")) r.interval = c["interval"].get<int>();
  if (c.contains("order")) r.order = c["order"].get<int>();
  if (c.contains("warmup")) r.warmup = c["warmup"].get<int>();
  if (c.contains("final_full")) r.final_full = c["final_full"].get<int>();
  if (c.contains("no_cache")) r.no_cache = c["no_cache"].get<bool>();
  return r;
}

const char* kind_of(seer_status s) {
  switch (s) {
    case SEER_OK: return "ok";
    case SEER_ERROR_USAGE: return "usage";
    case SEER_ERROR_ENGINE_DIR: return "engine_dir";
    case SEER_ERROR_RUN: return "run";
    case SEER_ERROR_UNSUPPORTED: return "unsupported";
    case SEER_ERROR_MEMORY: return "memory";
    default: return "internal";
  }
}

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: seer-conformance GOLDEN_DIR [ERRORS.json]\n";
    return 2;
  }
  const std::string dir = argv[1];
  json report;
  try {
    json golden = json::parse(read(dir + "/golden.json"));
    // noise
    double noise_max = 0;
    for (const auto& n : golden["noise"]) {
      auto want = read_array<float>(dir + "/" + n["file"].get<std::string>());
      auto got = seer::randn(n["count"].get<size_t>(), n["seed"].get<uint64_t>());
      check(got.size() == want.size(), "noise size");
      for (size_t i = 0; i < want.size() && i < got.size(); ++i) noise_max = std::max(noise_max, double(std::fabs(got[i] - want[i])));
    }
    report["noise_max_abs"] = noise_max;
    check(noise_max <= 1e-6, "noise differs by " + std::to_string(noise_max));

    seer_engine* engine = nullptr;
    seer_open_options o;
    seer_open_options_init(&o);
    std::string engine_dir = golden["engine_dir"].get<std::string>();
    if (seer_open(engine_dir.c_str(), &o, &engine) != SEER_OK) {
      std::cerr << "FAIL: cannot open " << engine_dir << ": " << seer_last_error() << "\n";
      return 1;
    }
    check(seer_digest(engine) == golden["digest"].get<std::string>(), "digest");
    // tokens: exact (through the engine's own tokenizers, padding and truncation)
    seer::Engine direct(engine_dir);
    size_t token_cases = 0;
    for (const auto& t : golden["tokens"]) {
      size_t cut = 0;
      auto ids = direct.tokenize(t["encoder"], t["prompt"], &cut);
      ++token_cases;
      check(ids == t["ids"].get<std::vector<int64_t>>(), "token ids of " + t["encoder"].get<std::string>() + " for '" + t["prompt"].get<std::string>() + "'");
      check(cut == t["truncated"].get<size_t>(), "truncated count for '" + t["prompt"].get<std::string>() + "'");
    }
    report["token_cases"] = token_cases;
    json cases = json::array();
    for (const auto& c : golden["cases"]) {
      std::vector<std::string> keep;
      seer_request r = to_request(c["request"], keep);
      seer_image image;
      double t = now();
      seer_status s = seer_generate(engine, &r, &image);
      double wall = now() - t;
      if (s != SEER_OK) {
        check(false, std::string("generate ") + c["request"].dump() + ": " + seer_last_error());
        continue;
      }
      auto latents = read_array<float>(dir + "/" + c["latents"].get<std::string>());
      // the same request from the Python runtime's own noise: what differs then is the loop alone
      auto noise = read_array<float>(dir + "/" + c["noise"].get<std::string>());
      seer_request with_noise = r;
      with_noise.noise = noise.data();
      with_noise.noise_count = noise.size();
      seer_image same;
      double same_max = INFINITY;
      double t_warm = now();
      seer_status warm_status = seer_generate(engine, &with_noise, &same);  // the shape's second run: warm, as served
      double warm = now() - t_warm;
      if (warm_status == SEER_OK && same.latents_count == latents.size()) {
        same_max = 0;
        for (size_t i = 0; i < latents.size(); ++i) same_max = std::max(same_max, double(std::fabs(same.latents[i] - latents[i])));
      } else {
        check(false, std::string("generate with the Python noise: ") + seer_last_error());
      }
      double scale = 1;
      for (float v : latents) scale = std::max(scale, double(std::fabs(v)));
      auto images = read_array<uint8_t>(dir + "/" + c["images"].get<std::string>());
      double lat_max = 0;
      int level_max = 0;
      size_t levels_off = 0;
      check(image.latents_count == latents.size(), "latents size for " + c["request"].dump());
      for (size_t i = 0; i < latents.size() && i < image.latents_count; ++i) lat_max = std::max(lat_max, double(std::fabs(image.latents[i] - latents[i])));
      size_t pixels = size_t(image.images) * image.height * image.width * 3;
      check(pixels == images.size(), "image size for " + c["request"].dump());
      for (size_t i = 0; i < images.size() && i < pixels; ++i) {
        int d = std::abs(int(image.rgb[i]) - int(images[i]));
        level_max = std::max(level_max, d);
        levels_off += d != 0;
      }
      // the sampler's values, computed on the C++ side alone
      seer::Sampler sampler(direct.manifest().sampler());
      int64_t tokens = direct.manifest().family == "flux" ? int64_t(image.height / (2 * direct.manifest().vae_scale_factor)) * (image.width / (2 * direct.manifest().vae_scale_factor))
                                                           : 0;
      auto sp = sampler.plan(image.steps, tokens, direct.manifest().graph("full").input("hidden_states")->dtype);
      bool same_t = sp.model_timesteps == c["model_timesteps"].get<std::vector<float>>();
      bool same_s = !c.contains("sigmas") || sp.sigmas == c["sigmas"].get<std::vector<float>>();
      check(same_t, "model timesteps for " + c["request"].dump());
      check(same_s, "sigmas for " + c["request"].dump());
      check(lat_max <= 1e-5 * scale, "latents differ by " + std::to_string(lat_max) + " (scale " + std::to_string(scale) + ") for " + c["request"].dump());
      check(same_max <= 1e-6 * scale, "from the same noise, latents differ by " + std::to_string(same_max) + " for " + c["request"].dump());
      check(level_max <= 1, "images differ by " + std::to_string(level_max) + " levels for " + c["request"].dump());
      check(image.full_steps == int(c["full_steps"].size()), "full steps for " + c["request"].dump());
      cases.push_back({{"request", c["request"]}, {"latents_max_abs", lat_max}, {"latents_scale", scale}, {"same_noise_latents_max_abs", same_max}, {"image_max_levels", level_max}, {"image_values_off", levels_off},
                       {"values", pixels}, {"timesteps_equal", same_t && same_s}, {"seconds_first", wall},
                       {"seconds", warm}, {"seconds_denoise", same.seconds_denoise},
                       {"python_seconds", c.value("python_seconds", 0.0)}, {"python_seconds_denoise", c.value("python_seconds_denoise", 0.0)}});
      seer_image_free(&image);
      seer_image_free(&same);
    }
    report["cases"] = cases;
    seer_close(engine);

    if (argc > 2) {  // bad directories and requests: the same kind of error as Python, one line
      json errors = json::array();
      for (const auto& e : json::parse(read(argv[2]))) {
        seer_engine* bad = nullptr;
        seer_status s = seer_open(e["dir"].get<std::string>().c_str(), nullptr, &bad);
        if (s == SEER_OK && e.contains("request")) {
          std::vector<std::string> keep;
          seer_request r = to_request(e["request"], keep);
          seer_image image;
          s = seer_generate(bad, &r, &image);
          seer_image_free(&image);
        }
        std::string message = seer_last_error();
        seer_close(bad);
        std::string want = e["kind"].get<std::string>();
        check(kind_of(s) == want, e["name"].get<std::string>() + ": libseer gave " + kind_of(s) + " (" + message + "), Python " + want);
        check(message.find('\n') == std::string::npos && !message.empty(), e["name"].get<std::string>() + ": one line");
        for (const auto& part : e.value("contains", json::array()))
          check(message.find(part.get<std::string>()) != std::string::npos, e["name"].get<std::string>() + ": '" + message + "' does not say '" + part.get<std::string>() + "'");
        errors.push_back({{"name", e["name"]}, {"kind", kind_of(s)}, {"libseer", message}, {"python", e["python"]}});
      }
      report["errors"] = errors;
    }
  } catch (const std::exception& e) {
    std::cerr << "FAIL: " << e.what() << "\n";
    return 1;
  }
  report["failures"] = failures;
  std::cout << report.dump(1) << "\n";
  return failures ? 1 : 0;
}
