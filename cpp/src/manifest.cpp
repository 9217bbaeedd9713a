#include "manifest.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <cmath>
#include <regex>
#include <set>

#include <openssl/evp.h>

#include "errors.h"

namespace seer {

namespace {

constexpr size_t kMaxManifestBytes = 16u << 20;
const char* kManifest = "manifest.json";

[[noreturn]] void bad(const std::string& what) {
  throw EngineDirError("manifest.json: " + what + "; re-export the engine directory");
}

std::string clip(const std::string& s, size_t n = 80) { return s.size() > n ? s.substr(0, n) + "..." : s; }

// An open file descriptor of `rel`, only if every component is a directory or (the last) a regular
// file, none a symbolic link; opened non-blocking so that a FIFO cannot hang the reader.
int open_regular(const std::string& directory, const std::string& rel) {
  if (rel.empty() || rel[0] == '/') throw EngineDirError(directory + ": '" + clip(rel) + "' is not a path inside the directory; re-export the engine directory");
  std::vector<std::string> parts;
  size_t start = 0;
  while (true) {
    size_t slash = rel.find('/', start);
    parts.push_back(rel.substr(start, slash == std::string::npos ? std::string::npos : slash - start));
    if (slash == std::string::npos) break;
    start = slash + 1;
  }
  for (const auto& p : parts)
    if (p.empty() || p == "." || p == "..")
      throw EngineDirError(directory + ": '" + clip(rel) + "' is not a path inside the directory; re-export the engine directory");
  std::string here = directory;
  for (size_t i = 0; i < parts.size(); ++i) {
    here += "/" + parts[i];
    struct stat st;
    if (lstat(here.c_str(), &st) != 0)
      throw EngineDirError(directory + " is missing " + rel + "; the directory is incomplete, re-export it");
    bool last = i + 1 == parts.size();
    if (S_ISLNK(st.st_mode))
      throw EngineDirError(rel + " in " + directory + " is a symbolic link; an engine directory holds its own files, copy them in (cp -L) or re-export");
    if (last ? !S_ISREG(st.st_mode) : !S_ISDIR(st.st_mode))
      throw EngineDirError(rel + " in " + directory + " is not a regular file; re-export the engine directory");
  }
  int fd = ::open(here.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
  struct stat st;
  if (fd < 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    if (fd >= 0) ::close(fd);
    throw EngineDirError(rel + " in " + directory + " is not a regular file; re-export the engine directory");
  }
  return fd;
}

struct Fd {
  int fd;
  ~Fd() { ::close(fd); }
};

std::string read_all(const std::string& directory, const std::string& rel, size_t limit) {
  Fd f{open_regular(directory, rel)};
  std::string data;
  char buf[1 << 16];
  while (true) {
    ssize_t n = ::read(f.fd, buf, sizeof buf);
    if (n < 0) throw EngineDirError("cannot read " + rel + " in " + directory + "; check the file");
    if (n == 0) break;
    data.append(buf, static_cast<size_t>(n));
    if (data.size() > limit)
      throw EngineDirError(directory + "/" + rel + " is larger than " + std::to_string(limit >> 20) +
                           " MiB, which no such file is; the directory is damaged or not seer's, re-export it");
  }
  return data;
}

std::string hex(const unsigned char* d, unsigned n) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (unsigned i = 0; i < n; ++i) {
    out += digits[d[i] >> 4];
    out += digits[d[i] & 15];
  }
  return out;
}

// sha256 and size of an open file, streamed.
std::string sha256_fd(int fd, uint64_t* size) {
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr);
  std::vector<char> buf(1 << 22);
  uint64_t total = 0;
  while (true) {
    ssize_t n = ::read(fd, buf.data(), buf.size());
    if (n < 0) {
      EVP_MD_CTX_free(ctx);
      throw EngineDirError("cannot read a file of the engine directory; check the disk");
    }
    if (n == 0) break;
    EVP_DigestUpdate(ctx, buf.data(), static_cast<size_t>(n));
    total += static_cast<uint64_t>(n);
  }
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned len = 0;
  EVP_DigestFinal_ex(ctx, md, &len);
  EVP_MD_CTX_free(ctx);
  *size = total;
  return hex(md, len);
}

// Typed access with the key's path in the message: a manifest is untrusted data.
const json& key(const json& j, const std::string& k, const std::string& where) {
  if (!j.is_object()) bad(where + " is not an object");
  auto it = j.find(k);
  if (it == j.end()) bad((where.empty() ? "" : where + ".") + k + " is missing");
  return *it;
}
std::string where_of(const std::string& where, const std::string& k) { return where.empty() ? k : where + "." + k; }
int64_t get_int(const json& j, const std::string& k, const std::string& where, int64_t lo, int64_t hi) {
  const json& v = key(j, k, where);
  if (!v.is_number_integer() || v.get<int64_t>() < lo || v.get<int64_t>() > hi)
    bad(where_of(where, k) + " must be an integer from " + std::to_string(lo) + " to " + std::to_string(hi));
  return v.get<int64_t>();
}
double get_num(const json& j, const std::string& k, const std::string& where) {
  const json& v = key(j, k, where);
  if (!v.is_number() || !std::isfinite(v.get<double>())) bad(where_of(where, k) + " must be a finite number");
  return v.get<double>();
}
std::string get_str(const json& j, const std::string& k, const std::string& where) {
  const json& v = key(j, k, where);
  if (!v.is_string()) bad(where_of(where, k) + " must be a string");
  return v.get<std::string>();
}

TensorSpec tensor(const json& t, const std::string& where) {
  TensorSpec s;
  s.name = get_str(t, "name", where);
  s.dtype = get_str(t, "dtype", where);
  static const std::set<std::string> dtypes{"float32", "float16", "bfloat16", "int64"};
  if (!dtypes.count(s.dtype)) bad(where + ".dtype " + clip(s.dtype) + " is not float32, float16, bfloat16 or int64");
  const json& shape = key(t, "shape", where);
  if (!shape.is_array() || shape.size() > 8) bad(where + ".shape must be a list of at most 8 entries");
  for (const auto& d : shape) {
    if (!(d.is_number_integer() && d.get<int64_t>() >= 0) && !(d.is_string() && d.get<std::string>().size() <= 200))
      bad(where + ".shape holds an entry that is neither a size nor an expression");
    s.shape.push_back(d);
  }
  return s;
}

// JSON with every object's keys unique (another reader may keep the other value) and no NaN/Infinity
// (nlohmann refuses those as invalid JSON already).
}  // namespace

json parse_strict_json(const std::string& data, const std::string& path, const std::string& fix) {
  std::vector<std::set<std::string>> seen;
  std::string twice;
  json::parser_callback_t cb = [&](int, json::parse_event_t event, json& parsed) {
    if (event == json::parse_event_t::object_start) seen.emplace_back();
    else if (event == json::parse_event_t::object_end) { if (!seen.empty()) seen.pop_back(); }
    else if (event == json::parse_event_t::key && !seen.empty()) {
      std::string k = parsed.get<std::string>();
      if (!seen.back().insert(k).second && twice.empty()) twice = k;
    }
    return true;
  };
  json j;
  try {
    j = json::parse(data, cb, true, false);
  } catch (const json::exception& e) {
    throw EngineDirError(path + " is not valid JSON (" + clip(e.what(), 200) + "); " + fix);
  }
  if (!twice.empty())
    throw EngineDirError(path + " is not valid JSON (key '" + clip(twice) + "' appears twice in one object); " + fix);
  return j;
}

namespace {

}  // namespace

const TensorSpec* GraphSpec::input(const std::string& name) const {
  for (const auto& t : inputs) if (t.name == name) return &t;
  return nullptr;
}
const TensorSpec* GraphSpec::output(const std::string& name) const {
  for (const auto& t : outputs) if (t.name == name) return &t;
  return nullptr;
}
const GraphSpec& Manifest::graph(const std::string& name) const {
  auto it = graphs.find(name);
  if (it == graphs.end()) bad("graphs." + name + " is missing");
  return it->second;
}

std::string sha256_hex(const std::string& data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned len = 0;
  EVP_Digest(data.data(), data.size(), md, &len, EVP_sha256(), nullptr);
  return hex(md, len);
}

std::string read_verified(const Manifest& m, const std::string& rel, size_t limit) {
  auto it = m.files_sha256.find(rel);
  if (it == m.files_sha256.end())
    throw EngineDirError("manifest.json names " + rel + ", which `files` does not list, so it cannot be verified; re-export the engine directory");
  std::string data = read_all(m.directory, rel, limit);
  if (sha256_hex(data) != it->second)
    throw EngineDirError(rel + " in " + m.directory + " does not match its sha256 in manifest.json; the file was altered or corrupted, re-export the directory");
  return data;
}

Manifest open_engine_dir(const std::string& directory_in, bool verify, const std::string& expect_digest_in) {
  std::string directory = directory_in;
  while (directory.size() > 1 && directory.back() == '/') directory.pop_back();
  struct stat st;
  if (stat(directory.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
    throw EngineDirError(directory + " is not a directory; pass the folder seer-export wrote");
  if (!expect_digest_in.empty() && !verify)
    throw UsageError("an expected digest pins every file through its sha256, so it cannot be combined with skipping verification; drop one of them");
  std::string mpath = directory + "/" + kManifest;
  if (lstat(mpath.c_str(), &st) != 0)
    throw EngineDirError(directory + " has no manifest.json; it is not an engine directory (run seer-export first)");
  std::string data = read_all(directory, kManifest, kMaxManifestBytes);
  Manifest m;
  m.directory = directory;
  m.digest = "sha256:" + sha256_hex(data);
  if (!expect_digest_in.empty()) {
    std::string want;
    for (char c : expect_digest_in) if (!std::isspace(static_cast<unsigned char>(c))) want += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (want.rfind("sha256:", 0) != 0) want = "sha256:" + want;
    if (!std::regex_match(want, std::regex("sha256:[0-9a-f]{64}")))
      throw UsageError("expected digest '" + clip(expect_digest_in) + "' is not a digest: give the sha256:<64 hex digits> seer-export printed");
    if (want != m.digest)
      throw EngineDirError(directory + " has manifest digest " + m.digest + ", not the expected " + want +
                           ": it is not the directory that was pinned (re-exported, rebuilt or altered); pin the new digest only after testing that directory");
  }
  json j = parse_strict_json(data, mpath, "re-export the engine directory");
  if (!j.is_object() || !j.contains("schema") || j["schema"] != "seer.engine-dir")
    throw EngineDirError(mpath + " is not a seer manifest; pass a directory seer-export wrote");
  const json& version = j["schema_version"];
  if (!version.is_number_integer() || version.get<int64_t>() < 1 || version.get<int64_t>() > kSchemaVersion) {
    bool newer = version.is_number_integer() && version.get<int64_t>() > kSchemaVersion;
    throw EngineDirError(directory + " uses engine-directory schema v" + (version.is_number() ? version.dump() : clip(version.dump())) +
                         ", this libseer reads v1 to v" + std::to_string(kSchemaVersion) + ": " +
                         (newer ? "upgrade libseer" : "re-export it with this version of seer-export"));
  }
  m.schema_version = static_cast<int>(version.get<int64_t>());
  m.raw = j;

  const json& model = key(j, "model", "");
  m.family = get_str(model, "family", "model");
  if (m.family != "flux" && m.family != "dit")
    throw EngineDirError("this engine directory's model family '" + clip(m.family) + "' is not one this libseer runs (flux, dit); upgrade libseer");
  const json& config = key(model, "config", "model");
  if (!config.is_object()) bad("model.config is not an object");
  if (m.schema_version < 4) {  // v1-v3 are FLUX directories: their guidance kind and dims are implied
    if (m.family != "flux") bad("a schema v" + std::to_string(m.schema_version) + " directory must be a FLUX one");
    bool g = config.contains("guidance") && config["guidance"].is_boolean() && config["guidance"].get<bool>();
    m.guidance = g ? "embedded" : "none";
    int64_t token = 2 * get_int(key(j, "latent", ""), "vae_scale_factor", "latent", 1, 64);
    std::string t = std::to_string(token);
    m.dims = {{"N_img", "(H // " + t + ") * (W // " + t + ")"}, {"H_latent", "H // " + t}, {"W_latent", "W // " + t}};
  } else {
    m.guidance = get_str(key(j, "guidance", ""), "kind", "guidance");
    const json& dims = key(j, "dims", "");
    if (!dims.is_object()) bad("dims is not an object");
    for (auto it = dims.begin(); it != dims.end(); ++it) {
      if (!it.value().is_string() || it.value().get<std::string>().size() > 200) bad("dims." + clip(it.key()) + " is not an expression");
      static const std::set<std::string> reserved{"B", "H", "W", "G"};
      if (reserved.count(it.key())) bad("dims redefines the request symbol " + it.key());
      m.dims.emplace_back(it.key(), it.value().get<std::string>());
    }
  }
  if (m.guidance != "none" && m.guidance != "embedded" && m.guidance != "cfg")
    throw EngineDirError("this engine directory's guidance kind '" + clip(m.guidance) + "' is not one this libseer runs (none, embedded, cfg); upgrade libseer or re-export the directory");
  std::string sampler = get_str(key(j, "sampler", ""), "type", "sampler");
  if (sampler != "flow_match_euler" && sampler != "ddim")
    throw EngineDirError("this engine directory's sampler '" + clip(sampler) + "' is not one this libseer runs (flow_match_euler, ddim); upgrade libseer or re-export the directory");

  // files: every path inside the directory, with its size and sha256
  const json& files = key(j, "files", "");
  if (!files.is_object()) bad("files is not an object");
  std::map<std::string, int64_t> sizes;
  for (auto it = files.begin(); it != files.end(); ++it) {
    std::string sha = get_str(it.value(), "sha256", "files." + clip(it.key()));
    if (!std::regex_match(sha, std::regex("[0-9a-f]{64}"))) bad("files." + clip(it.key()) + ".sha256 is not a sha256");
    m.files_sha256[it.key()] = sha;
    sizes[it.key()] = get_int(it.value(), "bytes", "files." + clip(it.key()), 0, INT64_MAX);
  }

  std::map<std::string, std::string> referenced;  // file -> the key that names it
  const json& graphs = key(j, "graphs", "");
  if (!graphs.is_object()) bad("graphs is not an object");
  for (auto it = graphs.begin(); it != graphs.end(); ++it) {
    std::string w = "graphs." + clip(it.key());
    GraphSpec g;
    g.onnx = get_str(it.value(), "onnx", w);
    referenced[g.onnx] = w + ".onnx";
    if (it.value().contains("onnx_data")) {
      g.onnx_data = get_str(it.value(), "onnx_data", w);
      referenced[g.onnx_data] = w + ".onnx_data";
    }
    if (it.value().contains("torch")) referenced[get_str(it.value(), "torch", w)] = w + ".torch";
    g.precision = m.schema_version >= 3 ? get_str(it.value(), "precision", w) : "float32";
    for (const char* kind : {"inputs", "outputs"}) {
      const json& list = key(it.value(), kind, w);
      if (!list.is_array() || list.empty() || list.size() > 64) bad(w + "." + kind + " must be a list of 1 to 64 tensors");
      std::set<std::string> names;
      for (size_t i = 0; i < list.size(); ++i) {
        TensorSpec t = tensor(list[i], w + "." + kind + "[" + std::to_string(i) + "]");
        if (!names.insert(t.name).second) bad(w + "." + kind + " names " + clip(t.name) + " twice");
        (std::string(kind) == "inputs" ? g.inputs : g.outputs).push_back(t);
      }
    }
    m.graphs[it.key()] = g;
  }
  std::vector<std::string> needed = {"full", "forecast", "vae_decoder"};
  if (m.family == "flux") needed.insert(needed.end(), {"clip", "t5"});
  for (const auto& n : needed)
    if (!m.graphs.count(n)) bad("graphs." + n + " is missing: a " + m.family + " directory has it");

  const json& cache = key(j, "cache", "");
  m.granularity = get_str(cache, "granularity", "cache");
  if (m.granularity != "modules" && m.granularity != "lite") bad("cache.granularity must be modules or lite");
  m.max_order = static_cast<int>(get_int(cache, "max_order", "cache", 0, 16));
  const json& defaults = key(j, "defaults", "");
  m.default_height = static_cast<int>(get_int(defaults, "height", "defaults", 1, 1 << 16));
  m.default_width = static_cast<int>(get_int(defaults, "width", "defaults", 1, 1 << 16));
  m.default_steps = static_cast<int>(get_int(defaults, "steps", "defaults", 1, 100000));
  m.default_guidance = get_num(defaults, "guidance_scale", "defaults");
  const json& sch = key(defaults, "schedule", "defaults");
  m.default_style = get_str(sch, "style", "defaults.schedule");
  m.default_interval = static_cast<int>(get_int(sch, "interval", "defaults.schedule", 1, 100000));
  m.default_order = static_cast<int>(get_int(sch, "order", "defaults.schedule", 0, m.max_order));
  m.default_warmup = static_cast<int>(get_int(sch, "warmup", "defaults.schedule", 1, 100000));
  m.default_final_full = static_cast<int>(get_int(sch, "final_full", "defaults.schedule", 0, 100000));
  const json& latent = key(j, "latent", "");
  m.latent_channels = static_cast<int>(get_int(latent, "channels", "latent", 1, 4096));
  m.vae_scale_factor = static_cast<int>(get_int(latent, "vae_scale_factor", "latent", 1, 64));

  // the config values the runtime reads, typed and bounded here, and the sections agreeing with each
  // other as engines/schema.py requires, so that nothing later meets a surprise
  const int64_t in_ch = get_int(config, "in_channels", "model.config", 1, 1 << 16);
  const int64_t out_ch = get_int(config, "out_channels", "model.config", 1, 1 << 16);
  const int64_t dim = get_int(config, "dim", "model.config", 1, 1 << 20), head = get_int(config, "head_dim", "model.config", 1, 1 << 16);
  if (dim % head) bad("model.config.dim is not a multiple of head_dim");
  if (m.family == "flux") {
    if (sampler != "flow_match_euler") bad("a flux directory's sampler is flow_match_euler, not " + clip(sampler));
    if (m.guidance == "cfg") bad("a flux directory's guidance kind is none or embedded, not cfg");
    const json& g = key(config, "guidance", "model.config");
    if (!g.is_boolean() || (m.guidance == "embedded") != g.get<bool>())
      bad("guidance.kind disagrees with model.config.guidance: a FLUX transformer with a guidance input takes embedded guidance, one without takes none");
    const json& axes = key(config, "axes_dims_rope", "model.config");
    if (!axes.is_array() || axes.empty() || axes.size() > 3) bad("model.config.axes_dims_rope must be 1 to 3 axis widths");
    int64_t total = 0;
    for (const auto& a : axes) {
      if (!a.is_number_integer() || a.get<int64_t>() < 2 || a.get<int64_t>() > 4096 || a.get<int64_t>() % 2) bad("model.config.axes_dims_rope must hold even widths from 2 to 4096");
      total += a.get<int64_t>();
    }
    if (total != head) bad("model.config.axes_dims_rope does not add up to head_dim");
    if (get_num(config, "rope_theta", "model.config") <= 0) bad("model.config.rope_theta must be positive");
    const json& latent = key(j, "latent", "");
    if (get_int(latent, "packed_channels", "latent", 1, 1 << 16) != 4 * get_int(latent, "channels", "latent", 1, 4096) || in_ch != 4 * get_int(latent, "channels", "latent", 1, 4096) || out_ch != in_ch)
      bad("latent.packed_channels must be 4 x latent.channels and equal model.config.in_channels and out_channels");
  } else {
    if (sampler != "ddim") bad("a dit directory's sampler is ddim, not " + clip(sampler));
    if (m.guidance == "embedded") bad("a dit directory's guidance kind is none or cfg, not embedded");
    int64_t s = get_int(config, "sample_size", "model.config", 1, 4096);
    int64_t p = get_int(config, "patch_size", "model.config", 1, 4096);
    if (s % p) bad("model.config.sample_size must be a multiple of patch_size");
    int64_t channels = get_int(key(j, "latent", ""), "channels", "latent", 1, 4096);
    if (in_ch != channels || (out_ch != in_ch && out_ch != 2 * in_ch))
      bad("model.config in_channels / out_channels do not fit latent.channels (out is in, or twice in with a learned variance)");
  }
  if (m.family == "flux") {
    const json& text = key(j, "text", "");
    for (const char* enc : {"clip", "t5"}) {
      const json& e = key(text, enc, "text");
      TextEncoder t;
      t.tokenizer = get_str(e, "tokenizer", std::string("text.") + enc);
      t.max_length = get_int(e, "max_length", std::string("text.") + enc, 1, 1 << 16);
      t.pad_id = get_int(e, "pad_id", std::string("text.") + enc, 0, INT32_MAX);
      referenced[t.tokenizer] = std::string("text.") + enc + ".tokenizer";
      m.text[enc] = t;
    }
  } else {
    const json& classes = key(j, "classes", "");
    m.class_count = static_cast<int>(get_int(classes, "count", "classes", 1, 1 << 24));
    if (classes.contains("null_class") && !classes["null_class"].is_null())
      m.null_class = get_int(classes, "null_class", "classes", m.class_count, INT32_MAX);  // after the classes
    if (get_int(config, "num_classes", "model.config", 1, 1 << 24) != m.class_count) bad("classes.count differs from model.config.num_classes");
    if (classes.contains("labels")) {
      const json& labels = classes["labels"];
      if (!labels.is_object()) bad("classes.labels is not an object");
      for (auto it = labels.begin(); it != labels.end(); ++it) {
        if (!std::regex_match(it.key(), std::regex("[0-9]{1,9}")) || std::stoll(it.key()) >= m.class_count || !it.value().is_string())
          bad("classes.labels." + clip(it.key()) + " is not a class id with a name");
        m.labels[std::stoll(it.key())] = it.value().get<std::string>();
      }
    }
    if (m.guidance == "cfg" && m.null_class < 0) bad("guidance cfg needs classes.null_class");
  }
  if (j.contains("schedules")) {
    const json& s = j["schedules"];
    if (!s.is_object()) bad("schedules is not an object");
    for (auto it = s.begin(); it != s.end(); ++it) {
      std::string f = get_str(it.value(), "file", "schedules." + clip(it.key()));
      if (!std::regex_match(it.key(), std::regex("[A-Za-z0-9][A-Za-z0-9._-]{0,63}")) || f != "schedules/" + it.key() + ".json")
        bad("schedules." + clip(it.key()) + " is not a plan name with its file schedules/<name>.json");
      m.schedules[it.key()] = f;
      referenced[f] = "schedules." + it.key() + ".file";
    }
  }
  if (j.contains("quantization") && j["quantization"].is_object())
    for (auto it = j["quantization"].begin(); it != j["quantization"].end(); ++it)
      if (it.value().is_object() && it.value().contains("calibration") && it.value()["calibration"].is_string())
        referenced[it.value()["calibration"].get<std::string>()] = "quantization." + it.key() + ".calibration";
  if (j.contains("tensorrt") && j["tensorrt"].is_object() && j["tensorrt"].contains("plans") && j["tensorrt"]["plans"].is_object())
    for (auto it = j["tensorrt"]["plans"].begin(); it != j["tensorrt"]["plans"].end(); ++it)
      if (it.value().is_object() && it.value().contains("plan") && it.value()["plan"].is_string())
        referenced[it.value()["plan"].get<std::string>()] = "tensorrt.plans." + it.key() + ".plan";

  for (const auto& [rel, k] : referenced)
    if (!m.files_sha256.count(rel))
      throw EngineDirError(mpath + ": " + k + " names " + clip(rel) + ", which `files` does not list, so it cannot be verified; re-export the engine directory");
  for (const auto& [rel, sha] : m.files_sha256) {
    Fd f{open_regular(directory, rel)};
    struct stat fs;
    fstat(f.fd, &fs);
    if (static_cast<int64_t>(fs.st_size) != sizes[rel])
      throw EngineDirError(rel + " in " + directory + " has changed size since export; re-export the directory");
    if (verify) {
      uint64_t n = 0;
      if (sha256_fd(f.fd, &n) != sha || static_cast<int64_t>(n) != sizes[rel])
        throw EngineDirError(rel + " in " + directory + " does not match its sha256 in manifest.json; the file was altered or corrupted, re-export the directory");
    }
  }
  return m;
}

// ------------------------------------------------------------------------------------------------
// Shape expressions: integers, symbols, + - * // and brackets (a manifest is data, never code).

namespace {

struct DimParser {
  const std::string& s;
  const std::map<std::string, int64_t>& values;
  size_t i = 0;
  int depth = 0;
  [[noreturn]] void fail() { throw std::invalid_argument("dim"); }
  void ws() { while (i < s.size() && s[i] == ' ') ++i; }
  int64_t atom() {
    ws();
    if (i >= s.size()) fail();
    if (s[i] == '(') {
      if (++depth > 32) fail();
      ++i;
      int64_t v = expr();
      ws();
      if (i >= s.size() || s[i] != ')') fail();
      ++i;
      --depth;
      return v;
    }
    if (std::isdigit(static_cast<unsigned char>(s[i]))) {
      int64_t v = 0;
      while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) {
        if (v > (INT64_MAX - 9) / 10) fail();
        v = v * 10 + (s[i++] - '0');
      }
      return v;
    }
    size_t start = i;
    while (i < s.size() && (std::isalnum(static_cast<unsigned char>(s[i])) || s[i] == '_')) ++i;
    auto it = values.find(s.substr(start, i - start));
    if (start == i || it == values.end()) fail();
    return it->second;
  }
  int64_t term() {
    int64_t v = atom();
    while (true) {
      ws();
      if (i < s.size() && s[i] == '*') {
        ++i;
        int64_t r = atom();
        if (__builtin_mul_overflow(v, r, &v)) fail();
      } else if (i + 1 < s.size() && s[i] == '/' && s[i + 1] == '/') {
        i += 2;
        int64_t r = atom();
        if (r <= 0) fail();
        int64_t q = v / r;
        if ((v % r != 0) && (v < 0)) --q;  // floor division, as Python's //
        v = q;
      } else {
        return v;
      }
    }
  }
  int64_t expr() {
    int64_t v = term();
    while (true) {
      ws();
      if (i < s.size() && (s[i] == '+' || s[i] == '-')) {
        char op = s[i++];
        int64_t r = term();
        if (op == '+' ? __builtin_add_overflow(v, r, &v) : __builtin_sub_overflow(v, r, &v)) fail();
      } else {
        return v;
      }
    }
  }
};

}  // namespace

int64_t eval_dim(const json& dim, const std::map<std::string, int64_t>& values) {
  if (dim.is_number_integer()) return dim.get<int64_t>();
  try {
    if (!dim.is_string()) throw std::invalid_argument("dim");
    const std::string s = dim.get<std::string>();
    DimParser p{s, values};
    int64_t v = p.expr();
    p.ws();
    if (p.i != s.size()) throw std::invalid_argument("dim");
    return v;
  } catch (const std::invalid_argument&) {
    throw EngineDirError("cannot read the symbolic dimension '" + clip(dim.dump()) + "' of this manifest; re-export the directory");
  }
}

std::map<std::string, int64_t> dim_values(const Manifest& m, int64_t batch, int64_t height, int64_t width, int64_t g) {
  std::map<std::string, int64_t> v{{"B", batch}, {"H", height}, {"W", width}, {"G", g}};
  for (const auto& [name, expression] : m.dims) v[name] = eval_dim(json(expression), v);
  return v;
}

std::vector<int64_t> shape_of(const TensorSpec& t, const std::map<std::string, int64_t>& values) {
  std::vector<int64_t> out;
  for (const auto& d : t.shape) {
    int64_t v = eval_dim(d, values);
    if (v < 0 || v > (int64_t(1) << 40)) throw EngineDirError("the manifest's shape of " + t.name + " gives " + std::to_string(v) + " for this request; re-export the directory");
    out.push_back(v);
  }
  return out;
}

}  // namespace seer
