// A C++ face of libseer's C API: RAII for engines and images, errors as exceptions.
//
//   seer::Engine engine("out/flux-tiny");
//   seer::Request r;  r.prompt = "a red circle";  r.seed = 7;
//   seer::Image image = engine.generate(r);   // image.rgb(): images x height x width x 3
#pragma once

#include <stdexcept>
#include <string>

#include "seer/seer.h"

namespace seer {

struct Error : std::runtime_error {
  seer_status status;
  Error(seer_status s, const std::string& message) : std::runtime_error(message), status(s) {}
};

inline void check(seer_status s) {
  if (s != SEER_OK) throw Error(s, seer_last_error());
}

struct Request : seer_request {
  Request() { seer_request_init(this); }
};

class Image {
 public:
  Image() { seer_image_free(&image_); }
  Image(const Image&) = delete;
  Image& operator=(const Image&) = delete;
  Image(Image&& o) noexcept : image_(o.image_) { o.image_ = seer_image{}; }
  ~Image() { seer_image_free(&image_); }
  const uint8_t* rgb() const { return image_.rgb; }
  const float* latents() const { return image_.latents; }
  size_t latents_count() const { return image_.latents_count; }
  int images() const { return image_.images; }
  int height() const { return image_.height; }
  int width() const { return image_.width; }
  const seer_image& raw() const { return image_; }
  seer_image* out() { return &image_; }

 private:
  seer_image image_{};
};

class Engine {
 public:
  explicit Engine(const std::string& directory, const seer_open_options* options = nullptr) {
    check(seer_open(directory.c_str(), options, &engine_));
  }
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;
  ~Engine() { seer_close(engine_); }
  Image generate(const seer_request& request) {
    Image image;
    check(seer_generate(engine_, &request, image.out()));
    return image;
  }
  std::string digest() const { return seer_digest(engine_); }

 private:
  seer_engine* engine_ = nullptr;
};

}  // namespace seer
