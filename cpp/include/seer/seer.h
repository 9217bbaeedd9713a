/* libseer: run a seer engine directory (docs/engine-dir.md) from C or C++ on ONNX Runtime.
 *
 *   seer_engine* e = NULL;
 *   seer_open_options o; seer_open_options_init(&o);
 *   if (seer_open("out/flux-tiny", &o, &e) != SEER_OK) { fprintf(stderr, "error: %s\n", seer_last_error()); ... }
 *   seer_request r; seer_request_init(&r);
 *   r.prompt = "a red circle"; r.seed = 7; r.steps = 28;
 *   seer_image img;
 *   if (seer_generate(e, &r, &img) == SEER_OK) { ... img.rgb: img.images x img.height x img.width x 3 bytes ... }
 *   seer_image_free(&img);
 *   seer_close(e);
 *
 * Every call returns a seer_status; on failure seer_last_error() (per thread) holds one line naming
 * the problem and the fix. An engine runs one request at a time; calls from several threads on one
 * engine wait for each other. Nothing here aborts the process on bad input. */
#ifndef SEER_H
#define SEER_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SEER_API_VERSION 1

#if defined(__GNUC__)
#define SEER_API __attribute__((visibility("default")))
#else
#define SEER_API
#endif

typedef enum {
  SEER_OK = 0,
  SEER_ERROR_USAGE = 1,       /* a bad request or argument: fix the call */
  SEER_ERROR_ENGINE_DIR = 2,  /* the directory is damaged, altered, incomplete or not seer's: re-export it */
  SEER_ERROR_RUN = 3,         /* the run failed (ONNX Runtime, a NaN/Inf), or out of memory */
  SEER_ERROR_UNSUPPORTED = 4, /* a directory this libseer cannot run (16-bit graphs): the message says what can */
  SEER_ERROR_INTERNAL = 5,    /* a bug: please report the message */
  SEER_ERROR_MEMORY = 6       /* the request needs more memory than is available or budgeted: smaller, or elsewhere */
} seer_status;

typedef struct seer_engine seer_engine;

typedef struct {
  int verify;                      /* check every file's sha256 (default 1) */
  const char* expect_digest;       /* refuse the directory unless its manifest digest is this ("sha256:..."), or NULL */
  int threads;                     /* ONNX Runtime intra-op threads per graph; 0: every core */
  const char* onnxruntime_library; /* path of libonnxruntime.so; NULL: $SEER_ONNXRUNTIME_LIB, else the build's */
  uint64_t memory_budget;          /* bytes a request may take (estimated before it starts); 0: no budget */
} seer_open_options;

typedef struct {
  const char* prompt;      /* FLUX: the text (UTF-8) */
  const char* class_label; /* DiT: a class id ("207") or one of the model's label names */
  uint64_t seed;           /* image k draws its noise from seed + k (seed + k < 2^32) */
  int images;              /* images of this prompt or class (default 1) */
  int steps, height, width;/* 0: the directory's defaults */
  double guidance_scale;   /* NaN (the default): the directory's default */
  const char* plan;        /* a calibrated plan of the directory by name, or NULL for the rule below */
  int interval, order, warmup; /* -1: the directory's defaults */
  int final_full;          /* the last steps run in full (default 0) */
  const char* schedule_style; /* "taylorseer" (default) or "diffusers" */
  int no_cache;            /* 1: every step full */
  const float* noise;      /* the initial noise instead of the seeds' (images x channels x height/s x width/s, the
                              VAE's latent layout, as diffusers' latents= argument), or NULL */
  size_t noise_count;      /* its values */
} seer_request;

typedef struct {
  int images, height, width;
  uint8_t* rgb;            /* images x height x width x 3, row-major */
  float* latents;          /* the final latents in the transformer's layout */
  size_t latents_count;
  int steps, full_steps;   /* how many steps ran, how many of them in full */
  double seconds_conditioning, seconds_denoise, seconds_decode;
} seer_image;

SEER_API void seer_open_options_init(seer_open_options* options);
SEER_API void seer_request_init(seer_request* request);

SEER_API seer_status seer_open(const char* engine_dir, const seer_open_options* options, seer_engine** engine);
SEER_API seer_status seer_generate(seer_engine* engine, const seer_request* request, seer_image* image);
SEER_API void seer_image_free(seer_image* image);
SEER_API void seer_close(seer_engine* engine);

/* The manifest digest of the opened directory ("sha256:..."), valid until seer_close. */
SEER_API const char* seer_digest(const seer_engine* engine);
/* The last error of this thread, one line ("" when none). */
SEER_API const char* seer_last_error(void);
/* The ONNX Runtime version in use, once an engine was opened ("" before). */
SEER_API const char* seer_onnxruntime_version(void);

#ifdef __cplusplus
}
#endif

#endif /* SEER_H */
