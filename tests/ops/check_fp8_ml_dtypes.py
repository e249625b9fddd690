#!/usr/bin/env python3
"""Checks moelab's FP8 1x128-tile quantisation against ml_dtypes' float8_e4m3fn (PyPI).

core/ops/fp8_quant.h defines, per row and block of 128 channels:
    scale = 1 if amax == 0 else max(amax / 448, 2^-126)        (f32 division)
    q     = e4m3(x / scale)                                     (f32 division, round to nearest even)
    a block holding a NaN / an infinity: scale NaN / +Inf and every q 0x7f (NaN).
    y     = float(q) * scale                                    (f32 product)
The reference side here is numpy for the f32 arithmetic and ml_dtypes for the e4m3 rounding, an
implementation independent of core/dtype.h. The data (D = 200, so the second block is partial):
normal values whose size varies by up to 2^+-100 per block and 2^-24 per element (many land in
e4m3's subnormals or flush to 0), every e4m3 midpoint (exact ties, with power-of-two scales),
all-zero blocks (+0 and -0), blocks whose amax is below 448 * 2^-126 (the clamped scale), f32
subnormal inputs, huge values near the f32 maximum, and NaN / Inf blocks (checked against the rule
above, which ml_dtypes has no say in). Compared bit for bit: q, scales, y; and the round-trip bound
of the header on every finite block.

ml_dtypes does not saturate: a value past 464 (the midpoint between 448 and the next step 480, which
e4m3fn spends on NaN) and +-Inf become NaN, where moelab saturates to +-448. The check verifies that
behaviour, and that |x / scale| stays far below 464 here (448 plus a few f32 ulps), so the two rules
never meet.

Exit status: 0 pass, 1 failure, 77 skipped (ml_dtypes or numpy not installed:
    python3 -m pip install ml_dtypes numpy).

    python3 tests/ops/check_fp8_ml_dtypes.py --tool build/tests/moelab_fp8_quant_tool --workdir /tmp/fp8_check
"""
import argparse
import os
import subprocess
import sys

SKIP = 77

try:
    import ml_dtypes
    import numpy as np
except ImportError as e:
    print(f"SKIP: {e.name} is not installed (python3 -m pip install ml_dtypes numpy)")
    sys.exit(SKIP)

E4M3 = ml_dtypes.float8_e4m3fn
F32 = np.float32
BLOCK = 128
TINY = np.finfo(F32).tiny  # 2^-126, the smallest normal f32

failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print(f"FAIL: {what}")
    return cond


def e4m3_bits(v):
    return np.asarray(v, dtype=F32).astype(E4M3).view(np.uint8)


def check_ml_dtypes_rules():
    """ml_dtypes' own e4m3 rules where they matter to the comparison."""
    v = np.array([448, 449, 464, 464.01, 1e6, np.inf, 2.0**-10, 3 * 2.0**-10, 17, 19, -0.0], dtype=F32)
    got = list(e4m3_bits(v))
    # The next step after 448 would be 480 (its code 0x7f is NaN in e4m3fn): up to the midpoint 464
    # (a tie, to the even 448) values round to 448; past it ml_dtypes gives NaN (0x7f), as for +Inf,
    # where moelab saturates to 448 (0x7e). Ties to even, subnormals, the sign of zero as moelab.
    want = [0x7E, 0x7E, 0x7E, 0x7F, 0x7F, 0x7F, 0x00, 0x02, 0x58, 0x5A, 0x80]
    check(got == want, f"ml_dtypes e4m3 rules: got {[hex(b) for b in got]}, expected {[hex(b) for b in want]}")


def make_data(rng, D):
    rows = []
    nb = (D + BLOCK - 1) // BLOCK

    def wide_row():
        x = rng.standard_normal(D).astype(np.float64)
        x *= np.exp2(np.repeat(rng.uniform(-100, 100, nb), BLOCK)[:D])  # per block
        x *= np.exp2(rng.uniform(-24, 0, D))                              # per element
        return x.astype(F32)

    rows += [wide_row() for _ in range(200)]

    # Every midpoint between consecutive non-negative e4m3 values, both signs, with scale 2^k (amax
    # 448 * 2^k is in each block), so x / scale is exactly the tie; plus every e4m3 value itself.
    finite = np.arange(0x7F, dtype=np.uint8).view(E4M3).astype(np.float64)  # 0 .. 448
    mids = (finite[:-1] + finite[1:]) / 2
    values = np.concatenate([mids, -mids, finite, -finite])
    for k in (-20, 0, 7, 30):
        vals = rng.permutation(values) * 2.0**k
        for start in range(0, len(vals), D - 2):
            row = np.zeros(D)
            chunk = vals[start:start + D - 2]
            row[1:1 + len(chunk)] = chunk
            row[0] = 448 * 2.0**k       # each block holds its amax 448 * 2^k: block 0 in channel 0,
            row[D - 1] = -448 * 2.0**k  # the partial block 1 in channel D - 1
            rows.append(row.astype(F32))

    # Zero blocks: one block zero (+0 and -0), then a whole zero row.
    r = wide_row()
    r[:BLOCK] = 0.0
    r[3] = -0.0
    rows.append(r)
    r = wide_row()
    r[BLOCK:] = -0.0
    rows.append(r)
    rows.append(np.zeros(D, dtype=F32))
    # A block with one non-zero value.
    r = np.zeros(D, dtype=F32)
    r[BLOCK + 5] = -3.0
    rows.append(r)
    # Tiny blocks: amax below 448 * 2^-126 (the clamped scale), and f32 subnormals.
    rows.append((rng.standard_normal(D) * 1e-37).astype(F32))
    rows.append((rng.standard_normal(D) * 1e-41).astype(F32))
    # Near the top of f32.
    rows.append((rng.uniform(-1, 1, D) * 3.4e38).astype(F32))
    # Non-finite blocks.
    for bad in (np.nan, np.inf, -np.inf):
        r = wide_row()
        r[BLOCK + 11] = bad
        rows.append(r)
    r = wide_row()
    r[2], r[9] = np.inf, np.nan
    rows.append(r)
    return np.stack(rows).astype(F32)


def reference(x):
    """(q bytes, scales, y, poisoned mask [N, nb], max |x / scale| over finite blocks)."""
    N, D = x.shape
    nb = (D + BLOCK - 1) // BLOCK
    q = np.empty((N, D), dtype=np.uint8)
    y = np.empty((N, D), dtype=F32)
    scales = np.empty((N, nb), dtype=F32)
    poisoned = np.zeros((N, nb), dtype=bool)
    vmax = F32(0)
    with np.errstate(invalid="ignore", over="ignore"):
        for b in range(nb):
            sl = slice(b * BLOCK, min(D, b * BLOCK + BLOCK))
            xb = x[:, sl]
            has_nan = np.isnan(xb).any(axis=1)
            amax = np.where(np.isnan(xb), F32(0), np.abs(xb)).max(axis=1).astype(F32)
            s = np.maximum(amax / F32(448), TINY).astype(F32)
            s = np.where(amax == 0, F32(1), s)
            s = np.where(has_nan, F32(np.nan), s).astype(F32)
            scales[:, b] = s
            bad = ~np.isfinite(s)
            poisoned[:, b] = bad
            v = (xb / s[:, None]).astype(F32)
            vmax = max(vmax, np.abs(v[~bad]).max(initial=F32(0)))
            qb = e4m3_bits(np.where(bad[:, None], F32(0), v))
            qb[bad] = 0x7F
            q[:, sl] = qb
            y[:, sl] = (qb.view(E4M3).astype(F32) * s[:, None]).astype(F32)
    return q, scales, y, poisoned, vmax


def same_bits(a, b):
    """Equal bits, or both NaN (f32)."""
    return (a.view(np.uint32) == b.view(np.uint32)) | (np.isnan(a) & np.isnan(b))


def report(name, ok, got, want):
    if check(ok.all(), f"{name}: {int((~ok).sum())} of {ok.size} differ"):
        return
    i = np.argwhere(~ok)[0]
    print(f"  first at {tuple(i)}: moelab {got[tuple(i)]!r}, ml_dtypes/numpy {want[tuple(i)]!r}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tool", required=True, help="the moelab_fp8_quant_tool executable")
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--seed", type=int, default=20240520)
    args = ap.parse_args()
    os.makedirs(args.workdir, exist_ok=True)

    check_ml_dtypes_rules()
    D = 200
    x = make_data(np.random.default_rng(args.seed), D)
    N = x.shape[0]
    nb = (D + BLOCK - 1) // BLOCK
    paths = {k: os.path.join(args.workdir, k + ".bin") for k in ("x", "q", "scales", "y")}
    x.astype("<f4").tofile(paths["x"])
    r = subprocess.run([args.tool, str(N), str(D), paths["x"], paths["q"], paths["scales"], paths["y"]],
                       capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"FAIL: {args.tool} exited {r.returncode}\n{r.stdout}{r.stderr}")
    q = np.fromfile(paths["q"], dtype=np.uint8).reshape(N, D)
    scales = np.fromfile(paths["scales"], dtype="<f4").reshape(N, nb)
    y = np.fromfile(paths["y"], dtype="<f4").reshape(N, D)

    q_ref, s_ref, y_ref, poisoned, vmax = reference(x)
    report("scales", same_bits(scales, s_ref), scales, s_ref)
    report("q", q == q_ref, q, q_ref)
    report("y", same_bits(y, y_ref), y, y_ref)
    check(vmax <= 448 * (1 + 2.0**-22), f"max |x / scale| = {vmax}: more than a few f32 ulps above 448 (past 464 "
                                         "ml_dtypes and moelab's saturation differ)")

    # The header's round-trip bound on every finite block with an unclamped scale (y a normal f32).
    s_el = np.repeat(scales, BLOCK, axis=1)[:, :D]
    live = ~np.repeat(poisoned, BLOCK, axis=1)[:, :D] & (s_el > TINY) & ((y == 0) | (np.abs(y) >= TINY))
    with np.errstate(invalid="ignore", divide="ignore"):
        v = np.abs((x / s_el).astype(F32)).astype(np.float64)
        h = np.where(v >= 2.0**-6, np.exp2(np.floor(np.log2(np.where(v > 0, v, 1))) - 4), 2.0**-10)
        bound = s_el.astype(np.float64) * h + np.abs(x.astype(np.float64)) * 2.0**-22
        err = np.abs(y.astype(np.float64) - x.astype(np.float64))
    ok = ~live | (err <= bound)
    check(ok.all(), f"round-trip bound |y - x| <= scale * h(x / scale) + 2^-22 |x| fails at {int((~ok).sum())} "
                    f"elements, first at {tuple(np.argwhere(~ok)[0]) if (~ok).any() else None}")
    ratio = (err[live] / bound[live]).max()

    # What the data covered: exact ties of the e4m3 rounding, e4m3 subnormals, values flushed to 0.
    table = np.arange(0x7F, dtype=np.uint8).view(E4M3).astype(np.float64)  # 0 .. 448, increasing
    vl = v[live & (v < 448)]
    lo = np.searchsorted(table, vl, side="right") - 1
    ties = int(((vl != table[lo]) & (vl == (table[lo] + table[np.minimum(lo + 1, 126)]) / 2)).sum())
    sub = int((((q & 0x78) == 0) & ((q & 0x07) != 0)).sum())
    flushed = int((((q & 0x7F) == 0) & (x != 0)).sum())
    check(ties > 200 and sub > 1000 and flushed > 1000, f"coverage: {ties} ties, {sub} subnormal q, {flushed} flushed")
    print(f"{N} rows x D {D} ({N * nb} blocks, {int(poisoned.sum())} poisoned): {ties} exact ties, {sub} e4m3 "
          f"subnormals, {flushed} flushed to 0; max |x / scale| = {vmax:.6f}; max |y - x| / bound = {ratio:.6f}")
    if failures:
        print(f"fp8 ml_dtypes check: {len(failures)} failure(s)")
        return 1
    print("fp8 ml_dtypes check: OK (q, scales and y equal ml_dtypes/numpy bit for bit)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
