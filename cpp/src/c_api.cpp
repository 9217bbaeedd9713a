#include <cmath>
#include <cstdlib>
#include <cstring>
#include <new>

#include "engine.h"
#include "errors.h"
#include "seer/seer.h"

struct seer_engine {
  std::unique_ptr<seer::Engine> engine;
};

namespace {

thread_local std::string last_error;

template <typename F>
seer_status guarded(F&& f) {
  last_error.clear();
  try {
    f();
    return SEER_OK;
  } catch (const seer::UsageError& e) {
    last_error = e.what();
    return SEER_ERROR_USAGE;
  } catch (const seer::TokenizerError& e) {
    last_error = e.what();
    return SEER_ERROR_ENGINE_DIR;
  } catch (const seer::EngineDirError& e) {
    last_error = e.what();
    return SEER_ERROR_ENGINE_DIR;
  } catch (const seer::UnsupportedError& e) {
    last_error = e.what();
    return SEER_ERROR_UNSUPPORTED;
  } catch (const seer::RunError& e) {
    last_error = e.what();
    return SEER_ERROR_RUN;
  } catch (const seer::MemoryError& e) {
    last_error = e.what();
    return SEER_ERROR_MEMORY;
  } catch (const std::bad_alloc&) {
    last_error = "out of memory; use a smaller size or fewer images";
    return SEER_ERROR_RUN;
  } catch (const nlohmann::json::exception& e) {  // a manifest value of a type no check above expected
    last_error = std::string("manifest.json holds a value of the wrong type (") + e.what() + "); re-export the engine directory";
    return SEER_ERROR_ENGINE_DIR;
  } catch (const Ort::Exception& e) {
    last_error = std::string("ONNX Runtime failed: ") + e.what();
    return SEER_ERROR_RUN;
  } catch (const std::exception& e) {
    last_error = std::string("internal error: ") + e.what();
    return SEER_ERROR_INTERNAL;
  } catch (...) {
    last_error = "internal error: an unknown exception";
    return SEER_ERROR_INTERNAL;
  }
}

std::string str(const char* s) { return s ? s : ""; }

}  // namespace

extern "C" {

void seer_open_options_init(seer_open_options* o) {
  if (!o) return;
  o->verify = 1;
  o->expect_digest = nullptr;
  o->threads = 0;
  o->onnxruntime_library = nullptr;
  o->memory_budget = 0;
}

void seer_request_init(seer_request* r) {
  if (!r) return;
  std::memset(r, 0, sizeof *r);
  r->images = 1;
  r->guidance_scale = NAN;
  r->interval = r->order = r->warmup = -1;
}

seer_status seer_open(const char* engine_dir, const seer_open_options* options, seer_engine** engine) {
  return guarded([&] {
    if (!engine) throw seer::UsageError("seer_open needs a place to put the engine (engine is NULL)");
    *engine = nullptr;
    if (!engine_dir || !*engine_dir) throw seer::UsageError("no engine directory given; pass the folder seer-export wrote");
    seer_open_options defaults;
    seer_open_options_init(&defaults);
    const seer_open_options& o = options ? *options : defaults;
    seer::OpenOptions opts;
    opts.verify = o.verify != 0;
    opts.expect_digest = str(o.expect_digest);
    opts.threads = o.threads;
    opts.onnxruntime_library = str(o.onnxruntime_library);
    opts.memory_budget = o.memory_budget;
    auto e = std::make_unique<seer_engine>();
    e->engine = std::make_unique<seer::Engine>(engine_dir, opts);
    *engine = e.release();
  });
}

seer_status seer_generate(seer_engine* engine, const seer_request* request, seer_image* image) {
  if (image) std::memset(image, 0, sizeof *image);
  return guarded([&] {
    if (!engine || !request || !image) throw seer::UsageError("seer_generate needs an engine, a request and an image (one is NULL)");
    seer::Request r;
    r.prompt = str(request->prompt);
    r.class_label = str(request->class_label);
    r.seed = request->seed;
    r.images = request->images;
    r.steps = request->steps;
    r.height = request->height;
    r.width = request->width;
    r.guidance_scale = request->guidance_scale;
    r.plan = str(request->plan);
    r.interval = request->interval;
    r.order = request->order;
    r.warmup = request->warmup;
    r.final_full = request->final_full;
    r.schedule_style = request->schedule_style ? request->schedule_style : "taylorseer";
    r.no_cache = request->no_cache != 0;
    if (request->noise) {
      if (request->noise_count == 0 || request->noise_count > (size_t(1) << 32))
        throw seer::UsageError("noise_count must give the values of noise (images x channels x height/s x width/s)");
      r.noise.assign(request->noise, request->noise + request->noise_count);
    }
    if (r.steps < 0 || r.height < 0 || r.width < 0)
      throw seer::UsageError("steps, height and width must be positive, or 0 for the directory's defaults");
    seer::Result res = engine->engine->generate(r);
    image->rgb = static_cast<uint8_t*>(std::malloc(res.rgb.size()));
    image->latents = static_cast<float*>(std::malloc(res.latents.size() * sizeof(float)));
    if (!image->rgb || !image->latents) {
      seer_image_free(image);
      throw std::bad_alloc();
    }
    std::memcpy(image->rgb, res.rgb.data(), res.rgb.size());
    std::memcpy(image->latents, res.latents.data(), res.latents.size() * sizeof(float));
    image->latents_count = res.latents.size();
    image->images = res.images;
    image->height = res.height;
    image->width = res.width;
    image->steps = res.steps;
    image->full_steps = static_cast<int>(res.full_steps.size());
    image->seconds_conditioning = res.seconds_conditioning;
    image->seconds_denoise = res.seconds_denoise;
    image->seconds_decode = res.seconds_decode;
  });
}

void seer_image_free(seer_image* image) {
  if (!image) return;
  std::free(image->rgb);
  std::free(image->latents);
  image->rgb = nullptr;
  image->latents = nullptr;
}

void seer_close(seer_engine* engine) { delete engine; }

const char* seer_digest(const seer_engine* engine) { return engine ? engine->engine->manifest().digest.c_str() : ""; }
const char* seer_last_error(void) { return last_error.c_str(); }
const char* seer_onnxruntime_version(void) {
  thread_local std::string version;  // per thread: no caller's pointer changes under it
  version = seer::onnxruntime_version();
  return version.c_str();
}

}  // extern "C"
