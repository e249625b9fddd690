#!/usr/bin/env python3
"""Writes the seed inputs of corpus/<target>/ (seed_* files): small valid files of each format,
made here independently of moelab's writers (safetensors and shards by hand from their specs) or
copied from examples/ and from a test run's checkpoint. libFuzzer mutates from these; the inputs it
finds are kept beside them (scripts/fuzz.sh merges them in).

  python3 tests/fuzz/make_seeds.py BUILD_DIR   (a build whose ctest has run: its checkpoints)
"""
import json
import pathlib
import shutil
import struct
import sys

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent


def out(target, name, data):
    d = HERE / "corpus" / target
    d.mkdir(parents=True, exist_ok=True)
    (d / ("seed_" + name)).write_bytes(data if isinstance(data, bytes) else data.encode())


def safetensors(tensors, metadata=None):
    header, blob = {}, b""
    if metadata:
        header["__metadata__"] = metadata
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(blob), len(blob) + len(raw)]}
        blob += raw
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + blob


def shard(magic, version, tokens, fmt):
    header = struct.pack("<3i", magic, version, len(tokens)) + b"\0" * (253 * 4)
    return header + struct.pack("<%d%s" % (len(tokens), fmt), *tokens)


def main():
    build = pathlib.Path(sys.argv[1])
    out("safetensors", "f32_bf16_i32", safetensors({
        "w": ("F32", [2, 3], struct.pack("<6f", *range(6))),
        "b": ("BF16", [4], b"\x80\x3f" * 4),
        "n": ("I32", [], struct.pack("<i", 7))}, {"format": "pt"}))
    out("safetensors", "f64_fp8", safetensors({
        "step": ("F64", [], struct.pack("<d", 3.0)), "q": ("F8_E4M3", [2, 2], b"\x38\x40\xb8\x00")}))
    out("safetensors", "empty", safetensors({}))

    out("shard", "u16", shard(20240520, 1, [i * 7 % 65 for i in range(40)], "H"))
    out("shard", "u32", shard(20240801, 7, [i * 4099 % 100000 for i in range(20)], "I"))

    out("tokenizer", "char", (build / "tests/prepare_char/tokenizer.json").read_bytes())
    out("tokenizer", "bpe", (build / "tests/export_cli/hf/tokenizer.json").read_bytes())

    for name in ["tiny", "small", "shakespeare_moe", "deepseek_v3"]:
        out("config", name, (ROOT / "examples" / (name + ".toml")).read_bytes())
    out("config", "tiny_with_overrides",
        (ROOT / "examples/tiny.toml").read_bytes() + b"\0model.hidden_size=96\ntrain.batch_size=4\ndist.zero=1")
    out("config", "hardware_h100", (ROOT / "examples/hardware/h100_sxm.toml").read_bytes())

    out("trainer_state", "with_tokenizer",
        (build / "tests/export_cli/run/step_00000042/trainer_state.json").read_bytes())
    # The loader of fuzz_trainer_state.cpp (1000 tokens, window 9, batch 2), so that restoring reaches
    # set_position and a batch.
    state = json.loads((build / "tests/export_cli/run/step_00000042/trainer_state.json").read_text())
    state["extra"] = {"nonfinite_in_a_row": 1, "train_seconds": 2.5}
    for mode, windows, pos in [("sequential", 111, {"epoch": 1, "index": 110, "step": 60}),
                               ("random", 992, {"epoch": 0, "index": 0, "step": 5})]:
        state["loader"] = {"mode": mode, "seed": 0, "shuffle": True, "window": 9, "global_batch": 2,
                           "num_windows": windows, "num_tokens": 1000, "position": pos}
        out("trainer_state", "loader_" + mode, json.dumps(state, indent=1))
    out("trainer_state", "mpi_run", (build / "tests/mpi_train/np4/step_00000020/trainer_state.json").read_bytes())


if __name__ == "__main__":
    main()
