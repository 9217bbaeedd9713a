/* The C API from C: open, generate, check, close. Built by tests/test_cpp.py against libseer.so.
 *   c_example ENGINE_DIR PROMPT SEED  -> prints "WIDTHxHEIGHT FULL/STEPS SUM" (SUM: the sum of the RGB bytes) */
#include <stdio.h>
#include <stdlib.h>

#include "seer/seer.h"

int main(int argc, char** argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: c_example ENGINE_DIR PROMPT SEED\n");
    return 2;
  }
  seer_open_options options;
  seer_open_options_init(&options);
  seer_engine* engine = NULL;
  if (seer_open(argv[1], &options, &engine) != SEER_OK) {
    fprintf(stderr, "error: %s\n", seer_last_error());
    return 2;
  }
  seer_request request;
  seer_request_init(&request);
  request.prompt = argv[2];
  request.seed = strtoull(argv[3], NULL, 10);
  request.steps = 8;
  seer_image image;
  seer_status status = seer_generate(engine, &request, &image);
  if (status != SEER_OK) {
    fprintf(stderr, "error: %s\n", seer_last_error());
    seer_close(engine);
    return 2;
  }
  unsigned long long sum = 0;
  for (size_t i = 0; i < (size_t)image.images * image.height * image.width * 3; ++i) sum += image.rgb[i];
  printf("%dx%d %d/%d %llu\n", image.width, image.height, image.full_steps, image.steps, sum);
  seer_image_free(&image);
  seer_close(engine);
  return 0;
}
