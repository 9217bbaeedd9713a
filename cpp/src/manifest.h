// The engine directory (docs/engine-dir.md): manifest.json read and checked before any file it names
// is used, every named file verified (inside the directory, regular, no symbolic link on its path, its
// size and sha256), and the typed sections the runtime needs.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace seer {

using json = nlohmann::ordered_json;

constexpr int kSchemaVersion = 4;

struct TensorSpec {
  std::string name, dtype;
  std::vector<json> shape;  // ints, or expressions over the symbols ("B", "N_img + 16", "2*H_latent")
};

struct GraphSpec {
  std::string onnx, onnx_data, precision;
  std::vector<TensorSpec> inputs, outputs;
  const TensorSpec* input(const std::string& name) const;
  const TensorSpec* output(const std::string& name) const;
};

struct TextEncoder {
  std::string tokenizer;
  int64_t max_length = 0, pad_id = 0;
};

struct Manifest {
  json raw;
  std::string directory, digest;
  int schema_version = 0;
  std::string family;  // "flux" | "dit"
  std::string guidance;  // "none" | "embedded" | "cfg"
  std::vector<std::pair<std::string, std::string>> dims;  // in order: later ones may use earlier ones
  std::map<std::string, GraphSpec> graphs;
  std::map<std::string, TextEncoder> text;  // flux: "clip", "t5"
  std::map<std::string, std::string> files_sha256;
  // cache
  std::string granularity;  // "modules" | "lite"
  int max_order = 0;
  // defaults
  int default_height = 0, default_width = 0, default_steps = 0;
  double default_guidance = 0;
  std::string default_style;
  int default_interval = 0, default_order = 0, default_warmup = 0, default_final_full = 0;
  // latent
  int latent_channels = 0, vae_scale_factor = 0;
  // dit classes
  int class_count = 0;
  int64_t null_class = -1;
  std::map<int64_t, std::string> labels;
  std::map<std::string, std::string> schedules;  // plan name -> file

  const json& sampler() const { return raw.at("sampler"); }
  const json& config() const { return raw.at("model").at("config"); }
  const GraphSpec& graph(const std::string& name) const;
};

// Checks the directory as the Python runtime's open_engine_dir does (docs/engine-dir.md, "Integrity");
// throws EngineDirError (or UsageError for a malformed expected digest). `expect_digest` may be empty.
Manifest open_engine_dir(const std::string& directory, bool verify, const std::string& expect_digest);

// The bytes of a file the manifest lists, read only if it is a regular file inside the directory (no
// symbolic link on its path), refused unless its sha256 is the one recorded: what is verified is what is used.
std::string read_verified(const Manifest& m, const std::string& rel, size_t limit);

std::string sha256_hex(const std::string& data);

// JSON whose objects hold every key once (another reader may keep the other value) and no NaN/Infinity;
// an EngineDirError naming `path` and `fix` otherwise.
json parse_strict_json(const std::string& data, const std::string& path, const std::string& fix);

// A shape entry's value for the request's symbols (integers, + - * // and brackets; nothing else).
int64_t eval_dim(const json& dim, const std::map<std::string, int64_t>& values);
std::map<std::string, int64_t> dim_values(const Manifest& m, int64_t batch, int64_t height, int64_t width, int64_t g);
std::vector<int64_t> shape_of(const TensorSpec& t, const std::map<std::string, int64_t>& values);

}  // namespace seer
