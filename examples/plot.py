#!/usr/bin/env python3
"""Plots of a moelab run from its metrics.jsonl (train/metrics.h writes it).

    python3 examples/plot.py runs/shakespeare_moe            # or the metrics.jsonl itself
writes, next to the metrics file:
    loss.png          training loss (main and total) and validation loss per step, and the lr
    loss_time.png     the same losses against training time (minutes; the records' train_seconds)
    expert_load.png   per MoE layer, each expert's share of the routed tokens over the steps
                      (a balanced router is a flat band at 1/E), with MaxVio below
    expert_parallel.png  expert-parallel runs (dist.ep > 1): per MoE layer, the expert rows the
                      busiest EP rank computes over the mean (1 = balanced: what EPLB evens
                      out), the mean number of nodes a token reaches, and the all-to-all bytes
                      per step (intra- and inter-node)
Needs numpy and matplotlib (Debian: python3-numpy python3-matplotlib).
"""
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def read(path):
    train, val = [], []
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            if "val_loss" in r:
                val.append(r)
            elif "loss" in r and not r.get("nonfinite"):
                train.append(r)
    return train, val


def plot_loss(train, val, out):
    fig, (ax, ax_lr) = plt.subplots(2, 1, figsize=(8, 7), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    steps = [r["step"] for r in train]
    ax.plot(steps, [r["loss_main"] for r in train], label="train (main)")
    ax.plot(steps, [r["loss"] for r in train], label="train (total: + MTP, balance)", alpha=0.5)
    if val:
        ax.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", label="validation (main)")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.legend()
    ax.grid(alpha=0.3)
    ax_lr.plot(steps, [r["lr"] for r in train], color="gray")
    ax_lr.set_ylabel("lr")
    ax_lr.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def plot_loss_time(train, val, out):
    """Loss against training time; False when the records carry no train_seconds (older runs)."""
    train = [r for r in train if "train_seconds" in r]
    if not train:
        return False
    fig, ax = plt.subplots(figsize=(8, 5))
    ax.plot([r["train_seconds"] / 60 for r in train], [r["loss_main"] for r in train], label="train (main)")
    val = [r for r in val if "train_seconds" in r]
    if val:
        ax.plot([r["train_seconds"] / 60 for r in val], [r["val_loss"] for r in val], "o-", label="validation (main)")
    ax.set_xlabel("training time (minutes)")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return True


def plot_expert_load(train, out):
    layers = sorted({k for r in train for k in r.get("expert_load", {})}, key=int)
    if not layers:
        return False
    steps = [r["step"] for r in train]
    fig, axes = plt.subplots(len(layers) + 1, 1, figsize=(9, 2.2 * len(layers) + 2), sharex=True)
    for ax, layer in zip(axes, layers):
        load = np.array([r["expert_load"][layer] for r in train], dtype=float)  # [steps, E]
        share = load / np.maximum(load.sum(axis=1, keepdims=True), 1)
        im = ax.imshow(share.T, aspect="auto", origin="lower", cmap="viridis",
                       extent=[steps[0], steps[-1], -0.5, share.shape[1] - 0.5])
        ax.set_ylabel(f"layer {layer}\nexpert")
        fig.colorbar(im, ax=ax, label="token share")
    axes[-1].plot(steps, [r["max_vio"] for r in train], color="crimson")
    axes[-1].set_ylabel("MaxVio")
    axes[-1].set_xlabel("step")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return True


def plot_expert_parallel(train, out):
    train = [r for r in train if "ep_rows_max_over_mean" in r]
    if not train:
        return False
    steps = [r["step"] for r in train]
    fig, (ax, ax_nodes, ax_bytes) = plt.subplots(3, 1, figsize=(8, 8), sharex=True)
    for layer in sorted(train[0]["ep_rows_max_over_mean"], key=int):
        ax.plot(steps, [r["ep_rows_max_over_mean"][layer] for r in train], label=f"layer {layer}")
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set_ylabel("rows: busiest rank / mean")
    ax.legend()
    ax.grid(alpha=0.3)
    ax_nodes.plot(steps, [r["ep_nodes_per_token"] for r in train], color="teal")
    ax_nodes.set_ylabel("nodes per token")
    ax_nodes.grid(alpha=0.3)
    for i, name in enumerate(("intra-node", "inter-node")):
        ax_bytes.plot(steps, [r["ep_bytes_per_step"][i] / 1e6 for r in train], label=name)
    ax_bytes.set_ylabel("all-to-all MB / step")
    ax_bytes.set_xlabel("step")
    ax_bytes.legend()
    ax_bytes.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return True


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    path = sys.argv[1]
    if os.path.isdir(path):
        path = os.path.join(path, "metrics.jsonl")
    if not os.path.exists(path):
        sys.exit(f"plot.py: {path} does not exist (a moelab train run writes <out_dir>/metrics.jsonl)")
    train, val = read(path)
    if not train:
        sys.exit(f"plot.py: {path} has no training records yet")
    out_dir = os.path.dirname(os.path.abspath(path))
    plot_loss(train, val, os.path.join(out_dir, "loss.png"))
    wrote = ["loss.png"]
    if plot_loss_time(train, val, os.path.join(out_dir, "loss_time.png")):
        wrote.append("loss_time.png")
    if plot_expert_load(train, os.path.join(out_dir, "expert_load.png")):
        wrote.append("expert_load.png")
    if plot_expert_parallel(train, os.path.join(out_dir, "expert_parallel.png")):
        wrote.append("expert_parallel.png")
    print(f"plot.py: wrote {', '.join(os.path.join(out_dir, w) for w in wrote)}")


if __name__ == "__main__":
    main()
