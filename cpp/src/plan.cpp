#include "plan.h"

#include <cmath>
#include <regex>

#include "errors.h"

namespace seer {

int Plan::full_count() const {
  int n = 0;
  for (bool f : full) n += f;
  return n;
}

std::vector<int> valid_orders(const std::vector<bool>& full, int derive_from, int order) {
  std::vector<int> out;
  int valid = 0, last = -1;
  for (size_t i = 0; i < full.size(); ++i) {
    if (full[i]) {
      bool derive = static_cast<int>(i) >= derive_from && last >= 0;
      int orders = derive ? std::min(valid, order) : 0;
      valid = orders + 1;
      last = static_cast<int>(i);
    }
    out.push_back(valid);
  }
  return out;
}

namespace {

double factorial(int i) {
  double f = 1;
  for (int k = 2; k <= i; ++k) f *= k;
  return f;
}

std::string num(int v) { return std::to_string(v); }

}  // namespace

Plan rule_plan(int steps, bool no_cache, int interval, int warmup, int final_full, const std::string& style, int order,
               int max_order) {
  if (steps < 1) throw UsageError("steps must be at least 1 (got " + num(steps) + "); FLUX.1-dev uses 28 to 50");
  if (order < 0) throw UsageError("order must be 0 or more (got " + num(order) + "); 0 reuses the last full step's features");
  if (order > max_order)
    throw UsageError("order " + num(order) + " is above the " + num(max_order) + " this engine directory was exported for; use order " +
                     num(max_order) + " or re-export with --max-order " + num(order));
  Plan p;
  p.order = order;
  if (no_cache) {
    p.full.assign(static_cast<size_t>(steps), true);
  } else {
    if (interval < 1) throw UsageError("interval must be at least 1 (got " + num(interval) + "); 1 runs every step in full");
    if (warmup < 1 || warmup > steps)
      throw UsageError("warm-up must be between 1 and the number of steps (" + num(steps) + "), got " + num(warmup) +
                       ": the first step is always full because nothing can be forecast before it");
    if (final_full < 0 || final_full > steps)
      throw UsageError("final full steps must be between 0 and " + num(steps) + " (got " + num(final_full) + "); pass --final-full in that range");
    for (int i = 0; i < steps; ++i) {
      bool f;
      if (style == "taylorseer") f = i < warmup || (i - (warmup - 1)) % interval == 0 || i >= steps - final_full;
      else if (style == "diffusers") f = i < warmup || ((i - warmup - 1) % interval + interval) % interval == 0 || (final_full && i >= steps - final_full);
      else throw UsageError("unknown schedule style '" + style + "'; choose taylorseer or diffusers");
      p.full.push_back(f);
    }
    p.derive_from = style == "taylorseer" ? warmup - 1 : 0;
  }
  std::vector<int> valid = valid_orders(p.full, p.derive_from, order);
  int last = 0;
  for (int i = 0; i < steps; ++i) {
    if (p.full[static_cast<size_t>(i)]) {
      last = i;
      p.coefficients.emplace_back();
      continue;
    }
    std::vector<float> c(static_cast<size_t>(max_order + 1), 0.0f);
    int k = i - last;
    for (int j = 0; j < std::min(valid[static_cast<size_t>(i)], max_order + 1); ++j)
      c[static_cast<size_t>(j)] = static_cast<float>(std::pow(static_cast<double>(k), j) / factorial(j));
    p.coefficients.push_back(c);
  }
  return p;
}

Plan directory_plan(const Manifest& m, const std::string& name) {
  if (!std::regex_match(name, std::regex("[A-Za-z0-9][A-Za-z0-9._-]{0,63}")))
    throw UsageError("plan name '" + name.substr(0, 80) + "' is not a name: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit (e.g. k10)");
  auto it = m.schedules.find(name);
  if (it == m.schedules.end()) {
    std::string known;
    for (const auto& [k, v] : m.schedules) known += (known.empty() ? "" : ", ") + k;
    throw UsageError(m.directory + " has no plan named '" + name + "' (it holds: " + (known.empty() ? "none" : known) +
                     "); pick one of those, or make it with seer-calibrate " + m.directory + " --name " + name);
  }
  const std::string where = "plan " + name + " (" + m.directory + "/" + it->second + ")";
  auto bad = [&](const std::string& what) {
    throw EngineDirError(where + ": " + what + "; calibrate it again (seer-calibrate) or remove it from the directory");
  };
  std::string data = read_verified(m, it->second, 4u << 20);
  json j = parse_strict_json(data, where, "calibrate it again");
  if (!j.is_object() || !j.contains("format") || j["format"] != "seer.plan") bad("it is not a seer plan");
  if (!j.contains("version") || j["version"] != 1) bad("plan format version " + (j.contains("version") ? j["version"].dump() : std::string("None")) + ", this libseer reads version 1");
  auto whole = [&](const char* k, int top, int lo, int def, bool required) {
    if (!j.contains(k)) { if (required) bad(std::string(k) + " is None, not a whole number from " + num(lo) + " to " + num(top)); return def; }
    const json& v = j[k];
    if (!v.is_number_integer() || v.get<int64_t>() < lo || v.get<int64_t>() > top)
      bad(std::string(k) + " is " + v.dump().substr(0, 40) + ", not a whole number from " + num(lo) + " to " + num(top));
    return static_cast<int>(v.get<int64_t>());
  };
  Plan p;
  p.name = name;
  int steps = whole("steps", 1000, 1, 0, true);
  p.order = whole("order", m.max_order, 0, 0, true);
  p.derive_from = whole("derive_from", 1000, 0, 0, false);
  const json& rows = j.contains("coefficients") ? j["coefficients"] : json();
  if (!rows.is_array() || static_cast<int>(rows.size()) != steps)
    bad("it has " + (rows.is_array() ? num(static_cast<int>(rows.size())) : std::string("no")) + " coefficient rows for " + num(steps) + " steps");
  size_t slots = static_cast<size_t>(m.max_order + 1);
  for (const auto& r : rows) p.full.push_back(r.is_null());
  if (!p.full[0]) bad("its first step is not full (nothing can be forecast before the first full step)");
  std::vector<int> valid = valid_orders(p.full, p.derive_from, p.order);
  for (int i = 0; i < steps; ++i) {
    const json& row = rows[static_cast<size_t>(i)];
    if (row.is_null()) { p.coefficients.emplace_back(); continue; }
    bool ok = row.is_array() && row.size() == slots;
    std::vector<float> c;
    if (ok)
      for (const auto& v : row) {
        if (!v.is_number() || !std::isfinite(v.get<double>()) || std::fabs(v.get<double>()) > 1e6) { ok = false; break; }
        c.push_back(static_cast<float>(v.get<double>()));
      }
    if (!ok) bad("step " + num(i) + "'s coefficients are not " + num(static_cast<int>(slots)) + " finite numbers of at most 1e+06");
    for (size_t q = static_cast<size_t>(valid[static_cast<size_t>(i)]); q < slots; ++q)
      if (row[q].get<double>() != 0)
        bad("step " + num(i) + " weights Taylor orders the state does not hold there (it holds " + num(valid[static_cast<size_t>(i)]) + ")");
    p.coefficients.push_back(c);
  }
  if (j.contains("full_steps") && !j["full_steps"].is_null()) {
    json expected = json::array();
    for (int i = 0; i < steps; ++i) if (p.full[static_cast<size_t>(i)]) expected.push_back(i);
    if (j["full_steps"] != expected) bad("its full_steps do not match its coefficient rows");
  }
  const json* graphs = nullptr;
  if (j.contains("provenance") && j["provenance"].is_object() && j["provenance"].contains("graphs")) graphs = &j["provenance"]["graphs"];
  bool same = graphs && graphs->is_object() && graphs->size() == 2;
  for (const char* g : {"full", "forecast"}) {
    if (!same) break;
    auto f = m.files_sha256.find(m.graph(g).onnx);
    same = graphs->contains(g) && (*graphs)[g].is_string() && f != m.files_sha256.end() && (*graphs)[g].get<std::string>() == f->second;
  }
  if (!same)
    throw EngineDirError(where + " was calibrated on other graphs than this directory's (the sha256 of its full and forecast graphs differ), so its weights do not fit them; calibrate it again on this directory (seer-calibrate)");
  return p;
}

}  // namespace seer
