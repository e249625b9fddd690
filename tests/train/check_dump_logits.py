#!/usr/bin/env python3
"""Checks `moelab eval --dump-logits` against the PyTorch twin (tests/reference/twin.py, float64).

For small random models (tests/train/tools/export_tool.cpp writes each as a checkpoint: MTP depths
1 and 2, query compression, groups, the aux-loss-free bias, a tied head, a dense model), runs
`moelab eval --ckpt RUN --data-dir DATA --dump-logits FILE` and checks FILE:
  - tokens [B, W] are the prepared val split's first windows (the shard's first B*W tokens);
  - logits [B, T, V] and every mtp.<k>.logits equal the twin's, run on those tokens with the
    checkpoint's weights, to 2e-5 of their largest magnitude;
  - loss.main and loss.mtp.<k> equal the twin's losses to 1e-5.
The twin returns the main logits; the MTP logits are recomputed here from its modules, as MODEL.md
defines them. Exit status: 0 pass, 1 failure, 77 skipped (torch or numpy not installed).

    python3 tests/train/check_dump_logits.py --tool build/tests/moelab_export_tool \\
        --moelab build/train/moelab --data-dir build/tests/prepare_char --workdir /tmp/dump_logits_check
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
    import torch
except ImportError as e:
    print(f"SKIP: {e.name} is not installed")
    sys.exit(SKIP)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "reference"))
import safetensors_io  # noqa: E402
from twin import ModelConfig, Twin  # noqa: E402

failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print(f"FAIL: {what}")
    return cond


def run(*args):
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"FAIL: {' '.join(map(str, args))}\n{r.stdout}{r.stderr}")
    return r


def twin_outputs(ckpt, tokens):
    """The twin in float64 with the checkpoint's weights: main logits, MTP logits, losses."""
    with open(os.path.join(ckpt, "trainer_state.json")) as f:
        model_cfg = json.load(f)["config"]["model"]
    # Node-limited routing is not in the twin: these runs leave it off.
    assert model_cfg.pop("max_nodes_per_token") == 0 and model_cfg.pop("expert_nodes") >= 1
    cfg = ModelConfig.from_dict(model_cfg)
    weights, _ = safetensors_io.load(os.path.join(ckpt, "model.safetensors"))
    model = Twin(cfg).double()
    missing, unexpected = model.load_state_dict(
        {k: torch.from_numpy(np.array(v, dtype=np.float64)) for k, v in weights.items()}, strict=False)
    # Without the aux-loss-free bias moelab keeps no bias buffers; the twin's stay zero.
    assert not unexpected, unexpected
    assert all(k.endswith("e_score_correction_bias") and not cfg.aux_free_bias for k in missing), missing
    assert all(not dict(model.named_buffers())[k].any() for k in missing)
    t = torch.from_numpy(tokens.astype(np.int64))
    with torch.no_grad():
        out = model(t)
        # The MTP logits: MODEL.md's chain, module k on the previous depth's hidden state.
        L, Dm = cfg.num_hidden_layers, cfg.num_nextn_predict_layers
        T = t.shape[1] - 1 - Dm
        h = model.model.embed_tokens(t[:, :T])
        for layer in model.model.layers[:L]:
            h, _ = layer(h)
        mtp = []
        for k in range(1, Dm + 1):
            layer = model.model.layers[L + k - 1]
            h, _ = layer.forward_mtp(model.model.embed_tokens(t[:, k:T + k]), h)
            mtp.append(model.head(layer.shared_head.norm(h)).numpy())
    return out["logits"].numpy(), mtp, float(out["loss_main"]), [float(x) for x in out["loss_mtp"]]


def close(a, b, rel):
    scale = max(1.0, float(np.abs(b).max()))
    return float(np.abs(a.astype(np.float64) - b).max()), scale * rel


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tool", required=True, help="moelab_export_tool")
    ap.add_argument("--moelab", required=True, help="the moelab command line")
    ap.add_argument("--data-dir", required=True, help="prepared char-level data (vocab 65)")
    ap.add_argument("--workdir", required=True)
    args = ap.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    os.makedirs(args.workdir)
    with open(os.path.join(args.data_dir, "val_000.bin"), "rb") as f:
        val = np.frombuffer(f.read(), dtype="<u2", offset=1024).astype(np.int32)

    small = ["vocab_size=65", "hidden_size=32", "num_attention_heads=2", "kv_lora_rank=16", "qk_nope_head_dim=8",
             "qk_rope_head_dim=4", "v_head_dim=8", "intermediate_size=48", "moe_intermediate_size=16",
             "n_routed_experts=4", "num_experts_per_tok=2", "train.seq_len=24", "train.batch_size=3"]
    cases = {
        "moe_mtp1": small + ["q_lora_rank=16", "first_k_dense_replace=1", "n_group=2", "topk_group=1",
                             "routed_scaling_factor=2.5", "num_nextn_predict_layers=1"],
        "tied_mtp2": small + ["tie_word_embeddings=true", "aux_free_bias=false", "num_nextn_predict_layers=2"],
        "dense": small + ["ffn=dense", "num_hidden_layers=3"],
    }
    for case, keys in cases.items():
        run_dir = os.path.join(args.workdir, "run_" + case)
        ckpt = run(args.tool, run_dir, *keys).stdout.strip()
        dump = os.path.join(args.workdir, case + ".safetensors")
        out = run(args.moelab, "eval", "--ckpt", run_dir, "--data-dir", args.data_dir, "--batches", "1",
                  "--dump-logits", dump).stdout
        check(dump in out, f"{case}: eval does not name the dump: {out}")
        t, meta = safetensors_io.load(dump)
        check(meta.get("step") == "42" and meta.get("checkpoint") == ckpt, f"{case}: metadata {meta}")
        tokens = t["tokens"]
        B, W = tokens.shape
        check(np.array_equal(tokens.reshape(-1), val[:B * W]), f"{case}: tokens are not the val split's first windows")
        logits, mtp, loss_main, loss_mtp = twin_outputs(ckpt, tokens)
        check(t["logits"].shape == logits.shape, f"{case}: logits {t['logits'].shape}, twin {logits.shape}")
        diff, tol = close(t["logits"], logits, 2e-5)
        check(diff <= tol, f"{case}: logits differ from the twin's by {diff:.3g} (tolerance {tol:.3g})")
        check(abs(float(t["loss.main"]) - loss_main) <= 1e-5, f"{case}: loss.main {float(t['loss.main'])}, twin {loss_main}")
        names = {n for n in t if n.startswith("mtp.")}
        check(names == {f"mtp.{k}.logits" for k in range(1, len(mtp) + 1)}, f"{case}: MTP tensors {sorted(names)}")
        for k, ref in enumerate(mtp, start=1):
            d, tol_k = close(t[f"mtp.{k}.logits"], ref, 2e-5)
            check(d <= tol_k, f"{case}: mtp.{k}.logits differ from the twin's by {d:.3g} (tolerance {tol_k:.3g})")
            got = float(t[f"loss.mtp.{k}"])
            check(abs(got - loss_mtp[k - 1]) <= 1e-5, f"{case}: loss.mtp.{k} {got}, twin {loss_mtp[k - 1]}")
        print(f"{case}: tokens [{B}, {W}], logits max |diff| {diff:.2e}, {len(mtp)} MTP depth(s), losses checked")

    if failures:
        print(f"check_dump_logits: {len(failures)} failure(s)")
        sys.exit(1)
    print("check_dump_logits: OK")


if __name__ == "__main__":
    main()
