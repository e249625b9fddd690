// Reading a run's config from a TOML file (examples/*.toml; the keys are train/run_config.h's).
// The TOML is read by CLI11's own reader (CLI::ConfigTOML, already a dependency) into
// (section, key, values) items; this file maps them onto RunConfig so that every error says what is
// wrong, where, and what would be right:
//   "examples/x.toml: [model] unknown key 'hiden_size' (did you mean 'hidden_size'?)"
//   "examples/x.toml: unknown section [modle] (did you mean [model]?); the sections are ..."
//   "examples/x.toml: [model] num_attention_heads = 'abc' is not an integer"
//   "examples/x.toml: num_attention_heads = 6 does not divide hidden_size = 64 (...)"  (validate)
// Every error is a ConfigError (core/nn/config.h) whose where() part is the file name.
//
// Why a file of its own: CLI11 costs ~8 s per translation unit (TOOLCHAIN.md), so it lives in
// train/main.cpp and here only, and this part is a library function the tests can call, which
// main.cpp (the executable) is not.
#pragma once

#include <string>
#include <vector>

#include "train/run_config.h"

namespace moelab {

// Parses TOML text (`name` is only for the messages) onto the defaults. Does not validate().
RunConfig parse_config_toml(const std::string& text, const std::string& name);
// Reads a TOML file onto the defaults. Does not validate().
RunConfig read_config_file(const std::string& path);
// What the command line does: read the file, apply the `--set key=value` overrides in order, then
// validate() (errors prefixed with the file name, and "(after --set)" when overrides were given).
RunConfig load_config(const std::string& path, const std::vector<std::string>& overrides = {});

// A machine for `moelab plan` (examples/hardware/*.toml): every key of hardware_fields() exactly
// once in one [hardware] section, validated; errors name the file, the key and the value.
HardwareProfile parse_hardware_toml(const std::string& text, const std::string& name);
HardwareProfile read_hardware_file(const std::string& path);

// The grid files of `moelab ablate` (train/ablate.h) are read here too: parse_grid_toml and
// read_grid_file are declared in ablate.h and defined in config_file.cpp.

}  // namespace moelab
