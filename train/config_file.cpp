// TOML config files through CLI11's reader; see config_file.h.
#include "train/config_file.h"

#include <CLI/Config.hpp>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "train/ablate.h"

namespace moelab {

namespace {

std::string join_values(const std::vector<std::string>& values) {
  std::string s = "[";
  for (size_t i = 0; i < values.size(); ++i) s += (i ? ", " : "") + values[i];
  return s + "]";
}

std::string dotted(const std::vector<std::string>& parts) {
  std::string s;
  for (size_t i = 0; i < parts.size(); ++i) s += (i ? "." : "") + parts[i];
  return s;
}

// Maps CLI11's items onto a RunConfig. CLI11 marks the start and end of each [section] with items
// named "++" and "--" (no values); a key outside any section has no parents; a dotted key or a
// [a.b] section has several parents.
RunConfig map_items(const std::vector<CLI::ConfigItem>& items) {
  RunConfig cfg;
  std::set<std::string> seen;
  for (const CLI::ConfigItem& item : items) {
    const bool marker = item.name == "++" || item.name == "--";
    if (marker) {
      if (item.name == "++") check_config_section(dotted(item.parents));  // [model.sub] is unknown too
      continue;
    }
    if (item.parents.empty()) {
      std::string hint = "; put it under [model] or [train]";
      if (has_config_key(item.name)) hint = "; put it under [model]";
      else if (has_train_key(item.name)) hint = "; put it under [train]";
      throw ConfigError("key '" + item.name + "' is outside a section" + hint);
    }
    const std::string& section = item.parents[0];
    std::vector<std::string> key_parts(item.parents.begin() + 1, item.parents.end());
    key_parts.push_back(item.name);
    const std::string key = dotted(key_parts);
    if (item.inputs.size() != 1)
      throw ConfigError("[" + section + "] " + key + " = " + join_values(item.inputs) +
                        " must be a single value, not a list (or is the key written twice?)");
    if (!seen.insert(section + "." + key).second) throw ConfigError("[" + section + "] " + key + " is set twice");
    set_run_key(cfg, section, key, item.inputs[0]);
  }
  return cfg;
}

// CLI11's reader takes "[model]  # a comment" for a key named "[model]": drop comments after a
// section header first.
std::string strip_header_comments(const std::string& text) {
  std::istringstream in(text);
  std::string out, line;
  while (std::getline(in, line)) {
    const size_t first = line.find_first_not_of(" \t");
    const size_t hash = line.find('#');
    if (first != std::string::npos && line[first] == '[' && hash != std::string::npos) {
      line.erase(hash);
      line.erase(line.find_last_not_of(" \t") + 1);
    }
    out += line + "\n";
  }
  return out;
}

}  // namespace

RunConfig parse_config_toml(const std::string& text, const std::string& name) {
  try {
    std::istringstream in(strip_header_comments(text));
    return map_items(CLI::ConfigTOML{}.from_config(in));
  } catch (const ConfigError& e) {
    throw ConfigError(e.reason(), name);
  } catch (const CLI::Error& e) {
    throw ConfigError(std::string("not a readable TOML file: ") + e.what(), name);
  }
}

namespace {
std::string read_text(const std::string& path, const char* what) {
  std::ifstream in(path);
  if (!in) throw ConfigError(std::string("cannot open the ") + what, path);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}
}  // namespace

RunConfig read_config_file(const std::string& path) { return parse_config_toml(read_text(path, "config file"), path); }

HardwareProfile parse_hardware_toml(const std::string& text, const std::string& name) {
  try {
    std::istringstream in(strip_header_comments(text));
    HardwareProfile hw;
    std::set<std::string> seen;
    for (const CLI::ConfigItem& item : CLI::ConfigTOML{}.from_config(in)) {
      if (item.name == "++" || item.name == "--") {
        if (item.name == "++" && dotted(item.parents) != "hardware")
          throw ConfigError("unknown section [" + dotted(item.parents) + "] (a hardware file has one section, [hardware])");
        continue;
      }
      if (item.parents.size() != 1) throw ConfigError("key '" + item.name + "' is outside the [hardware] section");
      if (item.inputs.size() != 1) throw ConfigError("[hardware] " + item.name + " must be a single value, not a list (or is the key written twice?)");
      if (!seen.insert(item.name).second) throw ConfigError("[hardware] " + item.name + " is set twice");
      try {
        set_hardware_key(hw, item.name, item.inputs[0]);
      } catch (const ConfigError& e) {
        throw ConfigError("[hardware] " + e.reason());
      }
    }
    for (const HardwareField& f : hardware_fields())
      if (!seen.count(f.name)) throw ConfigError(std::string("[hardware] ") + f.name + " is missing (" + f.help + ")");
    try {
      hw.validate();
    } catch (const ConfigError& e) {
      throw ConfigError("[hardware] " + e.reason());
    }
    return hw;
  } catch (const ConfigError& e) {
    throw ConfigError(e.reason(), name);
  } catch (const CLI::Error& e) {
    throw ConfigError(std::string("not a readable TOML file: ") + e.what(), name);
  }
}

HardwareProfile read_hardware_file(const std::string& path) {
  return parse_hardware_toml(read_text(path, "hardware file"), path);
}

namespace {

double grid_number(const std::string& key, const std::string& value) {
  char* end = nullptr;
  const double v = std::strtod(value.c_str(), &end);
  if (value.empty() || *end != '\0' || !(v > 0) || !std::isfinite(v))
    throw ConfigError("[grid] " + key + " = '" + value + "', expected a number > 0");
  return v;
}

}  // namespace

AblationGrid parse_grid_toml(const std::string& text, const std::string& name, const std::string& dir) {
  const std::pair<const char*, BudgetKind> budgets[] = {
      {"steps", BudgetKind::Steps}, {"tokens", BudgetKind::Tokens}, {"seconds", BudgetKind::Seconds},
      {"flops", BudgetKind::Flops}};
  try {
    std::istringstream in(strip_header_comments(text));
    AblationGrid g;
    g.file = name;
    std::set<std::string> seen;
    int budgets_given = 0;
    for (const CLI::ConfigItem& item : CLI::ConfigTOML{}.from_config(in)) {
      const std::string section = dotted(item.parents);
      const bool arm = item.parents.size() == 2 && item.parents[0] == "arm";
      if (item.name == "++" || item.name == "--") {  // [arm.x] opens [arm], then [arm.x]
        if (item.name == "++" && section != "grid" && section != "arm" && !arm)
          throw ConfigError("unknown section [" + section + "] (a grid has [grid] and one [arm.<name>] per arm)");
        if (item.name == "++" && arm) g.arms.push_back({item.parents[1], {}});
        continue;
      }
      if (section != "grid" && !arm)
        throw ConfigError("key '" + item.name + "' " + (section.empty() ? "outside a section" : "in [" + section + "]") +
                          ": a grid's keys are in [grid] or an [arm.<name>]");
      if (!seen.insert(section + "." + item.name).second) throw ConfigError("[" + section + "] " + item.name + " is set twice");
      std::vector<std::string> values;
      for (const std::string& v : item.inputs)
        if (!v.empty()) values.push_back(v);
      if (section != "grid") {  // [arm.<name>]
        if (item.name != "set") throw ConfigError("[" + section + "] unknown key '" + item.name + "' (an arm has `set`)");
        g.arms.back().overrides = values;
        continue;
      }
      auto single = [&] {
        if (values.size() != 1) throw ConfigError("[grid] " + item.name + " must be a single value");
        return values[0];
      };
      if (item.name == "base") {
        const std::string base = single();
        g.base = (base.empty() || base[0] == '/' || dir.empty()) ? base : dir + "/" + base;
      } else if (item.name == "set") {
        g.overrides = values;
      } else if (item.name == "seeds") {
        for (const std::string& v : values) {
          char* end = nullptr;
          const unsigned long long seed = std::strtoull(v.c_str(), &end, 10);
          if (v.empty() || *end != '\0' || v[0] == '-')
            throw ConfigError("[grid] seeds: '" + v + "' is not a seed (an integer >= 0)");
          g.seeds.push_back(seed);
        }
      } else {
        bool budget = false;
        for (const auto& [key, kind] : budgets)
          if (item.name == key) {
            g.budget = kind;
            g.budget_value = grid_number(key, single());
            budget = true;
            ++budgets_given;
          }
        if (!budget)
          throw ConfigError("[grid] unknown key '" + item.name +
                            "' (the keys are base, seeds, set and one budget: steps, tokens, seconds or flops)");
      }
    }
    if (g.base.empty()) throw ConfigError("[grid] base is missing (the config file every arm starts from)");
    if (g.seeds.empty()) throw ConfigError("[grid] seeds is missing (e.g. seeds = [1, 2, 3])");
    if (std::set<uint64_t>(g.seeds.begin(), g.seeds.end()).size() != g.seeds.size())
      throw ConfigError("[grid] seeds repeats a seed");
    if (budgets_given != 1)
      throw ConfigError("[grid] needs exactly one budget: steps, tokens, seconds or flops (" +
                        std::to_string(budgets_given) + " given)");
    if (g.budget == BudgetKind::Steps && g.budget_value != std::floor(g.budget_value))
      throw ConfigError("[grid] steps = " + format_config_number(g.budget_value) + " is not a whole number");
    if (g.arms.empty()) throw ConfigError("no [arm.<name>] section: a grid needs at least one arm");
    std::set<std::string> names;
    for (const AblationArm& a : g.arms) {
      if (!names.insert(a.name).second) throw ConfigError("arm '" + a.name + "' is defined twice");
      for (char c : a.name)
        if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_' && c != '-')
          throw ConfigError("arm '" + a.name + "': a name of letters, digits, '_' and '-' (it names a directory)");
    }
    return g;
  } catch (const ConfigError& e) {
    throw ConfigError(e.reason(), name);
  } catch (const CLI::Error& e) {
    throw ConfigError(std::string("not a readable TOML file: ") + e.what(), name);
  }
}

AblationGrid read_grid_file(const std::string& path) {
  const std::string dir = std::filesystem::path(path).parent_path().string();
  AblationGrid g = parse_grid_toml(read_text(path, "grid file"), path, dir);
  for (const AblationArm& arm : g.arms) {  // every arm's config, before any run starts
    std::vector<std::string> all = g.overrides;
    all.insert(all.end(), arm.overrides.begin(), arm.overrides.end());
    try {
      load_config(g.base, all);
    } catch (const Error& e) {
      throw ConfigError("arm '" + arm.name + "': " + e.what(), path);
    }
  }
  return g;
}

RunConfig load_config(const std::string& path, const std::vector<std::string>& overrides) {
  RunConfig cfg = read_config_file(path);
  for (const std::string& o : overrides) apply_override(cfg, o);
  try {
    cfg.validate();
  } catch (const ConfigError& e) {
    throw ConfigError(e.reason(), overrides.empty() ? path : path + " (after --set)");
  }
  return cfg;
}

}  // namespace moelab
