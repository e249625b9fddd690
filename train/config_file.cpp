// TOML config files through CLI11's reader; see config_file.h.
#include "train/config_file.h"

#include <CLI/Config.hpp>
#include <fstream>
#include <set>
#include <sstream>

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
