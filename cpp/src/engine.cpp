#include "engine.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <set>
#include <tuple>

#include "errors.h"
#include "onnx_scan.h"

namespace seer {

namespace {

constexpr int kMaxImages = 1024;
constexpr size_t kMaxPromptChars = 100000;
constexpr int64_t kMaxTokens = 65536;
constexpr int64_t kMaxPackedSide = 1024;
constexpr double kGuidanceMax = 50.0;

std::string fmt(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

bool finite(const float* x, size_t n) {
  for (size_t i = 0; i < n; ++i)
    if (!std::isfinite(x[i])) return false;
  return true;
}

void to_half(const float* f, uint16_t* h, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    _Float16 v = static_cast<_Float16>(f[i]);
    std::memcpy(&h[i], &v, 2);
  }
}
void from_half(const uint16_t* h, float* f, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    _Float16 v;
    std::memcpy(&v, &h[i], 2);
    f[i] = static_cast<float>(v);
  }
}

size_t utf8_chars(const std::string& s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

std::string trim_lower(const std::string& s) {
  size_t a = 0, b = s.size();
  while (a < b && std::isspace(static_cast<unsigned char>(s[a]))) ++a;
  while (b > a && std::isspace(static_cast<unsigned char>(s[b - 1]))) --b;
  std::string out = s.substr(a, b - a);
  for (auto& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

}  // namespace

Engine::Engine(const std::string& directory, const OpenOptions& o) : onnxruntime_version_(load_onnxruntime(o.onnxruntime_library)) {
  if (o.threads < 0 || o.threads > 1024)
    throw UsageError("threads must be between 1 and 1024 (got " + std::to_string(o.threads) + "); give the cores this pipeline may use");
  m_ = open_engine_dir(directory, o.verify, o.expect_digest);
  memory_budget_ = o.memory_budget;
  for (const auto& [name, g] : m_.graphs)
    for (const auto* list : {&g.inputs, &g.outputs})
      for (const auto& t : *list)
        if (t.dtype == "bfloat16")
          throw UnsupportedError(m_.directory + " holds bfloat16 graphs (" + name + "), which ONNX Runtime's CPU provider does not run; export with --precision fp16 or fp32 for libseer, or run this one with seer-run on a GPU");
  // the dtypes the loop rounds to (docs/engine-dir.md): the latents, the prediction, the features, the factors
  auto dtype = [&](const char* graph, bool input, const char* name) {
    const TensorSpec* t = input ? m_.graph(graph).input(name) : m_.graph(graph).output(name);
    return t ? t->dtype : std::string("float32");
  };
  const bool lite_dir = m_.granularity == "lite";
  half_latents_ = dtype("full", true, "hidden_states") == "float16";
  half_sample_ = dtype("full", false, "sample") == "float16";
  half_features_ = dtype("full", false, lite_dir ? "sample" : "features") == "float16";
  half_factors_ = dtype("forecast", true, "factor_0") == "float16";
  for (auto [graph, input, name, want] : {std::tuple<const char*, bool, const char*, std::string>{"forecast", true, "hidden_states", dtype("full", true, "hidden_states")},
                                          {"forecast", false, "sample", dtype("full", false, "sample")}, {"full", true, "timestep", "float32"},
                                          {"forecast", true, "coefficients", "float32"}, {"vae_decoder", true, "latents", "float32"},
                                          {"vae_decoder", false, "image", "float32"}})
    if ((input ? m_.graph(graph).input(name) : m_.graph(graph).output(name)) && dtype(graph, input, name) != want)  // lite forecasts take no latents
      throw UnsupportedError(std::string("the ") + graph + " graph's " + name + " is " + dtype(graph, input, name) + ", where libseer (as docs/engine-dir.md) expects " + want + "; re-export the engine directory");
  sampler_ = std::make_unique<Sampler>(m_.sampler());
  std::vector<std::string> names = {"full", "forecast", "vae_decoder"};
  if (m_.family == "flux") names.insert(names.end(), {"clip", "t5"});
  for (const auto& n : names) {
    const GraphSpec& g = m_.graph(n);
    std::string bytes = read_verified(m_, g.onnx, size_t(2) << 30), path = m_.directory + "/" + g.onnx;
    // Every file a graph reads weights from must be listed (so verified and pinned) and declared:
    // otherwise an unlisted file could change what a pinned directory computes.
    std::set<std::string> external = external_data_locations(bytes, g.onnx);
    std::string folder = g.onnx.find('/') == std::string::npos ? "" : g.onnx.substr(0, g.onnx.rfind('/') + 1);
    for (const auto& loc : external)
      if (!m_.files_sha256.count(folder + loc) || folder + loc != g.onnx_data)
        throw EngineDirError("the " + n + " graph reads weights from '" + loc.substr(0, 80) + "', which the manifest does not list as its onnx_data, so they cannot be verified; re-export the engine directory");
    // A graph with its weights inline is loaded from the very bytes that were verified; one with
    // external data from its path (ONNX Runtime reads the weights file beside it, verified above).
    if (!external.empty()) bytes.clear();
    graphs_[n] = std::make_unique<Graph>(n, g, bytes, path, o.threads);
    for (const auto& t : g.inputs) inputs_[n].push_back(t.name);
  }
  for (const auto& [k, t] : m_.text)  // from the bytes that were verified, not the path again
    tokenizers_.emplace(k, Tokenizer::from_json(read_verified(m_, t.tokenizer, size_t(256) << 20), t.tokenizer));
  for (const auto& [k, t] : m_.text)
    if (static_cast<size_t>(t.pad_id) >= tokenizers_.at(k).vocab_size())
      throw EngineDirError(t.tokenizer + ": pad_id " + std::to_string(t.pad_id) + " is outside the tokenizer's vocabulary of " +
                           std::to_string(tokenizers_.at(k).vocab_size()) + "; re-export the engine directory");
  // the tensors the loop binds by name, declared where it expects them
  for (auto [graph, kind, name] : {std::tuple<const char*, const char*, const char*>{"full", "inputs", "hidden_states"}, {"full", "inputs", "timestep"},
                                   {"full", "outputs", "sample"}, {"forecast", "inputs", "coefficients"}, {"forecast", "outputs", "sample"},
                                   {"vae_decoder", "inputs", "latents"}, {"vae_decoder", "outputs", "image"}})
    if (!(std::string(kind) == "inputs" ? m_.graph(graph).input(name) : m_.graph(graph).output(name)))
      throw EngineDirError(std::string("the manifest's ") + graph + " graph declares no " + name + "; re-export the engine directory");
  if (m_.granularity == "modules" && !m_.graph("full").output("features"))
    throw EngineDirError("the manifest's full graph declares no features output although cache.granularity is modules; re-export the engine directory");
  const GraphSpec& forecast = m_.graph("forecast");
  if (shape_of(*forecast.input("coefficients"), {}) != std::vector<int64_t>{m_.max_order + 1})
    throw EngineDirError("the forecast graph's coefficients are not max_order + 1 values; re-export the engine directory");
  for (int j = 0; j <= m_.max_order; ++j)
    if (!forecast.input("factor_" + std::to_string(j)))
      throw EngineDirError("the forecast graph does not take factor_" + std::to_string(j) + " although cache.max_order is " +
                           std::to_string(m_.max_order) + "; re-export the engine directory");
}

std::vector<int64_t> Engine::tokenize(const std::string& encoder, const std::string& prompt, size_t* truncated) const {
  const TextEncoder& t = m_.text.at(encoder);
  size_t cut = 0;
  std::vector<int64_t> ids;
  try {
    ids = tokenizers_.at(encoder).encode_padded(prompt, static_cast<size_t>(t.max_length), t.pad_id, &cut);
  } catch (const TokenizerError& e) {
    throw UsageError(std::string("the prompt cannot be tokenized: ") + e.what());
  }
  if (truncated) *truncated = cut;
  return ids;
}

int64_t Engine::class_id(const std::string& label_in) const {
  std::string label = trim_lower(label_in);
  bool digits = !label.empty() && label.size() <= 9 && std::all_of(label.begin(), label.end(), [](char c) { return std::isdigit(static_cast<unsigned char>(c)); });
  if (digits) {
    int64_t id = std::stoll(label);
    if (id >= m_.class_count || (!m_.labels.empty() && !m_.labels.count(id))) {
      std::string span = m_.labels.empty() ? "0 to " + std::to_string(m_.class_count - 1) : "one of the " + std::to_string(m_.labels.size()) + " labelled ids";
      throw UsageError("class " + std::to_string(id) + " is not a class of this model; use " + span);
    }
    return id;
  }
  if (label.empty())
    throw UsageError("no class given; this model is class-conditional: pass --class with an id or a name (Pipeline(...)(class_labels=[...]))");
  std::set<int64_t> ids;
  for (const auto& [id, names] : m_.labels) {
    size_t start = 0;
    while (start <= names.size()) {
      size_t comma = names.find(',', start);
      std::string n = trim_lower(names.substr(start, comma == std::string::npos ? std::string::npos : comma - start));
      if (!n.empty() && n == label) ids.insert(id);
      if (comma == std::string::npos) break;
      start = comma + 1;
    }
  }
  if (ids.empty())
    throw UsageError("no class is named '" + label_in.substr(0, 80) + "' in this model (give an id, or a name from the model's labels)");
  if (ids.size() > 1) {
    std::string list;
    for (auto id : ids) list += (list.empty() ? "" : ", ") + std::to_string(id);
    throw UsageError("'" + label_in + "' names several classes (" + list + "); give the id");
  }
  return *ids.begin();
}

void Engine::check_size(int height, int width) const {
  if (m_.family == "dit") {
    int size = static_cast<int>(m_.config().at("sample_size").get<int64_t>()) * m_.vae_scale_factor;
    if (height != size || width != size)
      throw UsageError("this DiT generates " + std::to_string(size) + "x" + std::to_string(size) + " images only (got " + std::to_string(height) + "x" +
                       std::to_string(width) + "); leave --height and --width out");
    return;
  }
  int mult = 2 * m_.vae_scale_factor;
  for (auto [name, v] : {std::pair<const char*, int>{"height", height}, {"width", width}})  // first: the suggestions below stay in range
    if (static_cast<int64_t>(v) > kMaxPackedSide * mult)
      throw UsageError(std::string(name) + " " + std::to_string(v) + " is above the " + std::to_string(kMaxPackedSide * mult) +
                       " pixels a side the exported graphs take; use at most " + std::to_string(kMaxPackedSide * mult));
  for (auto [name, v] : {std::pair<const char*, int>{"height", height}, {"width", width}})
    if (v < mult || v % mult) {
      int lo = std::max(mult, v - v % mult);
      throw UsageError(std::string(name) + " " + std::to_string(v) + " cannot be generated: it must be a positive multiple of " + std::to_string(mult) +
                       " (try " + std::to_string(lo) + " or " + std::to_string(lo + mult) + ")");
    }
  if (int64_t(height / mult) * (width / mult) > kMaxTokens)
    throw UsageError(std::to_string(height) + "x" + std::to_string(width) + " is larger than the exported graphs take (" + std::to_string(kMaxTokens) + " latent tokens)");
  for (auto [name, v] : {std::pair<const char*, int>{"height", height}, {"width", width}})
    if (v > kMaxPackedSide * mult)
      throw UsageError(std::string(name) + " " + std::to_string(v) + " is above the " + std::to_string(kMaxPackedSide * mult) +
                       " pixels a side the exported graphs take; use at most " + std::to_string(kMaxPackedSide * mult));
}

// runtime/memory.py's estimate (its constants are the envelope of peak RSS measured on ONNX Runtime's
// CPU provider) and its check, before anything of the request is allocated.
void Engine::check_memory(int64_t b, int64_t mrows, int64_t height, int64_t width, int64_t tokens, int64_t context, size_t features,
                          size_t sample, int g) {
  const json& cfg = m_.config();
  double heads = static_cast<double>(cfg.at("dim").get<int64_t>() / cfg.at("head_dim").get<int64_t>());
  double t = static_cast<double>(tokens + context), m = static_cast<double>(mrows), f = static_cast<double>(features);
  double buffers = (m_.max_order + 2) * f * 4 + 3 * 4 * static_cast<double>(sample);
  double transformer = 6.0 * 4 * m * heads * t * t + 96.0 * 4 * m * t * static_cast<double>(cfg.at("dim").get<int64_t>()) + 3.5 * 4 * f;
  int64_t channels = 256;  // FLUX.1-dev's VAE when the manifest gives no widths
  const json& latent = m_.raw.at("latent");
  if (latent.contains("vae_block_out_channels") && latent["vae_block_out_channels"].is_array() && !latent["vae_block_out_channels"].empty()) {
    const json& w = latent["vae_block_out_channels"];
    const json& c = w.size() > 1 ? w[1] : w[0];
    if (c.is_number_integer() && c.get<int64_t>() > 0) channels = c.get<int64_t>();
  }
  double pixels = static_cast<double>((height / m_.vae_scale_factor) * (width / m_.vae_scale_factor));
  double decoder = 2.0 * 4 * static_cast<double>(b) * pixels * pixels + 20.0 * static_cast<double>(b * height * width) * static_cast<double>(channels);
  double need = buffers + transformer + decoder;
  auto gb = [](double n) {
    char buf[32];
    std::snprintf(buf, sizeof buf, n >= 1e8 ? "%.2f GB" : "%.1f MB", n >= 1e8 ? n / 1e9 : n / 1e6);
    return std::string(buf);
  };
  std::string what = std::to_string(height) + "x" + std::to_string(width) + " at batch " + std::to_string(b) + (g > 1 ? " (doubled for classifier-free guidance)" : "");
  std::string describe = "about " + gb(need) + " (Taylor factors and buffers " + gb(buffers) + ", transformer activations " + gb(transformer) + ", VAE decoder " + gb(decoder) + ")";
  std::string fix = "use a smaller size or batch, or run it on a machine or GPU with more memory";
  if (memory_budget_ && need > static_cast<double>(memory_budget_))
    throw MemoryError(what + " needs " + describe + ", above the memory budget of " + gb(static_cast<double>(memory_budget_)) + "; " + fix + ", or raise the budget");
  double available = static_cast<double>(sysconf(_SC_AVPHYS_PAGES)) * static_cast<double>(sysconf(_SC_PAGESIZE));
  if (FILE* f = std::fopen("/proc/meminfo", "r")) {  // MemAvailable counts reclaimable caches, as psutil's available does
    char line[256];
    while (std::fgets(line, sizeof line, f)) {
      unsigned long long kb = 0;
      if (std::sscanf(line, "MemAvailable: %llu kB", &kb) == 1) available = static_cast<double>(kb) * 1024;
    }
    std::fclose(f);
  }
  double held = held_buffers_ + held_arenas_;
  if (need - held > available)
    throw MemoryError(what + " needs " + describe + ", and only " + gb(available + held) + " is free in this machine's available memory; " + fix);
  held_buffers_ = buffers;  // this shape's buffers replace the last one's
  held_arenas_ = std::max(held_arenas_, transformer + decoder);  // ONNX Runtime's arenas keep their largest run
}

Plan Engine::request_plan(const Request& r) const {
  for (auto [name, v] : {std::pair<const char*, int>{"interval", r.interval}, {"order", r.order}, {"warmup", r.warmup}})
    if (v < -1) throw UsageError(std::string(name) + " must be -1 (the directory's default) or a whole number, not " + std::to_string(v));
  if (r.final_full < 0)
    throw UsageError("final full steps must be 0 or more (got " + std::to_string(r.final_full) + "); pass --final-full in that range");
  if (!r.plan.empty()) {
    std::vector<std::string> given;
    if (r.interval >= 0) given.push_back("interval");
    if (r.warmup >= 0) given.push_back("warmup");
    if (r.order >= 0) given.push_back("order");
    if (r.final_full) given.push_back("final_full");
    if (r.schedule_style != "taylorseer") given.push_back("schedule_style");
    if (r.no_cache) given.push_back("no_cache");
    if (!given.empty())
      throw UsageError("a plan fixes the whole schedule, so " + given[0] + " cannot be given with it; drop one of them");
    Plan p = directory_plan(m_, r.plan);
    if (p.steps() > sampler_->max_steps())
      throw UsageError("steps must be at most " + std::to_string(sampler_->max_steps()) + ", the sampler's training timesteps (got " +
                       std::to_string(p.steps()) + "); more steps than that only repeat timesteps");
    if (r.steps && r.steps != p.steps())
      throw UsageError("plan " + r.plan + " was calibrated for " + std::to_string(p.steps()) + " steps, not " + std::to_string(r.steps) + ": run it with " +
                       std::to_string(p.steps()) + " steps, or calibrate one for " + std::to_string(r.steps) + " (seer-calibrate --steps " + std::to_string(r.steps) + ")");
    return p;
  }
  int steps = r.steps ? r.steps : m_.default_steps;
  if (steps < 1) throw UsageError("steps must be at least 1 (got " + std::to_string(steps) + "); FLUX.1-dev uses 28 to 50");
  if (steps > sampler_->max_steps())
    throw UsageError("steps must be at most " + std::to_string(sampler_->max_steps()) + ", the sampler's training timesteps (got " + std::to_string(steps) +
                     "); more steps than that only repeat timesteps");
  int order = r.order >= 0 ? r.order : m_.default_order;
  int interval = r.interval >= 0 ? r.interval : m_.default_interval;
  int warmup = r.warmup >= 0 ? r.warmup : std::min(m_.default_warmup, steps);  // a default never makes a short run fail
  if (r.schedule_style != "taylorseer" && r.schedule_style != "diffusers")
    throw UsageError("schedule_style must be one of taylorseer, diffusers, not '" + r.schedule_style + "'");
  return rule_plan(steps, r.no_cache, interval, warmup, r.final_full, r.schedule_style, order, m_.max_order);
}

Result Engine::generate(const Request& r) {
  std::lock_guard<std::mutex> guard(lock_);
  const bool flux = m_.family == "flux";
  Result res;
  // --- the request, checked before anything runs (the Python runtime's checks and messages)
  if (r.images < 1 || r.images > kMaxImages)
    throw UsageError("images must be between 1 and " + std::to_string(kMaxImages) + " (got " + std::to_string(r.images) + ")");
  const int b = r.images;
  if (flux) {
    if (!r.class_label.empty())
      throw UsageError("this model is text-to-image (FLUX): it takes a prompt, not class labels; pass --prompt '...' instead of --class");
    if (utf8_chars(r.prompt) > kMaxPromptChars)
      throw UsageError("a prompt of " + std::to_string(utf8_chars(r.prompt)) + " characters is far beyond what the text encoders read; give at most " + std::to_string(kMaxPromptChars));
    if (std::all_of(r.prompt.begin(), r.prompt.end(), [](char c) { return std::isspace(static_cast<unsigned char>(c)); }))
      throw UsageError("the prompt is empty; describe the image to generate, e.g. --prompt 'a red circle'");
  } else if (!r.prompt.empty()) {
    throw UsageError("this model is class-conditional (DiT): it takes class labels, not a prompt; pass --class with an id or a name (e.g. --class 207) instead of --prompt");
  }
  const int64_t label = flux ? -1 : class_id(r.class_label);
  int height = r.height ? r.height : m_.default_height, width = r.width ? r.width : m_.default_width;
  double scale = r.guidance_scale;
  if (!std::isnan(scale) && m_.guidance == "none") {
    if (!flux && scale > 1)
      throw UsageError("guidance scale " + fmt(scale) + " needs classifier-free guidance, but this model has no unconditional class (it was trained without label dropout); use --guidance 1 or leave it out");
    res.warnings.push_back("guidance scale " + fmt(scale) + " ignored: this directory's model takes no guidance");
  }
  if (std::isnan(scale) || m_.guidance == "none") scale = m_.default_guidance;
  Plan plan = request_plan(r);
  const int steps = plan.steps();
  if (m_.guidance != "none") {
    if (!std::isfinite(scale) || scale > kGuidanceMax)
      throw RunError("guidance scale " + fmt(scale) + " would make the transformer's outputs non-finite (it is scaled by 1000 inside the graphs): use a finite scale from 0 to 50, e.g. --guidance 3.5");
    if (scale < 0) throw UsageError("guidance scale " + fmt(scale) + " is negative; use a scale from 0 to 50, e.g. --guidance 3.5");
  }
  if (height < 1 || width < 1) throw UsageError("height and width must be positive (got " + std::to_string(height) + "x" + std::to_string(width) + ")");
  check_size(height, width);
  for (int k = 0; k < b; ++k)
    if (r.seed + static_cast<uint64_t>(k) >= (uint64_t(1) << 32))
      throw UsageError("seed " + std::to_string(r.seed + static_cast<uint64_t>(k)) + " is outside [0, 2**32) = [0, 4294967295]: the noise generator takes 32 bits, so larger seeds would repeat images; use a seed in that range");
  const int g = (m_.guidance == "cfg" && scale > 1) ? 2 : 1;
  const int64_t mrows = int64_t(g) * b;
  auto values = dim_values(m_, b, height, width, g);

  // --- conditioning: the inputs fixed over the steps
  double t0 = now();
  std::map<std::string, const Ort::Value*> fixed;
  std::vector<Ort::Value> keep;  // ORT-allocated encoder outputs, alive for the request
  keep.reserve(8);
  std::vector<int64_t> clip_ids, t5_ids, class_rows;
  std::vector<float> rope_cos, rope_sin, guidance_in;
  Ort::Value clip_v{nullptr}, t5_v{nullptr}, cos_v{nullptr}, sin_v{nullptr}, guidance_v{nullptr}, class_v{nullptr};
  int64_t image_tokens = 0, rows = 0, cols = 0;
  const int64_t channels = m_.latent_channels;
  std::vector<int64_t> latent_shape, noise_shape;
  if (flux) {
    int mult = 2 * m_.vae_scale_factor;
    rows = height / mult;
    cols = width / mult;
    image_tokens = rows * cols;
    const auto c = tokenize("clip", r.prompt), t = tokenize("t5", r.prompt);  // once: every image has this prompt
    for (int k = 0; k < b; ++k) {
      clip_ids.insert(clip_ids.end(), c.begin(), c.end());
      t5_ids.insert(t5_ids.end(), t.begin(), t.end());
    }
    int64_t lc = m_.text.at("clip").max_length, lt = m_.text.at("t5").max_length;
    clip_v = tensor(clip_ids.data(), {b, lc});
    t5_v = tensor(t5_ids.data(), {b, lt});
    auto pooled = graphs_["clip"]->run_plain({{"input_ids", &clip_v}}, {"pooled_projections"});
    auto text = graphs_["t5"]->run_plain({{"input_ids", &t5_v}}, {"encoder_hidden_states"});
    keep.push_back(std::move(pooled[0]));
    keep.push_back(std::move(text[0]));
    fixed["pooled_projections"] = &keep[0];
    fixed["encoder_hidden_states"] = &keep[1];
    std::vector<int64_t> axes;
    for (const auto& a : m_.config().at("axes_dims_rope")) axes.push_back(a.get<int64_t>());
    flux_rope(lt, rows, cols, axes, m_.config().at("rope_theta").get<double>(), &rope_cos, &rope_sin);
    int64_t width_rope = 0;
    for (auto a : axes) width_rope += a;
    cos_v = tensor(rope_cos.data(), {lt + image_tokens, width_rope});
    sin_v = tensor(rope_sin.data(), {lt + image_tokens, width_rope});
    fixed["rope_cos"] = &cos_v;
    fixed["rope_sin"] = &sin_v;
    latent_shape = {b, image_tokens, 4 * channels};
    noise_shape = {channels, 2 * rows, 2 * cols};
  } else {
    for (int k = 0; k < b; ++k) class_rows.push_back(label);
    if (g > 1) for (int k = 0; k < b; ++k) class_rows.push_back(m_.null_class);
    class_v = tensor(class_rows.data(), {mrows});
    fixed["class_labels"] = &class_v;
    int64_t s = m_.config().at("sample_size").get<int64_t>(), p = m_.config().at("patch_size").get<int64_t>();
    image_tokens = (s / p) * (s / p);
    latent_shape = {b, channels, s, s};
    noise_shape = {channels, s, s};
  }
  if (m_.guidance == "embedded") {
    guidance_in.assign(static_cast<size_t>(b), static_cast<float>(scale));
    guidance_v = tensor(guidance_in.data(), {b});
    fixed["guidance"] = &guidance_v;
  }
  res.seconds_conditioning = now() - t0;

  // --- buffers for this shape (kept for the next request of the same shape)
  const auto factor_shape = shape_of(*m_.graph("forecast").input("factor_0"), values);
  const auto sample_shape = shape_of(*m_.graph("full").output("sample"), values);
  const bool lite = m_.granularity == "lite";
  std::vector<int64_t> model_shape = latent_shape;
  model_shape[0] = mrows;
  // The shapes the manifest declares must be the ones the loop's arithmetic assumes: ONNX Runtime
  // writes into these buffers, and the host reads them by these sizes.
  auto refuse = [](const std::string& what) {
    throw EngineDirError("the manifest's " + what + " does not fit this family's latents; re-export the engine directory");
  };
  if (flux ? sample_shape != model_shape
           : (sample_shape.size() != 4 || sample_shape[0] != mrows || sample_shape[1] < channels || sample_shape[2] != latent_shape[2] ||
              sample_shape[3] != latent_shape[3]))
    refuse("full graph's sample shape");
  if (shape_of(*m_.graph("forecast").output("sample"), values) != sample_shape) refuse("forecast graph's sample shape");
  for (const char* g_name : {"full", "forecast"})  // lite forecasts take no latents
    if (const auto* h = m_.graph(g_name).input("hidden_states"); h && shape_of(*h, values) != model_shape)
      refuse(std::string(g_name) + " graph's hidden_states shape");
  if (lite) {
    std::vector<int64_t> want = {1};
    want.insert(want.end(), sample_shape.begin(), sample_shape.end());
    if (factor_shape != want) refuse("lite factor shape");
  } else {
    const auto* features = m_.graph("full").output("features");
    if (!features || shape_of(*features, values) != factor_shape || factor_shape.size() < 2 || factor_shape[1] != mrows)
      refuse("features and factor shapes");
  }
  for (int j = 1; j <= m_.max_order; ++j)
    if (shape_of(*m_.graph("forecast").input("factor_" + std::to_string(j)), values) != factor_shape) refuse("factor_" + std::to_string(j) + " shape");
  const size_t n_lat = numel(latent_shape), n_factor = numel(factor_shape), n_sample = numel(sample_shape);
  check_memory(b, mrows, height, width, image_tokens, flux ? m_.text.at("t5").max_length : 0, n_factor, n_sample, g);
  std::string key;
  for (const auto& [k, v] : values) key += k + "=" + std::to_string(v) + ",";
  if (key != shape_key_) {
    shape_key_.clear();
    slots_.clear();
    slots_.resize(static_cast<size_t>(m_.max_order + 2));
    for (auto& s : slots_) {
      s.data.assign(n_factor, 0.0f);
      s.as_factor = tensor(s.data.data(), factor_shape);
      s.as_sample = lite ? tensor(s.data.data(), sample_shape) : Ort::Value(nullptr);
    }
    out_.assign(n_sample, 0.0f);
    out_v_ = tensor(out_.data(), sample_shape);
    latents_.assign(n_lat, 0.0f);
    latents_v_ = tensor(latents_.data(), latent_shape);
    model_in_.assign(g > 1 ? n_lat * 2 : 0, 0.0f);
    model_in_v_ = g > 1 ? tensor(model_in_.data(), model_shape) : Ort::Value(nullptr);
    wide_.assign(n_lat, 0.0f);
    guided_.assign(n_lat, 0.0f);
    pred_.assign(n_sample, 0.0f);
    timestep_.assign(static_cast<size_t>(mrows), 0.0f);
    timestep_v_ = tensor(timestep_.data(), {mrows});
    coefficients_.assign(static_cast<size_t>(m_.max_order + 1), 0.0f);
    coefficients_v_ = tensor(coefficients_.data(), {m_.max_order + 1});
    auto half = [](Half& x, size_t n, const std::vector<int64_t>& shape) {
      x.h.assign(n, 0);
      x.v = tensor_f16(x.h.data(), shape);
    };
    slots_h_.clear();
    slots_h_.resize(half_factors_ ? slots_.size() : 0);
    for (auto& x : slots_h_) half(x, n_factor, factor_shape);
    if (half_sample_) half(out_h_, n_sample, sample_shape);
    if (half_latents_) half(latents_h_, n_lat, latent_shape);
    if (half_latents_ && g > 1) half(model_in_h_, 2 * n_lat, model_shape);
    features_.assign(!lite && (half_features_ || half_factors_) ? n_factor : 0, 0.0f);
    features_v_ = features_.empty() ? Ort::Value(nullptr) : tensor(features_.data(), factor_shape);
    if (!lite && half_features_) half(features_h_, n_factor, factor_shape);
    shape_key_ = key;
  }
  // every factor buffer starts zeroed: a new request never sees the last one's factors
  for (auto& s : slots_) std::fill(s.data.begin(), s.data.end(), 0.0f);
  for (auto& x : slots_h_) std::fill(x.h.begin(), x.h.end(), uint16_t(0));

  // --- noise: image k from seed + k, drawn alone (so it equals that image requested by itself)
  const size_t per_image = numel(noise_shape);
  if (!r.noise.empty() && r.noise.size() != per_image * static_cast<size_t>(b))
    throw UsageError("the noise given has " + std::to_string(r.noise.size()) + " values; this request's latents take " +
                     std::to_string(per_image * static_cast<size_t>(b)) + " (images x " + std::to_string(channels) + " x " +
                     std::to_string(noise_shape[1]) + " x " + std::to_string(noise_shape[2]) + ")");
  if (!r.noise.empty() && !finite(r.noise.data(), r.noise.size())) throw UsageError("the noise given holds NaN or Inf; pass finite values");
  for (int k = 0; k < b; ++k) {
    std::vector<float> noise = r.noise.empty() ? randn(per_image, r.seed + static_cast<uint64_t>(k))
                                               : std::vector<float>(r.noise.begin() + static_cast<std::ptrdiff_t>(per_image * k),
                                                                    r.noise.begin() + static_cast<std::ptrdiff_t>(per_image * (k + 1)));
    float* dst = latents_.data() + static_cast<size_t>(k) * per_image;
    if (flux) {  // [C, 2r, 2c] -> tokens [r c, 4 C]
      for (int64_t c = 0; c < channels; ++c)
        for (int64_t y = 0; y < 2 * rows; ++y)
          for (int64_t x = 0; x < 2 * cols; ++x)
            dst[((y / 2) * cols + x / 2) * 4 * channels + c * 4 + (y % 2) * 2 + (x % 2)] = noise[static_cast<size_t>((c * 2 * rows + y) * 2 * cols + x)];
    } else {
      std::copy(noise.begin(), noise.end(), dst);
    }
  }
  if (half_latents_)  // the noise is drawn in float32 and rounded to the latents' dtype
    for (auto& v : latents_) v = half_round(v);
  const SamplerPlan sp = sampler_->plan(steps, image_tokens, half_latents_ ? "float16" : "float32");

  // --- the loop
  double t1 = now();
  std::vector<size_t> factors(static_cast<size_t>(m_.max_order + 1));
  for (size_t j = 0; j < factors.size(); ++j) factors[j] = j;
  size_t spare = factors.size();
  int valid = 0, last_full = -1;
  const Ort::Value* hidden = half_latents_ ? (g > 1 ? &model_in_h_.v : &latents_h_.v) : (g > 1 ? &model_in_v_ : &latents_v_);
  // lite: the full graph's prediction goes straight into the spare factor when both are float32
  const bool direct = lite ? !half_sample_ && !half_factors_ : !half_features_ && !half_factors_;
  const Ort::Value* out_bound = half_sample_ ? &out_h_.v : &out_v_;
  const size_t out_channels = static_cast<size_t>(sample_shape.size() > 1 ? (flux ? sample_shape.back() : sample_shape[1]) : 0);
  // Every step's bindings, resolved once: at a step only the buffers the Taylor update re-labelled
  // change (the spare the full graph writes its features into, the factors the forecast reads).
  std::map<std::string, const Ort::Value*> named = fixed;
  named["hidden_states"] = hidden;
  named["timestep"] = &timestep_v_;
  named["coefficients"] = &coefficients_v_;
  for (size_t j = 0; j < factors.size(); ++j) named["factor_" + std::to_string(j)] = nullptr;  // set per step
  std::map<std::string, std::vector<std::pair<std::string, const Ort::Value*>>> bound;
  std::vector<size_t> factor_at(factors.size());  // where factor_j sits in the forecast's bindings
  for (const char* graph : {"full", "forecast"}) {
    for (const auto& n : inputs_[graph]) {
      auto it = named.find(n);
      if (it == named.end() || (std::string(graph) == "full" && n.rfind("factor_", 0) == 0) || (std::string(graph) == "full" && n == "coefficients"))
        throw EngineDirError("the " + std::string(graph) + " graph takes an input '" + n + "' that a " + m_.family + " directory does not have; re-export the engine directory");
      if (n.rfind("factor_", 0) == 0) factor_at[std::stoul(n.substr(7))] = bound[graph].size();
      bound[graph].emplace_back(n, it->second);
    }
  }
  auto& full_in = bound["full"];
  auto& forecast_in = bound["forecast"];
  std::vector<std::pair<std::string, const Ort::Value*>> full_out = {{"sample", out_bound}}, forecast_out = {{"sample", out_bound}};
  if (!lite) full_out.emplace_back("features", direct ? nullptr : half_features_ ? &features_h_.v : &features_v_);
  const auto round_factor = [&](float v) { return half_factors_ ? half_round(v) : v; };
  const auto round_pred = [&](float v) { return half_sample_ ? half_round(v) : v; };
  for (int i = 0; i < steps; ++i) {
    if (g > 1) {
      std::copy(latents_.begin(), latents_.end(), model_in_.begin());
      std::copy(latents_.begin(), latents_.end(), model_in_.begin() + static_cast<std::ptrdiff_t>(n_lat));
    }
    std::fill(timestep_.begin(), timestep_.end(), sp.model_timesteps[static_cast<size_t>(i)]);
    if (half_latents_) {
      if (g > 1) to_half(model_in_.data(), model_in_h_.h.data(), 2 * n_lat);
      else to_half(latents_.data(), latents_h_.h.data(), n_lat);
    }
    const bool full = plan.full[static_cast<size_t>(i)];
    const float* sample = out_.data();
    const char* graph = full ? "full" : "forecast";
    if (full) {
      if (lite && direct) {
        full_out[0].second = &slots_[spare].as_sample;
        sample = slots_[spare].data.data();
      } else if (!lite && direct) {
        full_out[1].second = &slots_[spare].as_factor;
      }
      graphs_[graph]->run(full_in, full_out);
      if (half_sample_) from_half(out_h_.h.data(), out_.data(), n_sample);
      if (!direct) {  // the features (lite: the prediction) into the spare factor, in the factors' dtype
        if (!lite && half_features_) from_half(features_h_.h.data(), features_.data(), n_factor);
        const float* src = lite ? out_.data() : features_.data();
        float* dst = slots_[spare].data.data();
        for (size_t k = 0; k < n_factor; ++k) dst[k] = round_factor(src[k]);
      }
    } else {
      const auto& c = plan.coefficients[static_cast<size_t>(i)];
      std::copy(c.begin(), c.end(), coefficients_.begin());
      for (size_t j = 0; j < factors.size(); ++j)
        forecast_in[factor_at[j]].second = half_factors_ ? &slots_h_[factors[j]].v : &slots_[factors[j]].as_factor;
      graphs_[graph]->run(forecast_in, forecast_out);
      if (half_sample_) from_half(out_h_.h.data(), out_.data(), n_sample);
    }
    // the prediction: the latent channels of the output (a learned-sigma DiT outputs twice them), guided
    const float* pred = sample;
    if (!flux && out_channels > static_cast<size_t>(channels)) {
      size_t inner = n_sample / (static_cast<size_t>(mrows) * out_channels);  // pixels of one channel
      for (int64_t q = 0; q < mrows; ++q)
        std::memcpy(pred_.data() + static_cast<size_t>(q) * channels * inner, sample + static_cast<size_t>(q) * out_channels * inner, static_cast<size_t>(channels) * inner * sizeof(float));
      pred = pred_.data();
    }
    if (g > 1) {
      const float s = round_pred(static_cast<float>(scale));  // in the prediction's dtype, as numpy forms it
      for (size_t k = 0; k < n_lat; ++k) {
        float v = round_pred(pred[k] - pred[k + n_lat]);
        v = round_pred(v * s);
        guided_[k] = round_pred(v + pred[k + n_lat]);
      }
      pred = guided_.data();
    }
    if (!finite(pred, n_lat)) {
      std::string where = " at denoising step " + std::to_string(i) + " of " + std::to_string(steps) + " (a " + (full ? "full" : "forecast") + " step)";
      throw RunError(full ? "the full transformer's output is not finite (NaN or Inf)" + where + ": the graph overflows in float32 or its weights are damaged; check the guidance scale or re-export the directory"
                          : "the forecast is not finite (NaN or Inf)" + where + ": the Taylor factors overflowed or the forecast graph is damaged; use a lower --order or a shorter --interval, or run with --no-cache");
    }
    sampler_->step(sp, i, latents_.data(), pred, wide_.data(), n_lat, half_sample_, half_latents_);
    if (!finite(latents_.data(), n_lat))
      throw RunError("the latents became non-finite (NaN or Inf) at denoising step " + std::to_string(i) + " of " + std::to_string(steps) +
                     " while the prediction was finite: the sampler's step overflowed float32; check the manifest's sampler parameters");
    if (full && !r.no_cache) {  // the Taylor update: divided differences formed in place, buffers re-labelled
      bool derive = i >= plan.derive_from && last_full >= 0;
      int orders = derive ? std::min(valid, plan.order) : 0;
      float neg_d = -static_cast<float>(orders ? i - last_full : 1);
      size_t cur = spare;
      for (int j = 0; j < orders; ++j) {
        size_t old = factors[static_cast<size_t>(j)];
        float* o = slots_[old].data.data();
        const float* c = slots_[cur].data.data();
        for (size_t k = 0; k < n_factor; ++k) {
          float v = round_factor(o[k] - c[k]);
          o[k] = round_factor(v / neg_d);
        }
        factors[static_cast<size_t>(j)] = cur;
        cur = old;
      }
      spare = factors[static_cast<size_t>(orders)];
      factors[static_cast<size_t>(orders)] = cur;
      valid = orders + 1;
      last_full = i;
      if (half_factors_)  // what the forecast graph reads: the factors' half-precision copies
        for (size_t j = 0; j <= static_cast<size_t>(orders); ++j) to_half(slots_[factors[j]].data.data(), slots_h_[factors[j]].h.data(), n_factor);
    }
  }
  res.seconds_denoise = now() - t1;

  // --- decode
  double t2 = now();
  std::vector<float> dec;
  std::vector<int64_t> dec_shape;
  if (flux) {  // tokens [r c, 4 C] -> [C, 2r, 2c]
    dec.resize(n_lat);
    dec_shape = {b, channels, 2 * rows, 2 * cols};
    for (int k = 0; k < b; ++k) {
      const float* src = latents_.data() + static_cast<size_t>(k) * per_image;
      float* dst = dec.data() + static_cast<size_t>(k) * per_image;
      for (int64_t c = 0; c < channels; ++c)
        for (int64_t y = 0; y < 2 * rows; ++y)
          for (int64_t x = 0; x < 2 * cols; ++x)
            dst[(c * 2 * rows + y) * 2 * cols + x] = src[((y / 2) * cols + x / 2) * 4 * channels + c * 4 + (y % 2) * 2 + (x % 2)];
    }
  } else {
    dec = latents_;
    dec_shape = latent_shape;
  }
  Ort::Value dec_v = tensor(dec.data(), dec_shape);
  auto image = graphs_["vae_decoder"]->run_plain({{"latents", &dec_v}}, {"image"});
  auto info = image[0].GetTensorTypeAndShapeInfo();
  auto shape = info.GetShape();
  if (shape.size() != 4 || shape[0] != b || shape[1] != 3 || shape[2] != height || shape[3] != width)
    throw EngineDirError("the VAE decoder made images of another size than the request's " + std::to_string(height) + "x" + std::to_string(width) +
                         ": the manifest's latent.vae_scale_factor does not describe its decoder; re-export the engine directory");
  const float* px = image[0].GetTensorData<float>();
  size_t plane = static_cast<size_t>(height) * static_cast<size_t>(width);
  if (!finite(px, plane * 3 * static_cast<size_t>(b)))
    throw RunError("the VAE decoder's output is not finite (NaN or Inf) although the latents were: its graph is damaged or overflows; re-export the directory");
  res.rgb.resize(plane * 3 * static_cast<size_t>(b));
  for (int k = 0; k < b; ++k)
    for (size_t p = 0; p < plane; ++p)
      for (size_t c = 0; c < 3; ++c) {
        float v = px[(static_cast<size_t>(k) * 3 + c) * plane + p] / 2.0f + 0.5f;
        v = std::min(std::max(v, 0.0f), 1.0f);
        res.rgb[(static_cast<size_t>(k) * plane + p) * 3 + c] = static_cast<uint8_t>(std::nearbyint(v * 255.0f));
      }
  res.seconds_decode = now() - t2;
  res.images = b;
  res.height = height;
  res.width = width;
  res.latents = latents_;
  res.latent_shape = latent_shape;
  res.steps = steps;
  for (int i = 0; i < steps; ++i) if (plan.full[static_cast<size_t>(i)]) res.full_steps.push_back(i);
  return res;
}

}  // namespace seer
