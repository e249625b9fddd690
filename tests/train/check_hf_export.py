#!/usr/bin/env python3
"""Checks `moelab export` with the Python `safetensors` package (PyPI) and numpy.

For a few small random models (tests/train/tools/export_tool.cpp writes each as a checkpoint), runs
`moelab export --ckpt RUN_DIR --out HF_DIR --dtype f32|bf16` and checks the Hugging Face directory:
  - model.safetensors loads with safetensors (safetensors.numpy.load_file for f32;
    safetensors.deserialize for bf16, which numpy has no dtype for), metadata {"format": "pt"};
  - its names, shapes, dtypes and values equal the checkpoint's own model.safetensors, read by the
    project's numpy-only reader (tests/reference/safetensors_io.py): f32 bit for bit, bf16 the
    round-to-nearest-even value computed here in numpy, every mlp.gate.e_score_correction_bias in
    f32; the only extra tensors allowed are zero router biases of a run without aux_free_bias; no
    lm_head.weight when the embeddings are tied; MTP module k as model.layers.{L+k-1}, with copies of
    embed_tokens and the LM head (shared_head.head) as DeepSeek-V3's release stores them;
  - config.json: model_type deepseek_v3, DeepseekV3ForCausalLM, every HF key of MODEL.md, values
    equal to the checkpoint's config (trainer_state.json), bos/eos = the tokenizer's <|endoftext|>;
  - tokenizer.json is the checkpoint's tokenizer, tokenizer_config.json names PreTrainedTokenizerFast;
    generation_config.json is there;
  - an MHA model is refused with an error naming `attention = mha`, leaving no output directory.

Exit status: 0 pass, 1 failure, 77 skipped (safetensors or numpy not installed:
    python3 -m pip install safetensors numpy).

    python3 tests/train/check_hf_export.py --tool build/tests/moelab_export_tool \\
        --moelab build/train/moelab --workdir /tmp/hf_export_check
"""
import argparse
import json
import os
import shutil
import subprocess
import sys

SKIP = 77

try:
    import numpy as np
    import safetensors
    from safetensors.numpy import load_file
except ImportError as e:
    print(f"SKIP: {e.name} is not installed (python3 -m pip install safetensors numpy)")
    sys.exit(SKIP)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "reference"))
import safetensors_io  # noqa: E402  (the project's numpy-only reader: the reference side)

# The HF config keys MODEL.md names, and the rest of DeepSeek-V3's config.json.
MODEL_MD_KEYS = [
    "vocab_size", "hidden_size", "intermediate_size", "moe_intermediate_size", "num_hidden_layers",
    "num_nextn_predict_layers", "num_attention_heads", "num_key_value_heads", "n_shared_experts",
    "n_routed_experts", "routed_scaling_factor", "kv_lora_rank", "q_lora_rank", "qk_rope_head_dim",
    "v_head_dim", "qk_nope_head_dim", "n_group", "topk_group", "num_experts_per_tok", "first_k_dense_replace",
    "norm_topk_prob", "scoring_func", "rms_norm_eps", "rope_theta", "tie_word_embeddings",
]
V3_KEYS = [
    "topk_method", "aux_loss_alpha", "seq_aux", "hidden_act", "max_position_embeddings", "initializer_range",
    "rope_scaling", "attention_bias", "attention_dropout", "bos_token_id", "eos_token_id", "torch_dtype",
    "use_cache", "moe_layer_freq", "ep_size", "pretraining_tp",
]
BIAS = ".mlp.gate.e_score_correction_bias"

failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print(f"FAIL: {what}")
    return cond


def run(*args, expect_ok=True):
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True)
    if expect_ok and r.returncode != 0:
        sys.exit(f"FAIL: {' '.join(map(str, args))}\n{r.stdout}{r.stderr}")
    return r


def bf16_round(a):
    """float32 -> bf16 bits, round to nearest even (NaN stays a quiet NaN)."""
    bits = np.ascontiguousarray(a, dtype="<f4").view("<u4").astype(np.uint64)
    out = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype("<u2")
    out[np.isnan(a)] = (bits[np.isnan(a)] >> 16).astype("<u2") | 0x0040
    return out


def load_export(path, dtype):
    """{name: (safetensors dtype, array)}: f32 as float32, bf16 as its uint16 bits."""
    with safetensors.safe_open(path, framework="np") as f:
        check(f.metadata() == {"format": "pt"}, f"{path}: metadata {f.metadata()}, expected {{'format': 'pt'}}")
    if dtype == "f32":
        return {k: ("F32" if v.dtype == np.float32 else str(v.dtype), v) for k, v in load_file(path).items()}
    with open(path, "rb") as f:
        flat = safetensors.deserialize(f.read())
    out = {}
    for name, v in flat:
        np_dtype = {"BF16": "<u2", "F32": "<f4"}[v["dtype"]]
        out[name] = (v["dtype"], np.frombuffer(bytes(v["data"]), dtype=np_dtype).reshape(v["shape"]))
    return out


def check_tensors(case, hf_dir, ckpt, model_cfg, dtype):
    exported = load_export(os.path.join(hf_dir, "model.safetensors"), dtype)
    ref, _ = safetensors_io.load(os.path.join(ckpt, "model.safetensors"))
    want = "BF16" if dtype == "bf16" else "F32"
    for name, a in ref.items():
        if not check(name in exported, f"{case}: {name} is missing from the export"):
            continue
        st_dtype, b = exported[name]
        expect_dtype = "F32" if name.endswith(BIAS) else want
        check(st_dtype == expect_dtype, f"{case}: {name} is {st_dtype}, expected {expect_dtype}")
        if not check(list(b.shape) == list(a.shape),
                     f"{case}: {name} has shape {list(b.shape)}, expected {list(a.shape)}"):
            continue
        if st_dtype == "BF16":
            expected_bits = bf16_round(a)
            diff = np.flatnonzero(b != expected_bits)
        else:
            diff = np.flatnonzero(b.view("<u4") != np.ascontiguousarray(a, "<f4").view("<u4"))
        check(diff.size == 0, f"{case}: {name}: {diff.size} of {a.size} elements differ"
              + (f" (first at {diff[0]})" if diff.size else ""))
    L, depth = model_cfg["num_hidden_layers"], model_cfg["num_nextn_predict_layers"]
    head = "model.embed_tokens.weight" if model_cfg["tie_word_embeddings"] else "lm_head.weight"
    for k in range(1, depth + 1):  # DeepSeek-V3's release: each MTP module holds copies of these
        for part, source in (("embed_tokens.weight", "model.embed_tokens.weight"), ("shared_head.head.weight", head)):
            name = f"model.layers.{L + k - 1}.{part}"
            if check(name in exported, f"{case}: MTP module {k} lacks its copy {name}"):
                check(np.array_equal(exported[name][1], exported[source][1]), f"{case}: {name} differs from {source}")
    for name, (st_dtype, b) in exported.items():
        if name in ref or name.endswith((".embed_tokens.weight", ".shared_head.head.weight")):
            continue
        # The only addition: a zero router bias where the run had no aux-loss-free bias.
        check(name.endswith(BIAS) and not model_cfg["aux_free_bias"] and st_dtype == "F32" and not b.any(),
              f"{case}: unexpected tensor {name} ({st_dtype} {list(b.shape)})")
    check(("lm_head.weight" in exported) != model_cfg["tie_word_embeddings"],
          f"{case}: lm_head.weight {'present' if 'lm_head.weight' in exported else 'absent'} "
          f"with tie_word_embeddings = {model_cfg['tie_word_embeddings']}")
    for k in range(1, depth + 1):
        for part in ("enorm.weight", "hnorm.weight", "eh_proj.weight", "shared_head.norm.weight"):
            name = f"model.layers.{L + k - 1}.{part}"
            check(name in exported, f"{case}: MTP module {k} lacks {name}")
    check(not any(n.startswith(f"model.layers.{L + depth}.") for n in exported),
          f"{case}: layers beyond the last MTP module")
    return len(exported)


def check_config(case, hf_dir, state, dtype):
    with open(os.path.join(hf_dir, "config.json")) as f:
        cfg = json.load(f)
    m = state["config"]["model"]
    check(cfg.get("model_type") == "deepseek_v3", f"{case}: model_type {cfg.get('model_type')}")
    check(cfg.get("architectures") == ["DeepseekV3ForCausalLM"], f"{case}: architectures {cfg.get('architectures')}")
    for key in MODEL_MD_KEYS + V3_KEYS:
        check(key in cfg, f"{case}: config.json lacks {key}")
    same = ["vocab_size", "hidden_size", "intermediate_size", "moe_intermediate_size", "num_hidden_layers",
            "num_nextn_predict_layers", "num_attention_heads", "n_shared_experts", "n_routed_experts",
            "routed_scaling_factor", "kv_lora_rank", "qk_rope_head_dim", "v_head_dim", "qk_nope_head_dim", "n_group",
            "topk_group", "num_experts_per_tok", "norm_topk_prob", "scoring_func", "rms_norm_eps", "rope_theta",
            "tie_word_embeddings", "max_position_embeddings", "initializer_range"]
    for key in same:
        check(cfg.get(key) == m[key], f"{case}: {key} = {cfg.get(key)!r}, the checkpoint has {m[key]!r}")
    check(cfg["q_lora_rank"] == (m["q_lora_rank"] or None), f"{case}: q_lora_rank {cfg['q_lora_rank']!r}")
    check(cfg["num_key_value_heads"] == m["num_attention_heads"], f"{case}: MLA num_key_value_heads")
    dense = m["first_k_dense_replace"] if m["ffn"] == "moe" else m["num_hidden_layers"]
    check(cfg["first_k_dense_replace"] == dense, f"{case}: first_k_dense_replace {cfg['first_k_dense_replace']}")
    method = "noaux_tc" if m["aux_free_bias"] else ("group_limited_greedy" if m["n_group"] > 1 else "greedy")
    check(cfg["topk_method"] == method, f"{case}: topk_method {cfg['topk_method']}, expected {method}")
    check(cfg["torch_dtype"] == {"f32": "float32", "bf16": "bfloat16"}[dtype],
          f"{case}: torch_dtype {cfg['torch_dtype']}")
    check(cfg["hidden_act"] == "silu" and cfg["rope_scaling"] is None and cfg["attention_bias"] is False,
          f"{case}: hidden_act / rope_scaling / attention_bias")
    own = cfg.get("moelab", {})
    for key in ("attention", "ffn", "capacity_factor", "mtp_loss_weight"):
        check(own.get(key) == m[key], f"{case}: moelab.{key} = {own.get(key)!r}, the checkpoint has {m[key]!r}")
    # bos/eos: the tokenizer's <|endoftext|>.
    eot = [t["id"] for t in state["tokenizer"]["added_tokens"] if t["content"] == "<|endoftext|>"]
    check(eot and cfg["bos_token_id"] == eot[0] and cfg["eos_token_id"] == eot[0],
          f"{case}: bos/eos {cfg['bos_token_id']}/{cfg['eos_token_id']}, <|endoftext|> is {eot}")
    with open(os.path.join(hf_dir, "tokenizer.json")) as f:
        check(json.load(f) == state["tokenizer"], f"{case}: tokenizer.json is not the checkpoint's tokenizer")
    with open(os.path.join(hf_dir, "tokenizer_config.json")) as f:
        tc = json.load(f)
    check(tc.get("tokenizer_class") == "PreTrainedTokenizerFast" and tc.get("eos_token") == "<|endoftext|>",
          f"{case}: tokenizer_config.json {tc}")
    with open(os.path.join(hf_dir, "generation_config.json")) as f:
        gen = json.load(f)
    check(gen.get("eos_token_id") == eot[0] and gen.get("do_sample") is True, f"{case}: generation_config {gen}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tool", required=True, help="moelab_export_tool")
    ap.add_argument("--moelab", required=True, help="the moelab command line")
    ap.add_argument("--workdir", required=True)
    args = ap.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    os.makedirs(args.workdir)

    small = ["vocab_size=64", "hidden_size=32", "num_attention_heads=2", "kv_lora_rank=16", "qk_nope_head_dim=8",
             "qk_rope_head_dim=4", "v_head_dim=8", "intermediate_size=48", "moe_intermediate_size=16",
             "n_routed_experts=4", "num_experts_per_tok=2", "train.seq_len=64"]
    cases = {
        # query compression, a dense first layer, groups, the aux-loss-free bias, one MTP module, untied head
        "moe": small + ["q_lora_rank=16", "first_k_dense_replace=1", "n_group=2", "topk_group=1",
                        "routed_scaling_factor=2.5", "num_nextn_predict_layers=1", "seq_aux_loss_alpha=1e-4"],
        # tied head, no query compression, no bias (zero biases added), two MTP modules
        "tied": small + ["tie_word_embeddings=true", "aux_free_bias=false", "aux_loss_alpha=0.01",
                         "num_nextn_predict_layers=2"],
        "dense": small + ["ffn=dense", "num_hidden_layers=3"],
    }
    for case, keys in cases.items():
        run_dir = os.path.join(args.workdir, "run_" + case)
        ckpt = run(args.tool, run_dir, *keys).stdout.strip()
        with open(os.path.join(ckpt, "trainer_state.json")) as f:
            state = json.load(f)
        for dtype in ("f32", "bf16"):
            label = f"{case}/{dtype}"
            hf_dir = os.path.join(args.workdir, f"hf_{case}_{dtype}")
            # --ckpt names the run directory: export resolves its newest checkpoint.
            out = run(args.moelab, "export", "--ckpt", run_dir, "--out", hf_dir, "--dtype", dtype)
            check(f"(step 42) to {hf_dir}" in out.stdout, f"{label}: summary line: {out.stdout}")
            n = check_tensors(label, hf_dir, ckpt, state["config"]["model"], dtype)
            check_config(label, hf_dir, state, dtype)
            check(not os.path.exists(hf_dir + ".tmp"), f"{label}: {hf_dir}.tmp left behind")
            print(f"{label}: {n} tensors, config.json, tokenizer(_config).json, generation_config.json checked")

    # An MHA model: refused (HF's DeepseekV3 attention is MLA only), no output directory.
    run_dir = os.path.join(args.workdir, "run_mha")
    run(args.tool, run_dir, *small, "attention=mha")
    hf_dir = os.path.join(args.workdir, "hf_mha")
    r = run(args.moelab, "export", "--ckpt", run_dir, "--out", hf_dir, expect_ok=False)
    check(r.returncode != 0 and "attention = mha" in r.stderr and "--force" in r.stderr,
          f"mha: expected a refusal naming attention = mha, got rc {r.returncode}: {r.stderr}")
    check(not os.path.exists(hf_dir) and not os.path.exists(hf_dir + ".tmp"), "mha: a refused export left a directory")
    print("mha: refused")

    if failures:
        print(f"{len(failures)} failure(s)")
        return 1
    print("PASS: the Python safetensors package reads moelab's export with the checkpoint's names, shapes, "
          "dtypes and values")
    return 0


if __name__ == "__main__":
    sys.exit(main())
