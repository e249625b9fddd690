#!/usr/bin/env python3
"""`moelab ablate` end to end (Python's standard library only), on the char-level tinyshakespeare
shards of the cli.prepare_char fixture: a tiny grid (2 arms x 2 seeds x 10 steps of examples/tiny.toml)
  - runs every (arm, seed) in its own directory and writes REPORT.md and summary.json whose numbers
    are the runs' own: each arm's mean and sample std of the final val losses recomputed here from
    the metrics.jsonl files, and Welch's t between the arms;
  - killed (SIGKILL of the grid while its first runs train) and started again, skips the finished
    runs, resumes the others, and reports exactly the numbers of an uninterrupted grid (training
    resumes bit for bit);
  - refuses a bad grid with a message naming the file and the key.

    ablate_cli_test.py MOELAB PREPARED_DIR WORK_DIR SOURCE_DIR
"""
import fcntl
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time

moelab, data, work, src = sys.argv[1:5]
shutil.rmtree(work, ignore_errors=True)
os.makedirs(work)


def fail(msg, log=""):
    print(log)
    sys.exit(f"FAIL: {msg}")


def grid(path, steps=10, extra=""):
    with open(path, "w") as f:
        f.write(f"""# a test grid
[grid]
base = "{src}/examples/tiny.toml"
seeds = [1, 2]
steps = {steps}
set = ["model.vocab_size=96", "train.data_dir={data}", "train.eval_every=0", "train.eval_batches=2",
       "train.log_every=5"]
{extra}
[arm.bias]
set = ["model.aux_free_bias=true"]

[arm.no_bias]
set = ["model.aux_free_bias=false"]
""")
    return path


def ablate(*args, check=True):
    r = subprocess.run([moelab, "ablate", *args], capture_output=True, text=True)
    if check and r.returncode != 0:
        fail(f"moelab ablate {' '.join(args)} exited {r.returncode}", r.stdout + r.stderr)
    return r


def final_val(run_dir):
    val = None
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        for line in f:
            rec = json.loads(line)
            if "val_loss" in rec:
                val = rec["val_loss"]
    return val


# 1. A whole grid, two runs at a time.
g = grid(os.path.join(work, "grid.toml"))
out = os.path.join(work, "clean")
r = ablate("--grid", g, "--out", out, "--jobs", "2", "--threads", "1")
if "4 runs (4 trained now, 0 finished before)" not in r.stdout:
    fail("the summary line", r.stdout)
with open(os.path.join(out, "REPORT.md")) as f:
    report = f.read()
with open(os.path.join(out, "summary.json")) as f:
    summary = json.load(f)
vals = {}
for arm in ("bias", "no_bias"):
    vals[arm] = [final_val(os.path.join(out, arm, f"seed_{s}")) for s in (1, 2)]
    mean, std = statistics.mean(vals[arm]), statistics.stdev(vals[arm])
    row = next((l for l in report.splitlines() if l.startswith(f"| {arm} |")), None)
    if row is None or f"{mean:.4f} ± {std:.4f}" not in row:
        fail(f"{arm}: REPORT.md's row does not give {mean:.4f} ± {std:.4f} from the runs' metrics", report)
    s = next(a for a in summary["arms"] if a["name"] == arm)
    if abs(s["val_loss_mean"] - mean) > 1e-12 or abs(s["val_loss_std"] - std) > 1e-12:
        fail(f"{arm}: summary.json {s} against {mean}, {std}")
    if "| 10 |" not in row:
        fail(f"{arm}: the row does not say 10 steps", row)
a, b = vals["bias"], vals["no_bias"]
va, vb = statistics.variance(a) / 2, statistics.variance(b) / 2
t = (statistics.mean(a) - statistics.mean(b)) / math.sqrt(va + vb)
pair = summary["pairs"][0]
if abs(pair["t"] - t) > 1e-9 * max(1, abs(t)):
    fail(f"Welch's t {pair['t']}, recomputed {t}")
if not os.path.exists(os.path.join(out, "bias", "seed_1", "finished.json")):
    fail("no finished.json")
print(f"clean grid: val {vals}, t = {t:.3f}: REPORT.md and summary.json agree with the runs")

# 2. Killed while running, then started again: finished runs skipped, the rest resumed, same report.
g_long = grid(os.path.join(work, "grid_kill.toml"), steps=10)
out_kill = os.path.join(work, "killed")
with open(os.path.join(work, "killed.log"), "w") as log:
    p = subprocess.Popen([moelab, "ablate", "--grid", g_long, "--out", out_kill, "--jobs", "1", "--threads", "1"],
                         stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    first = os.path.join(out_kill, "bias", "seed_1", "finished.json")
    while time.time() < deadline and not os.path.exists(first):
        time.sleep(0.05)
    if not os.path.exists(first):
        p.kill()
        fail("the first run did not finish in 120 s")
    # the second run is now training (or about to): kill the grid itself
    time.sleep(0.3)
    p.send_signal(signal.SIGKILL)
    p.wait()
# The orphaned trainer (SIGTERM at its parent's death) saves and exits: wait until no run's lock
# is held.
deadline = time.time() + 60
for arm in ("bias", "no_bias"):
    for s in (1, 2):
        lock = os.path.join(out_kill, arm, f"seed_{s}", ".lock")
        while os.path.exists(lock):
            with open(lock) as f:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.time() > deadline:
                        fail(f"{lock} still held 60 s after the grid was killed")
                    time.sleep(0.1)
r = ablate("--grid", g_long, "--out", out_kill, "--jobs", "2", "--threads", "1")
m = re.search(r"4 runs \((\d) trained now, (\d) finished before\)", r.stdout)
if not m or int(m.group(2)) < 1 or int(m.group(1)) + int(m.group(2)) != 4:
    fail("the second call does not skip the finished runs", r.stdout)
with open(os.path.join(out_kill, "bias", "seed_1", "train.log")) as f:
    if f.read().count("done: step") != 1:
        fail("a finished run was trained again")
for arm in ("bias", "no_bias"):
    for s in (1, 2):
        got, want = final_val(os.path.join(out_kill, arm, f"seed_{s}")), final_val(os.path.join(out, arm, f"seed_{s}"))
        if got != want:
            fail(f"{arm}/seed_{s}: val {got} after the kill, {want} uninterrupted")
print(f"killed grid: {m.group(2)} run(s) skipped, {m.group(1)} trained or resumed, every val loss as uninterrupted")

# 3. A bad grid names the file and the key.
bad = os.path.join(work, "bad.toml")
with open(bad, "w") as f:
    f.write(f'[grid]\nbase = "{src}/examples/tiny.toml"\nseeds = [1]\nstep = 10\n[arm.a]\nset = []\n')
r = ablate("--grid", bad, check=False)
if r.returncode == 0 or "bad.toml" not in r.stderr or "unknown key 'step'" not in r.stderr:
    fail("a bad grid's error", r.stdout + r.stderr)
bad2 = os.path.join(work, "bad2.toml")
with open(bad2, "w") as f:
    f.write(f'[grid]\nbase = "{src}/examples/tiny.toml"\nseeds = [1]\nsteps = 10\n[arm.a]\nset = ["model.hiden_size=3"]\n')
r = ablate("--grid", bad2, check=False)
if r.returncode == 0 or "arm 'a'" not in r.stderr or "hidden_size" not in r.stderr:
    fail("a bad arm's error", r.stdout + r.stderr)
print("bad grids: " + r.stderr.strip().splitlines()[-1])
print("ablate cli test: OK")
