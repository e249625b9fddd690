#!/usr/bin/env python3
"""bench_peers.py: moelab's CPU training speed next to its PyTorch peers', interleaved on one
machine.

    scripts/peer_venv.sh                     # once: .venv-peer/ with a current torch from PyPI
    python3 scripts/bench_peers.py           # shakespeare_moe + shakespeare_dense, 1 and 2 threads,
                                             # 3 rounds of 10 timed steps each
    python3 scripts/bench_peers.py --debian --rounds 5 --out peers.md
    python3 scripts/bench_peers.py --configs examples/shakespeare_moe.toml --threads 2 \\
        --moelab-args='--precision fp8' --peer-dtype bfloat16 --no-compile

For each config (--configs) and thread count (--threads), --rounds rounds; each round runs, one
process after the other, in this order:
  moelab          build-cpu/train/moelab bench --config C --steps S --warmup W [--moelab-args]
                  (`moelab tokens/s: X`)
  peer eager      .venv-peer/bin/python tests/reference/bench_torch.py --config C --threads t
                  --steps S --warmup W [--dtype D]  (`torch tokens/s: X`)
  peer compile    the same with --compile (--warmup is then the least warm-up: bench_torch.py
                  warms up on until 3 steps in a row compiled nothing; --no-compile leaves it out)
  debian eager    /usr/bin/python3 (Debian's python3-torch, 1.13) bench_torch.py, with --debian
Every process gets OMP_NUM_THREADS=t. Interleaving the runners round by round spreads the
machine's drift over all of them. Prints per (config, threads) the min / median / max tokens/s of
each runner over the rounds and moelab's median over the runner's, then a summary of moelab
against the best peer (the faster median of eager and compile) and the round-by-round ratio
(moelab's run against the faster peer run of the same round: runs close in time share the
machine's state, so its median drifts less than the ratio of medians on a noisy machine); --out
also writes it as Markdown.
A runner that fails (exit status, no tokens/s line) is reported with its stderr's tail and marked
failed; the others go on. Standard library only: any python3 runs it. Exit status 1 if any run
failed or a runner could not run, else 0.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH_TORCH = os.path.join("tests", "reference", "bench_torch.py")
TPS = re.compile(r"^(moelab|torch) tokens/s: ([0-9.eE+-]+)", re.M)
TIMED_COMPILES = re.compile(r"compile: timed-step compilations (\d+)")
WARMUP = re.compile(r"steps \d+ \(\+(\d+) warmup\)")


def rel(path: str) -> str:
    r = os.path.relpath(path, ROOT)
    return path if r.startswith("..") else r


def find(path: str) -> str:
    """A path as given (from the current directory), else from the repository root."""
    if os.path.isabs(path) or os.path.exists(path):
        return os.path.abspath(path)
    return os.path.join(ROOT, path)


def capture(cmd, **kw) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def torch_version(python: str) -> str:
    out = capture([python, "-c", "import torch; print(torch.__version__)"])
    return out.splitlines()[-1] if out else "unavailable"


class Runner:
    def __init__(self, name: str, version: str, argv_for, available: str | None = None):
        self.name = name
        self.version = version
        self.argv_for = argv_for      # (config, threads) -> argv
        self.available = available    # None, or why it cannot run


def fmt(x) -> str:
    return "-" if x is None else f"{x:,.0f}"


def _text(x) -> str:
    return x.decode(errors="replace") if isinstance(x, bytes) else (x or "")


def run_one(argv, threads: int, timeout: float):
    """-> dict(ok, tps, seconds, note, tail)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    t0 = time.perf_counter()
    try:
        p = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        out, err = _text(e.stdout), _text(e.stderr)  # bytes even under text=True
        return dict(ok=False, tps=None, seconds=time.perf_counter() - t0,
                    note=f"FAILED: timed out after {timeout:.0f} s", tail=(out + err)[-3000:],
                    stdout=out)
    except OSError as e:
        return dict(ok=False, tps=None, seconds=0.0, note=f"FAILED: {e}", tail="", stdout="")
    seconds = time.perf_counter() - t0
    m = TPS.search(p.stdout)
    note = ""
    c = TIMED_COMPILES.search(p.stdout)
    if c and int(c.group(1)) > 0:
        note = f"{c.group(1)} compilations in the timed steps"
    w = WARMUP.search(p.stdout)
    warm = int(w.group(1)) if w else None
    if p.returncode != 0 or not m:
        why = "no tokens/s line"
        if p.returncode != 0:
            why = f"exit status {p.returncode}" + (" (skipped: not available here)"
                                                   if p.returncode == 77 else "")
        return dict(ok=False, tps=None, seconds=seconds, note="FAILED: " + why,
                    tail=(p.stdout[-1500:] + "\n" + p.stderr[-3000:]).strip(), stdout=p.stdout)
    return dict(ok=True, tps=float(m.group(2)), seconds=seconds, note=note, warm=warm, tail="",
                stdout=p.stdout)


def stats(values):
    if not values:
        return None, None, None
    return min(values), statistics.median(values), max(values)


def table(headers, rows, right):
    """-> (plain text lines, markdown lines); right: the indices of right-aligned columns."""
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(str(h))
              for i, h in enumerate(headers)]
    right = [i in right for i in range(len(headers))]

    def line(cells):
        return "  ".join(str(c).rjust(w) if r else str(c).ljust(w)
                         for c, w, r in zip(cells, widths, right)).rstrip()

    text = [line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows]
    md = ["| " + " | ".join(headers) + " |",
          "|" + "|".join("---:" if r else "---" for r in right) + "|"]
    md += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return text, md


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--configs", nargs="+",
                    default=["examples/shakespeare_moe.toml", "examples/shakespeare_dense.toml"])
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per run (default 10)")
    ap.add_argument("--warmup", type=int, default=2,
                    help="untimed steps first (default 2; the compiled peer's least warm-up)")
    ap.add_argument("--moelab", default="build-cpu/train/moelab", help="the moelab binary")
    ap.add_argument("--moelab-args", default="",
                    help="extra arguments to `moelab bench`, one string; give it with = when it "
                         "starts with -- (--moelab-args='--precision fp8')")
    ap.add_argument("--peer-python", default=".venv-peer/bin/python",
                    help="the current peer's Python (scripts/peer_venv.sh makes it)")
    ap.add_argument("--no-compile", action="store_true", help="leave out the compiled peer")
    ap.add_argument("--debian", action="store_true",
                    help="also Debian's torch (/usr/bin/python3) eager")
    ap.add_argument("--debian-python", default="/usr/bin/python3")
    ap.add_argument("--peer-dtype", default="float32", choices=["float32", "bfloat16"],
                    help="the peers' --dtype (bfloat16: autocast, fp32 master weights)")
    ap.add_argument("--peer-args", default="",
                    help="extra arguments to bench_torch.py, one string (--peer-args='--seed 1')")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per run (default 1800)")
    ap.add_argument("--out", help="also write the report as Markdown to this file")
    args = ap.parse_args()

    moelab = find(args.moelab)
    peer_py = find(args.peer_python)
    configs = [find(c) for c in args.configs]
    for c in configs:
        if not os.path.isfile(c):
            print(f"error: no config {c}", file=sys.stderr)
            return 2
    common = ["--steps", str(args.steps), "--warmup", str(args.warmup)]
    moelab_extra = shlex.split(args.moelab_args)
    peer_extra = ["--dtype", args.peer_dtype] + shlex.split(args.peer_args)

    moelab_version = capture([moelab, "--version"]) if os.access(moelab, os.X_OK) else ""
    git = capture(["git", "-C", ROOT, "describe", "--always", "--dirty"])
    runners = [Runner("moelab", (moelab_version or "moelab ?") + (f" (tree {git})" if git else ""),
                      lambda c, t: [rel(moelab), "bench", "--config", rel(c)] + common
                      + moelab_extra,
                      None if moelab_version else f"{rel(moelab)} is not an executable moelab")]

    def peer(python):
        def argv(compiled):
            return lambda c, t: ([python, BENCH_TORCH, "--config", rel(c), "--threads", str(t)]
                                 + common + peer_extra + (["--compile"] if compiled else []))
        return argv

    pv = torch_version(peer_py) if os.access(peer_py, os.X_OK) else "unavailable"
    missing = None if pv != "unavailable" else (f"no torch under {rel(peer_py)} "
                                                "(run scripts/peer_venv.sh)")
    runners.append(Runner("peer eager", f"torch {pv}", peer(rel(peer_py))(False), missing))
    if not args.no_compile:
        runners.append(Runner("peer compile", f"torch {pv}", peer(rel(peer_py))(True), missing))
    if args.debian:
        dv = torch_version(args.debian_python)
        runners.append(Runner("debian eager", f"torch {dv}", peer(args.debian_python)(False),
                              None if dv != "unavailable"
                              else f"no torch under {args.debian_python}"))

    report = []  # markdown lines

    def say(line=""):
        print(line, flush=True)

    now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
    header = [
        f"date: {now}",
        f"host: {platform.node()}, CPU {cpu_model()}, {os.cpu_count()} logical CPUs, "
        f"{platform.system()} {platform.release()}",
        f"moelab: {rel(moelab)}: {moelab_version or 'unavailable'}, tree {git or '?'}",
        f"peer: {rel(peer_py)}: torch {pv}"
        + (f"; debian: {args.debian_python}: torch {torch_version(args.debian_python)}"
           if args.debian else ""),
        f"runs: {args.rounds} rounds x configs {', '.join(rel(c) for c in configs)} x threads "
        f"{', '.join(map(str, args.threads))}; {args.steps} timed steps after {args.warmup} "
        f"warm-up; peer dtype {args.peer_dtype}"
        + (f"; moelab args {args.moelab_args}" if moelab_extra else ""),
    ]
    say("bench_peers: moelab against its PyTorch peers, interleaved")
    for h in header:
        say("  " + h)
    if args.peer_dtype == "bfloat16" and "bf16" not in " ".join(moelab_extra):
        say("  note: the peers run bf16 autocast but moelab its default precision (fp32 on the "
            "CPU); --moelab-args='--precision bf16' runs moelab's bf16 mode")
    unavailable = [r for r in runners if r.available]
    for r in unavailable:
        say(f"  {r.name}: NOT RUN: {r.available}")
    say()
    report += ["# moelab against its PyTorch peers", ""] + [f"- {h}" for h in header] + [""]

    live = [r for r in runners if not r.available]
    results = {}   # (config, threads, runner name) -> list of run dicts
    commands = []
    failed = 0
    for c in configs:
        for t in args.threads:
            for rnd in range(1, args.rounds + 1):
                for r in live:
                    argv = r.argv_for(c, t)
                    shown = f"OMP_NUM_THREADS={t} " + " ".join(shlex.quote(a) for a in argv)
                    if rnd == 1:
                        commands.append(shown)
                    res = run_one(argv, t, args.timeout)
                    results.setdefault((c, t, r.name), []).append(res)
                    where = f"[{rel(c)} t{t} round {rnd}/{args.rounds}] {r.name}"
                    if res["ok"]:
                        extra = []
                        if r.name == "peer compile" and res.get("warm") is not None:
                            extra.append(f"{res['warm']} warm-up steps")
                        if res["note"]:
                            extra.append(res["note"])
                        say(f"{where}: {res['tps']:,.1f} tokens/s ({res['seconds']:.1f} s"
                            + "".join(f", {e}" for e in extra) + ")")
                        for line in res["stdout"].splitlines():
                            if line.strip().startswith("compile:"):
                                say("    " + line.strip())
                    else:
                        failed += 1
                        say(f"{where}: {res['note']} ({res['seconds']:.1f} s)")
                        say(f"  command: {shown}")
                        for line in res["tail"].splitlines()[-20:]:
                            say(f"  | {line}")

            # the table of this (config, threads)
            rows = []
            med = {}
            for r in runners:
                runs = results.get((c, t, r.name), [])
                ok = [x["tps"] for x in runs if x["ok"]]
                lo, mid, hi = stats(ok)
                med[r.name] = mid
                notes = sorted({x["note"] for x in runs if x["note"]})
                if r.available:
                    notes = ["not run: " + r.available]
                rows.append([r.name, r.version, f"{len(ok)}/{len(runs)}", fmt(lo), fmt(mid),
                             fmt(hi), "", "; ".join(notes)])
            base = med.get("moelab")
            for row in rows:
                m = med.get(row[0])
                row[6] = f"{base / m:.2f}" if base and m else "-"
            text, md = table(["runner", "version", "ok", "min tok/s", "median", "max",
                              "moelab/runner", "notes"], rows, right={2, 3, 4, 5, 6})
            title = f"{rel(c)}, {t} thread{'s' if t != 1 else ''}"
            say()
            say(title)
            for line in text:
                say("  " + line)
            say()
            report += [f"## {title}", ""] + md + [""]

    # summary: moelab's median against the best peer's
    rows = []
    for c in configs:
        for t in args.threads:
            def median_of(name):
                ok = [x["tps"] for x in results.get((c, t, name), []) if x["ok"]]
                return statistics.median(ok) if ok else None
            m = median_of("moelab")
            peers = [(median_of(n), n) for n in ("peer eager", "peer compile") if median_of(n)]
            best, which = max(peers) if peers else (None, "-")
            # round i: moelab's run i over the faster peer run i (failed runs leave their round out)
            runs = {n: results.get((c, t, n), []) for n in ("moelab", "peer eager", "peer compile")}
            paired = []
            for i, mine in enumerate(runs["moelab"]):
                theirs = [rs[i]["tps"] for n, rs in runs.items()
                          if n != "moelab" and i < len(rs) and rs[i]["ok"]]
                if mine["ok"] and theirs:
                    paired.append(mine["tps"] / max(theirs))
            lo, mid, hi = stats(paired)
            rows.append([rel(c), str(t), fmt(m), which, fmt(best),
                         f"{m / best:.2f}" if m and best else "-",
                         f"{mid:.2f} ({lo:.2f}-{hi:.2f})" if paired else "-"])
    text, md = table(["config", "threads", "moelab median tok/s", "best peer", "peer median",
                      "moelab/peer", "per round: median (min-max)"], rows, right={1, 2, 4, 5, 6})
    say("summary: moelab's median against the best current peer (eager or compile)")
    for line in text:
        say("  " + line)
    report += ["## Summary: moelab against the best current peer", ""] + md + [""]
    report += ["## Commands (each round; every one a separate process)", ""]
    report += ["    " + cmd for cmd in commands] + [""]
    if failed or unavailable:
        why = ", ".join(([f"{failed} run(s) failed (see above)"] if failed else [])
                        + [f"{r.name} not run" for r in unavailable])
        say(f"\n{why}")
        report += [why + ".", ""]
    say("\ncommands (each round):")
    for cmd in commands:
        say("  " + cmd)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write("\n".join(report))
        say(f"wrote {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
