#!/usr/bin/env python3
"""Plots of a `moelab ablate` grid (train/ablate.h) from its summary.json and the runs' metrics.jsonl.

    python3 examples/plot_ablation.py runs/ablate_balance
writes into that directory:
    loss_steps.png    per arm, the training loss (main model) against the step: the mean over the
                      seeds with a band from the lowest to the highest seed, and the val losses
    loss_time.png     the same against training time (minutes; the records' train_seconds)
    expert_load.png   per arm with MoE layers, each expert's share of the routed tokens in the
                      run's second half, layer by layer (mean over seeds; 1/E everywhere = balanced)
Needs numpy and matplotlib (Debian: python3-numpy python3-matplotlib). `moelab ablate` runs it.
"""
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from plot import read  # noqa: E402  (examples/plot.py: one run's records)


def read_metrics(run_dir):
    return read(os.path.join(run_dir, "metrics.jsonl"))  # (train records, val records), as plot.py reads them


def band(runs, x_key):
    """Mean, min and max of loss_main over the seeds at the steps all of them logged."""
    common = sorted(set.intersection(*[{r["step"] for r in t} for t, _ in runs]))
    if not common:
        return None
    ys = np.array([[{r["step"]: r["loss_main"] for r in t}[s] for s in common] for t, _ in runs])
    xs = np.array([[{r["step"]: r.get(x_key, np.nan) for r in t}[s] for s in common] for t, _ in runs])
    x = np.nanmean(xs, axis=0) if x_key != "step" else np.array(common, dtype=float)
    return x, ys.mean(axis=0), ys.min(axis=0), ys.max(axis=0)


def plot_curves(arms, x_key, xlabel, scale, out):
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, (name, runs) in enumerate(arms.items()):
        b = band(runs, x_key)
        if b is None:
            continue
        x, mean, lo, hi = b
        color = f"C{i}"
        ax.plot(x / scale, mean, color=color, label=f"{name} (train, {len(runs)} seeds)")
        ax.fill_between(x / scale, lo, hi, color=color, alpha=0.2)
        for _, val in runs:
            ax.plot([v.get(x_key, np.nan) / scale for v in val], [v["val_loss"] for v in val], "o", color=color,
                    markersize=3)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("main-model loss (nats/token); dots: val")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def plot_expert_load(arms, out):
    moe = {}
    for name, runs in arms.items():
        shares = []
        for train, _ in runs:
            recs = [r for r in train if r.get("expert_load")]
            recs = recs[len(recs) // 2:]
            if not recs:
                continue
            layers = sorted(recs[0]["expert_load"], key=int)
            load = np.array([[sum(r["expert_load"][l][e] for r in recs) for e in range(len(recs[0]["expert_load"][l]))]
                             for l in layers], dtype=float)
            shares.append(load / np.maximum(load.sum(axis=1, keepdims=True), 1e-12))
        if shares:
            moe[name] = (layers, np.mean(shares, axis=0))
    if not moe:
        return False
    rows = sum(len(layers) for layers, _ in moe.values())
    fig, axes = plt.subplots(len(moe), 1, figsize=(8, 1.0 + 0.8 * len(moe) + 0.3 * rows), squeeze=False)
    for ax, (name, (layers, share)) in zip(axes[:, 0], moe.items()):
        E = share.shape[1]
        im = ax.imshow(share * E, aspect="auto", cmap="coolwarm", vmin=0, vmax=2)
        ax.set_yticks(range(len(layers)), [f"layer {l}" for l in layers])
        ax.set_title(f"{name}: expert share x E (1 = balanced)", fontsize=9)
        fig.colorbar(im, ax=ax)
    axes[-1, 0].set_xlabel("expert")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return True


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: plot_ablation.py GRID_OUT_DIR (what `moelab ablate --out` wrote)")
    out_dir = sys.argv[1]
    with open(os.path.join(out_dir, "summary.json")) as f:
        summary = json.load(f)
    arms = {}
    for run in summary["runs"]:
        arms.setdefault(run["arm"], []).append(read_metrics(run["dir"]))
    wrote = ["loss_steps.png", "loss_time.png"]
    plot_curves(arms, "step", "step", 1.0, os.path.join(out_dir, "loss_steps.png"))
    plot_curves(arms, "train_seconds", "training time (min)", 60.0, os.path.join(out_dir, "loss_time.png"))
    if plot_expert_load(arms, os.path.join(out_dir, "expert_load.png")):
        wrote.append("expert_load.png")
    print(f"plot_ablation: wrote {', '.join(wrote)} in {out_dir}")


if __name__ == "__main__":
    main()
