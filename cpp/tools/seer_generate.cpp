// seer-generate: one request through libseer, written as PNG.
//   seer-generate DIR --prompt "a red circle" --seed 7 [--steps N] [--height H --width W] [--images N]
//                     [--class ID|NAME] [--guidance S] [--plan NAME | --interval N --order N --warmup N]
//                     [--final-full N] [--no-cache] [--threads N] [--expect-digest D] --out image.png
// Bad input: one "error: ..." line and exit code 2; a failed run: exit code 1.
#include <png.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "seer/seer.h"

namespace {

int fail(const std::string& message, int code = 2) {
  std::fprintf(stderr, "error: %s\n", message.c_str());
  return code;
}

bool parse_int(const char* s, long long lo, long long hi, long long* out) {
  char* end = nullptr;
  errno = 0;
  long long v = std::strtoll(s, &end, 10);
  if (errno || !*s || *end || v < lo || v > hi) return false;
  *out = v;
  return true;
}

// Writes through a temporary file beside `path`, renamed over it only when complete: a full disk or a
// kill leaves the previous file as it was.
bool write_png(const std::string& path, const uint8_t* rgb, int width, int height, std::string* why) {
  std::string tmp = path + ".tmp-" + std::to_string(getpid());
  FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) { *why = std::strerror(errno); return false; }
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png ? png_create_info_struct(png) : nullptr;
  if (!png || !info || setjmp(png_jmpbuf(png))) {
    png_destroy_write_struct(&png, &info);
    std::fclose(f);
    std::remove(tmp.c_str());
    *why = "the PNG encoder failed";
    return false;
  }
  png_init_io(png, f);
  png_set_IHDR(png, info, static_cast<png_uint_32>(width), static_cast<png_uint_32>(height), 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
               PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  png_write_info(png, info);
  for (int y = 0; y < height; ++y) png_write_row(png, const_cast<png_bytep>(rgb + static_cast<size_t>(y) * width * 3));
  png_write_end(png, nullptr);
  png_destroy_write_struct(&png, &info);
  bool ok = std::fflush(f) == 0 && fsync(fileno(f)) == 0;
  if (std::fclose(f) != 0) ok = false;
  if (!ok || std::rename(tmp.c_str(), path.c_str()) != 0) {
    *why = std::strerror(errno ? errno : EIO);
    std::remove(tmp.c_str());
    return false;
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h")) {
    std::fprintf(stderr, "usage: seer-generate ENGINE_DIR --prompt TEXT | --class ID --out IMAGE.png [--seed N] [--steps N] [--height H] [--width W]\n"
                         "       [--images N] [--guidance S] [--plan NAME | --interval N --order N --warmup N] [--final-full N] [--no-cache]\n"
                         "       [--threads N] [--expect-digest sha256:...]\n");
    return argc < 2 ? 2 : 0;
  }
  seer_request r;
  seer_request_init(&r);
  seer_open_options o;
  seer_open_options_init(&o);
  std::string dir = argv[1], out, prompt, label, plan, digest;
  for (int i = 2; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--no-cache") { r.no_cache = 1; continue; }
    if (i + 1 >= argc) return fail(a + " needs a value");
    const char* v = argv[++i];
    long long n = 0;
    auto integer = [&](long long lo, long long hi, const char* what) {
      if (!parse_int(v, lo, hi, &n)) { fail(a + " takes " + what + ", not '" + v + "'"); return false; }
      return true;
    };
    if (a == "--prompt") prompt = v;
    else if (a == "--class") label = v;
    else if (a == "--out") out = v;
    else if (a == "--plan") plan = v;
    else if (a == "--expect-digest") digest = v;
    else if (a == "--seed") { if (!integer(0, 4294967295LL, "a seed from 0 to 4294967295")) return 2; r.seed = static_cast<uint64_t>(n); }
    else if (a == "--steps") { if (!integer(1, 100000, "a step count")) return 2; r.steps = static_cast<int>(n); }
    else if (a == "--height") { if (!integer(1, 1 << 16, "pixels")) return 2; r.height = static_cast<int>(n); }
    else if (a == "--width") { if (!integer(1, 1 << 16, "pixels")) return 2; r.width = static_cast<int>(n); }
    else if (a == "--images") { if (!integer(1, 1024, "an image count from 1 to 1024")) return 2; r.images = static_cast<int>(n); }
    else if (a == "--interval") { if (!integer(1, 100000, "a whole number of steps")) return 2; r.interval = static_cast<int>(n); }
    else if (a == "--order") { if (!integer(0, 16, "a Taylor order")) return 2; r.order = static_cast<int>(n); }
    else if (a == "--warmup") { if (!integer(1, 100000, "a whole number of steps")) return 2; r.warmup = static_cast<int>(n); }
    else if (a == "--final-full") { if (!integer(0, 100000, "a whole number of steps")) return 2; r.final_full = static_cast<int>(n); }
    else if (a == "--threads") { if (!integer(1, 1024, "a thread count")) return 2; o.threads = static_cast<int>(n); }
    else if (a == "--guidance") {
      char* end = nullptr;
      r.guidance_scale = std::strtod(v, &end);
      if (!*v || *end) return fail("--guidance takes a number, not '" + std::string(v) + "'");
    } else return fail("unknown option " + a + "; see seer-generate --help");
  }
  if (out.empty()) return fail("--out is missing: give the PNG file to write");
  if (out.size() < 4 || out.compare(out.size() - 4, 4, ".png") != 0) return fail("--out " + out + ": seer-generate writes PNG images; give a file name ending in .png");
  r.prompt = prompt.empty() ? nullptr : prompt.c_str();
  r.class_label = label.empty() ? nullptr : label.c_str();
  r.plan = plan.empty() ? nullptr : plan.c_str();
  o.expect_digest = digest.empty() ? nullptr : digest.c_str();
  seer_engine* engine = nullptr;
  seer_status s = seer_open(dir.c_str(), &o, &engine);
  if (s != SEER_OK) return fail(seer_last_error(), s == SEER_ERROR_RUN || s == SEER_ERROR_INTERNAL ? 1 : 2);
  seer_image image;
  s = seer_generate(engine, &r, &image);
  if (s != SEER_OK) {
    seer_close(engine);
    return fail(seer_last_error(), s == SEER_ERROR_RUN || s == SEER_ERROR_INTERNAL ? 1 : 2);
  }
  int code = 0;
  for (int k = 0; k < image.images && code == 0; ++k) {
    std::string path = image.images == 1 ? out : out.substr(0, out.size() - 4) + "-" + std::to_string(k) + ".png";
    std::string why;
    if (!write_png(path, image.rgb + static_cast<size_t>(k) * image.height * image.width * 3, image.width, image.height, &why))
      code = fail("cannot write " + path + ": " + why + "; choose another --out", 1);
    else
      std::fprintf(stderr, "%s: %dx%d, %d/%d full steps, %.3f s denoising\n", path.c_str(), image.width, image.height, image.full_steps, image.steps,
                   image.seconds_denoise);
  }
  seer_image_free(&image);
  seer_close(engine);
  return code;
}
