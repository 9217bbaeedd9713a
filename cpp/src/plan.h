// Plans (docs/engine-dir.md, "Plans"): per step, full or forecast, and a forecast step's coefficient
// vector. TaylorSeer's rule schedules become plans with Taylor's k^j / j!; a directory's calibrated
// plans (schedules/NAME.json) are read and checked against the directory.
#pragma once

#include <string>
#include <vector>

#include "manifest.h"

namespace seer {

struct Plan {
  std::vector<bool> full;
  int order = 0;
  int derive_from = 0;
  std::vector<std::vector<float>> coefficients;  // per step: empty at a full step, else max_order + 1 values
  std::string name;  // a directory plan's name, empty for a rule schedule
  int steps() const { return static_cast<int>(full.size()); }
  int full_count() const;
};

// How many Taylor factors the state holds at each step (after that step's update, if full).
std::vector<int> valid_orders(const std::vector<bool>& full, int derive_from, int order);

// `style` "taylorseer" or "diffusers"; the checks and messages of runtime/schedule.py.
Plan rule_plan(int steps, bool no_cache, int interval, int warmup, int final_full, const std::string& style, int order,
               int max_order);

// schedules/NAME.json of the directory, verified (sha256) and checked (runtime/plan.py: plan_from_json).
Plan directory_plan(const Manifest& m, const std::string& name);

}  // namespace seer
