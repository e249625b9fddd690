#!/usr/bin/env python3
"""Checks moelab's FP8 formats and quantisation against ml_dtypes (PyPI), an implementation
independent of core/dtype.h, bit for bit, through tests/ops/tools/fp8_quant_tool.cpp.

1. The formats (core/dtype.h): all 256 codes of e4m3 (float8_e4m3fn) and e5m2 (float8_e5m2) decode
   to ml_dtypes' values (NaN codes as NaN, e5m2's infinities). The conversion f32 -> fp8 of ~250k
   values (random bit patterns, a wide range of exponents, the subnormals of both formats and of
   f32, every value and every midpoint (exact tie) of both formats and their neighbours 1-3 f32 ulps
   away, values near and beyond the largest finite value, +-0, +-Inf, NaNs) equals ml_dtypes' where
   ml_dtypes gives a finite value. ml_dtypes does not saturate: past the midpoint above the largest
   finite value (e4m3: 448 + 16 = 464, exclusive, to NaN; e5m2: 57344 + 4096 = 61440, inclusive as
   the tie goes to the even 65536, to Inf) and for +-Inf, it gives NaN / Inf, where moelab must give
   +-448 / +-57344; that rule is checked on its own (every |x| >= max gives +-max). NaN gives NaN.

2. The quantisation (core/ops/fp8_quant.h), for each tile (Row128 1x128, Block128 128x128), with and
   without `transpose` (quantise x^T) and pow2_scales:
       amax  = max |x| over the tile's non-NaN values
       scale = 1 if amax == 0 else max(amax / 448, 2^-126)          (f32 division)
               pow2: the smallest power of two >= that (here from the f32 bits: exact)
       q     = e4m3(x / scale)                                       (f32 division, nearest even)
       a tile holding a NaN / an infinity: scale NaN / +Inf and every q 0x7f (NaN).
       y     = float(q) * scale                                      (f32 product, q's layout)
   The reference is numpy f32 arithmetic plus ml_dtypes' e4m3 rounding; q, scales and y are
   compared bit for bit for all 8 variants on every matrix, the transposed ones against the reference
   on the numpy transpose (and against the tool on it). The data: rows
   (D = 200, so the second block is partial) of normal values whose size varies by up to 2^+-100 per
   block and 2^-24 per element (many land in e4m3's subnormals or flush to 0), every e4m3 midpoint
   (exact ties, with power-of-two scales), all-zero tiles (+0 and -0), tiles whose amax is below
   448 * 2^-126 (the clamped scale), f32 subnormal inputs, huge values near the f32 maximum, and
   NaN / Inf tiles; 128x128 blocks of exact ties (and values 1 f32 ulp off them) at scales m 2^k, m
   odd 1 .. 13 (mostly not powers of two), k -100 .. 100; a 200 x 300 matrix (partial
   blocks both ways) whose blocks differ in magnitude, one poisoned by a NaN and one by an Inf (the
   other blocks must equal those of the clean matrix); odd small shapes. Also checked: the header's
   round-trip bound (amax / 448 scales), that |x / scale| stays <= 448 plus a few f32 ulps (so that
   moelab's saturation and ml_dtypes' NaN never meet), that pow2 scales are powers of two with
   scale / 2 < max(amax / 448, 2^-126) <= scale, and the tool's exit statuses.

Exit status: 0 pass, 1 failure, 77 skipped (ml_dtypes or numpy not installed:
    python3 -m pip install ml_dtypes numpy).

    python3 tests/ops/check_fp8_ml_dtypes.py --tool build/tests/moelab_fp8_quant_tool --workdir /tmp/fp8_check
"""
import argparse
import itertools
import os
import subprocess
import sys
import time

SKIP = 77

try:
    import ml_dtypes
    import numpy as np
except ImportError as e:
    print(f"SKIP: {e.name} is not installed (python3 -m pip install ml_dtypes numpy)")
    sys.exit(SKIP)

E4M3 = ml_dtypes.float8_e4m3fn
E5M2 = ml_dtypes.float8_e5m2
F32 = np.float32
U32 = np.uint32
BLOCK = 128
TINY = np.finfo(F32).tiny  # 2^-126, the smallest normal f32

# name: (ml_dtypes type, largest finite value, its code, the midpoint above it (ml_dtypes' overflow
# threshold), whether ml_dtypes overflows AT that midpoint (ties to even: 448 = 0x7e is even, 57344 =
# 0x7b is odd, so e5m2's tie goes up to 65536 = Inf), the smallest normal value)
FORMATS = {
    "e4m3": (E4M3, 448.0, 0x7E, 464.0, False, 2.0**-6),
    "e5m2": (E5M2, 57344.0, 0x7B, 61440.0, True, 2.0**-14),
}

failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print(f"FAIL: {what}")
    return cond


def e4m3_bits(v):
    return np.asarray(v, dtype=F32).astype(E4M3).view(np.uint8)


def same_bits(a, b):
    """Equal bits, or both NaN (f32)."""
    return (a.view(U32) == b.view(U32)) | (np.isnan(a) & np.isnan(b))


def f32_from_bits(bits):
    return np.asarray(bits, dtype=U32).view(F32)


class Tool:
    def __init__(self, path, workdir):
        self.path, self.workdir = path, workdir
        self.calls = 0

    def file(self, name):
        return os.path.join(self.workdir, name)

    def run(self, *args):
        self.calls += 1
        return subprocess.run([self.path, *map(str, args)], capture_output=True, text=True)

    def ok(self, *args):
        r = self.run(*args)
        if r.returncode != 0:
            sys.exit(f"FAIL: {self.path} {' '.join(map(str, args))} exited {r.returncode}\n{r.stdout}{r.stderr}")

    def codes(self):
        a, b = self.file("codes_e4m3.bin"), self.file("codes_e5m2.bin")
        self.ok("codes", a, b)
        return np.fromfile(a, dtype="<f4"), np.fromfile(b, dtype="<f4")

    def convert(self, x):
        xf, a, b = self.file("conv_x.bin"), self.file("conv_e4m3.bin"), self.file("conv_e5m2.bin")
        x.astype("<f4").tofile(xf)
        self.ok("convert", x.size, xf, a, b)
        return np.fromfile(a, dtype=np.uint8), np.fromfile(b, dtype=np.uint8)

    def quantize(self, x, tile, transpose, pow2):
        R, C = x.shape
        p = {k: self.file(f"quant_{k}.bin") for k in ("x", "q", "scales", "y")}
        x.astype("<f4").tofile(p["x"])
        self.ok("quantize", R, C, p["x"], p["q"], p["scales"], p["y"], "--tile", tile, "--transpose", int(transpose),
                "--pow2", int(pow2))
        r, c = (C, R) if transpose else (R, C)
        th = 1 if tile == "row128" else BLOCK
        shape_s = (-(-r // th), -(-c // BLOCK))
        return (np.fromfile(p["q"], dtype=np.uint8).reshape(r, c),
                np.fromfile(p["scales"], dtype="<f4").reshape(shape_s),
                np.fromfile(p["y"], dtype="<f4").reshape(r, c))


# ---------------------------------------------------------------------------------------------------
# 1. The formats


def check_ml_dtypes_rules():
    """ml_dtypes' own rules where they matter to the comparison."""
    v = np.array([448, 449, 464, 464.01, 1e6, np.inf, 2.0**-10, 3 * 2.0**-10, 17, 19, -0.0], dtype=F32)
    got = list(e4m3_bits(v))
    # e4m3: the next step after 448 would be 480 (its code 0x7f is NaN in e4m3fn): up to the midpoint
    # 464 (a tie, to the even 448) values round to 448; past it ml_dtypes gives NaN (0x7f), as for
    # +Inf, where moelab saturates to 448 (0x7e). Ties to even, subnormals, the sign of zero as moelab.
    want = [0x7E, 0x7E, 0x7E, 0x7F, 0x7F, 0x7F, 0x00, 0x02, 0x58, 0x5A, 0x80]
    check(got == want, f"ml_dtypes e4m3 rules: got {[hex(b) for b in got]}, expected {[hex(b) for b in want]}")
    # e5m2: the next step after 57344 (0x7b, odd) is 65536 = Inf (0x7c): the midpoint 61440 is a tie
    # that goes to the even Inf; just below it 57344. -Inf 0xfc.
    v = np.array([57344, 61439.996, 61440, 1e6, np.inf, -np.inf, 2.0**-17, 3 * 2.0**-17, -0.0], dtype=F32)
    got = list(v.astype(E5M2).view(np.uint8))
    want = [0x7B, 0x7B, 0x7C, 0x7C, 0x7C, 0xFC, 0x00, 0x02, 0x80]
    check(got == want, f"ml_dtypes e5m2 rules: got {[hex(b) for b in got]}, expected {[hex(b) for b in want]}")


def check_codes(tool):
    got = dict(zip(("e4m3", "e5m2"), tool.codes()))
    for name, (dt, *_rest) in FORMATS.items():
        want = np.arange(256, dtype=np.uint8).view(dt).astype(F32)
        g = got[name]
        if not check(g.size == 256, f"codes {name}: {g.size} values, expected 256"):
            continue
        ok = same_bits(g, want)
        bad = np.flatnonzero(~ok)
        check(ok.all(), f"codes {name}: {bad.size} of 256 decode differently: "
                        + ", ".join(f"0x{i:02x}: moelab {g[i]!r}, ml_dtypes {want[i]!r}" for i in bad[:8]))
        n_nan, n_inf = int(np.isnan(want).sum()), int(np.isinf(want).sum())
        print(f"codes {name}: 256 decoded ({n_nan} NaN codes, {n_inf} infinities, {int((~ok).sum())} differ)")


def format_grid(dt, max_code):
    """Non-negative finite values of a format in increasing order, their midpoints, and the one
    above the largest finite value."""
    vals = np.arange(max_code + 1, dtype=np.uint8).view(dt).astype(np.float64)
    assert (np.diff(vals) > 0).all()
    mids = (vals[:-1] + vals[1:]) / 2
    above = vals[-1] + (vals[-1] - vals[-2]) / 2
    return vals, np.append(mids, above)


def neighbours(v, steps=3):
    """v and the f32 values up to `steps` ulps either side (v f32, finite)."""
    out = [v]
    up, down = v.copy(), v.copy()
    for _ in range(steps):
        up = np.nextafter(up, F32(np.inf)).astype(F32)
        down = np.nextafter(down, F32(-np.inf)).astype(F32)
        out += [up, down]
    return np.concatenate(out)


def convert_data(rng):
    parts = []
    # Specials: zeros, infinities, NaNs with payloads (quiet and signalling, both signs), the edges of f32.
    parts.append(np.array([0.0, -0.0, np.inf, -np.inf, np.finfo(F32).max, -np.finfo(F32).max, TINY, -TINY],
                          dtype=F32))
    parts.append(f32_from_bits([0x7FC00000, 0xFFC00000, 0x7F800001, 0xFF800001, 0x7FFFFFFF, 0xFFFFFFFF, 0x7FA00000,
                                0x00000001, 0x80000001, 0x007FFFFF, 0x807FFFFF]))
    # Random bit patterns (every exponent, NaNs and infinities included).
    parts.append(f32_from_bits(rng.integers(0, 2**32, 40000, dtype=np.uint64).astype(U32)))
    # f32 subnormals.
    sub = rng.integers(1, 2**23, 4000, dtype=np.uint64).astype(U32)
    parts.append(f32_from_bits(sub | (rng.integers(0, 2, sub.size, dtype=np.uint64).astype(U32) << 31)))
    # A wide range of exponents, 2^-30 .. 2^20 (both formats' subnormals up to past e5m2's max), with
    # random 23-bit mantissas and signs.
    n = 150000
    e = rng.integers(-30, 21, n)
    m = rng.integers(0, 2**23, n, dtype=np.uint64).astype(U32)
    sign = rng.integers(0, 2, n, dtype=np.uint64).astype(U32) << 31
    parts.append(f32_from_bits(sign | ((e + 127).astype(U32) << 23) | m))
    # Every value and every midpoint of both formats (the one above max included), both signs, and the
    # f32 values 1..3 ulps away.
    for dt, _mx, max_code, *_rest in FORMATS.values():
        vals, mids = format_grid(dt, max_code)
        g = np.concatenate([vals, mids]).astype(F32)
        g = neighbours(g)
        parts += [g, -g]
    # Near and beyond the largest finite values: uniform in [max / 2, 4 max] and log-uniform up to the f32 max.
    for _dt, mx, *_rest in FORMATS.values():
        u = (rng.uniform(0.5, 4, 10000) * mx).astype(F32)
        parts += [u, -u]
    big = np.exp2(rng.uniform(15, 127.9, 5000)).astype(F32)
    parts += [big, -big]
    return np.concatenate(parts).astype(F32)


def check_convert(tool, rng):
    x = convert_data(rng)
    got = dict(zip(("e4m3", "e5m2"), tool.convert(x)))
    xnan = np.isnan(x)
    with np.errstate(invalid="ignore"):  # signalling NaNs
        ax = np.abs(x.astype(np.float64))  # NaN stays NaN; comparisons with it are False
    neg = np.signbit(x)
    for name, (dt, mx, max_code, thr, tie_up, min_normal) in FORMATS.items():
        g = got[name]
        if not check(g.size == x.size, f"convert {name}: {g.size} bytes, expected {x.size}"):
            continue
        with np.errstate(over="ignore", invalid="ignore"):
            ml = x.astype(dt).view(np.uint8)
        ml_val = ml.view(dt).astype(F32)
        g_val = g.view(dt).astype(F32)
        over = ~xnan & ~np.isfinite(ml_val)  # where ml_dtypes overflows to NaN / Inf
        # ml_dtypes' overflow is exactly |x| past (or, for a tie to an odd max, at) the midpoint above max.
        want_over = ~xnan & ((ax >= thr) if tie_up else (ax > thr))
        check((over == want_over).all(), f"convert {name}: ml_dtypes overflows at {int((over != want_over).sum())} "
                                         f"values other than |x| {'>=' if tie_up else '>'} {thr}")
        # NaN -> NaN.
        ok_nan = np.isnan(g_val[xnan])
        check(ok_nan.all(), f"convert {name}: {int((~ok_nan).sum())} NaN inputs not NaN, first bits "
                            f"{[hex(b) for b in x[xnan][~ok_nan][:4].view(U32)]} -> "
                            f"{[hex(b) for b in g[xnan][~ok_nan][:4]]}")
        # Saturation, moelab's rule on its own: every |x| >= max (+-Inf included) gives +-max.
        sat = ~xnan & (ax >= mx)
        want_sat = np.where(neg[sat], 0x80 | max_code, max_code).astype(np.uint8)
        ok_sat = g[sat] == want_sat
        check(ok_sat.all(), f"convert {name}: saturation fails at {int((~ok_sat).sum())} of {int(sat.sum())} values "
                            f"|x| >= {mx}, e.g. " + ", ".join(f"{v!r} -> 0x{b:02x}" for v, b in
                                                              zip(x[sat][~ok_sat][:6], g[sat][~ok_sat][:6])))
        check(np.isin(np.flatnonzero(over), np.flatnonzero(sat)).all(),
              f"convert {name}: an overflow of ml_dtypes below the max")
        # Everywhere else: ml_dtypes' byte.
        rest = ~xnan & ~over
        ok = g[rest] == ml[rest]
        if not check(ok.all(), f"convert {name}: {int((~ok).sum())} of {int(rest.sum())} values differ from ml_dtypes"):
            xs, gs, ms = x[rest][~ok], g[rest][~ok], ml[rest][~ok]
            for i in range(min(10, xs.size)):
                print(f"  x = {xs[i]!r} (0x{xs[i:i + 1].view(U32)[0]:08x}): moelab 0x{gs[i]:02x} = "
                      f"{gs[i:i + 1].view(dt).astype(F32)[0]!r}, ml_dtypes 0x{ms[i]:02x} = "
                      f"{ms[i:i + 1].view(dt).astype(F32)[0]!r}")
        # Coverage of what matters for the rounding.
        _vals, mids = format_grid(dt, max_code)
        ties = int(np.isin(ax, mids).sum())
        every_tie = np.isin(mids, ax[~neg]).all() and np.isin(mids, ax[neg]).all()
        check(every_tie, f"convert {name} coverage: not every midpoint (both signs) is among the values")
        subn = int(((g_val != 0) & (np.abs(g_val) < min_normal)).sum())
        flushed = int(((g & 0x7F) == 0).sum() - (x == 0).sum())
        check(subn > 1000 and flushed > 1000 and int(over.sum()) > 1000,
              f"convert {name} coverage: {subn} subnormals, {flushed} flushed, {int(over.sum())} overflows")
        print(f"convert {name}: {x.size} values ({int(xnan.sum())} NaN, {int(np.isinf(x).sum())} Inf, "
              f"{int(((x != 0) & (np.abs(x) < TINY)).sum())} f32 subnormals): {ties} exact ties, {subn} subnormal "
              f"results, {flushed} flushed to 0, {int(sat.sum())} saturated ({int(over.sum())} where ml_dtypes "
              f"overflows); {int((~ok).sum()) if rest.any() else 0} differ")


# ---------------------------------------------------------------------------------------------------
# 2. The quantisation


def pow2_ceil(s):
    """The smallest power of two >= s, for positive normal finite f32 s, from the bits (exact)."""
    b = s.astype(F32).view(U32)
    e = b & U32(0x7F800000)
    return np.where((b & U32(0x7FFFFF)) == 0, e, e + U32(0x800000)).astype(U32).view(F32)


def reference(xq, tile, pow2):
    """The quantisation of xq [r, c] (already transposed if asked for): (q, scales, y, v = x / scale
    per element, poisoned per element, the unrounded scales max(amax / 448, 2^-126))."""
    r, c = xq.shape
    th = 1 if tile == "row128" else BLOCK
    rb, cb = -(-r // th), -(-c // BLOCK)
    pad = np.zeros((rb * th, cb * BLOCK), dtype=F32)  # zeros change neither amax nor the NaN test
    pad[:r, :c] = xq
    t = pad.reshape(rb, th, cb, BLOCK)
    nan = np.isnan(t)
    has_nan = nan.any(axis=(1, 3))
    amax = np.where(nan, F32(0), np.abs(t)).max(axis=(1, 3)).astype(F32)
    s0 = np.maximum(amax / F32(448), TINY).astype(F32)  # amax = Inf gives Inf
    s = s0.copy()
    if pow2:
        fin = np.isfinite(s0)
        s[fin] = pow2_ceil(s0[fin])
        # The same from frexp (s = m 2^e, m in [0.5, 1): 2^ceil(log2 s) = s if m == 0.5 else 2^e).
        m, e = np.frexp(s0[fin].astype(np.float64))
        alt = np.where(m == 0.5, s0[fin].astype(np.float64), np.ldexp(1.0, e))
        assert (alt == s[fin].astype(np.float64)).all()
    s = np.where(amax == 0, F32(1), s)
    s = np.where(has_nan, F32(np.nan), s).astype(F32)
    s_el = np.repeat(np.repeat(s, th, axis=0), BLOCK, axis=1)[:r, :c]
    bad = ~np.isfinite(s_el)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        v = (xq / s_el).astype(F32)
        q = e4m3_bits(np.where(bad, F32(0), v))
        q[bad] = 0x7F
        y = (q.view(E4M3).astype(F32) * s_el).astype(F32)
    return q, s, y, v, bad, np.where(amax == 0, F32(np.nan), s0)


def report(name, ok, got, want, x=None):
    if check(ok.all(), f"{name}: {int((~ok).sum())} of {ok.size} differ"):
        return
    for i in np.argwhere(~ok)[:5]:
        i = tuple(i)
        extra = f", x {x[i]!r}" if x is not None and x.shape == ok.shape else ""
        print(f"  at {i}: moelab {got[i]!r}, ml_dtypes/numpy {want[i]!r}{extra}")


def make_row_data(rng, D):
    """The Row128 data (D = 200: the second block of each row is partial)."""
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
    finite, mids = format_grid(E4M3, 0x7E)
    values = np.concatenate([mids[:-1], -mids[:-1], finite, -finite])
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


def make_tie_blocks(rng):
    """384 x 300 (3 x 3 blocks, the last column of blocks partial): each 128 x 128 block filled with
    e4m3 values and midpoints (both signs) times m 2^k, m odd (1 .. 13, so most scales are not powers
    of two) and k from -100 to 100 per block, with its amax 448 m 2^k somewhere in it: Block128
    scales are m 2^k exactly, and x / scale hits every tie exactly (value * m is exact in f32). A
    quarter of the values are moved 1 f32 ulp up or down: x / scale then lies just off the tie."""
    finite, mids = format_grid(E4M3, 0x7E)
    values = np.concatenate([mids[:-1], -mids[:-1], finite, -finite])
    x = np.empty((384, 300), dtype=F32)
    ks = rng.permutation([-100, -60, -20, -7, 0, 7, 30, 60, 100])
    ms = rng.permutation([1, 3, 5, 7, 9, 11, 13, 1, 3])
    for (bi, bj), k, m in zip(itertools.product(range(3), range(3)), ks, ms):
        r0, c0 = bi * BLOCK, bj * BLOCK
        blk = x[r0:r0 + BLOCK, c0:c0 + BLOCK]
        flat = np.concatenate([values, rng.choice(values, blk.size - values.size)])
        b = (rng.permutation(flat)[:blk.size].reshape(blk.shape) * (m * 2.0**k)).astype(F32)
        off = rng.integers(0, 8, b.shape)  # 0: 1 ulp towards 0, 1: 1 ulp away from 0, else exact
        off[np.abs(b) == F32(448 * m * 2.0**k)] = 2  # nothing above the amax
        away = np.where(np.signbit(b), F32(-np.inf), F32(np.inf))
        b = np.where(off == 0, np.nextafter(b, F32(0)), np.where(off == 1, np.nextafter(b, away), b)).astype(F32)
        b[rng.integers(b.shape[0]), rng.integers(b.shape[1])] = (-1) ** rng.integers(2) * 448 * m * 2.0**k
        blk[...] = b
    return x


def make_block_matrix(rng):
    """200 x 300 (2 x 3 blocks, partial both ways), blocks of very different magnitudes: (0, 0) and
    (0, 2) wide (2^+-100 per block, 2^-24 per element), (1, 0) zero (+0 and -0), (1, 1) tiny (amax
    below 448 * 2^-126, with f32 subnormals), (0, 1) and (1, 2) wide too: the ones poisoned later."""
    x = rng.standard_normal((200, 300)) * np.exp2(rng.uniform(-24, 0, (200, 300)))
    for bi, bj in itertools.product(range(2), range(3)):
        x[bi * BLOCK:(bi + 1) * BLOCK, bj * BLOCK:(bj + 1) * BLOCK] *= 2.0 ** rng.uniform(-100, 100)
    z = x[128:, :128]
    z[...] = 0.0
    z[::3, ::2] = -0.0
    x[128:, 128:256] = rng.standard_normal((72, 128)) * 1e-39
    return x.astype(F32)


def check_pow2_scales(name, s, s0):
    """Power-of-two scales: finite ones have no mantissa bits and scale / 2 < s0 <= scale, s0 the
    f32 max(amax / 448, 2^-126) (NaN for a zero tile, whose scale is 1)."""
    fin = np.isfinite(s)
    ok = (s[fin].view(U32) & U32(0x7FFFFF)) == 0
    check(ok.all(), f"{name}: {int((~ok).sum())} finite scales not a power of two, e.g. {s[fin][~ok][:3]}")
    live = fin & ~np.isnan(s0)
    sl, s0l = s[live].astype(np.float64), s0[live].astype(np.float64)
    ok = (s0l <= sl) & (sl / 2 < s0l)
    check(ok.all(), f"{name}: {int((~ok).sum())} pow2 scales not the smallest power of two >= amax / 448")
    zero = np.isnan(s0) & fin
    check((s[zero] == 1).all(), f"{name}: a zero tile's scale is not 1")


def check_quantize(tool, rng):
    D = 200
    mats = {
        "rows": make_row_data(rng, D),
        "ties": make_tie_blocks(rng),
        "blocks": make_block_matrix(rng),
        "one": np.array([[-3.5]], dtype=F32),
        "tall": (rng.standard_normal((129, 3)) * 1e3).astype(F32),
        "wide": (rng.standard_normal((3, 257)) * 1e-3).astype(F32),
        "odd": (rng.standard_normal((130, 129)) * np.exp2(rng.uniform(-30, 30, (130, 129)))).astype(F32),
    }
    # The poisoned blocks: a NaN in block (0, 1), an infinity in block (1, 2) (the corner block,
    # partial both ways), of the otherwise clean "blocks".
    poisoned = mats["blocks"].copy()
    poisoned[70, 200] = np.nan
    poisoned[150, 299] = np.inf
    mats["blocks_poisoned"] = poisoned
    both = mats["blocks"].copy()
    both[5, 5], both[100, 17] = -np.inf, np.nan  # both in block (0, 0): NaN wins
    both[199, 299] = -np.inf                     # (1, 2): -Inf gives +Inf
    mats["blocks_nan_inf"] = both

    stats = {}
    outs = {}
    for (name, x), tile, transpose, pow2 in itertools.product(mats.items(), ("row128", "block128"), (False, True),
                                                             (False, True)):
        label = f"{name} {x.shape[0]}x{x.shape[1]} {tile}{' transpose' if transpose else ''}{' pow2' if pow2 else ''}"
        q, s, y = tool.quantize(x, tile, transpose, pow2)
        outs[(name, tile, transpose, pow2)] = (q, s, y)
        xq = np.ascontiguousarray(x.T) if transpose else x
        q_ref, s_ref, y_ref, v, bad, s0 = reference(xq, tile, pow2)
        report(f"{label}: scales", same_bits(s, s_ref), s, s_ref)
        report(f"{label}: q", q == q_ref, q, q_ref, xq)
        report(f"{label}: y", same_bits(y, y_ref), y, y_ref, xq)
        vmax = float(np.abs(v[~bad]).max(initial=0))
        check(vmax <= (448 if pow2 else 448 * (1 + 2.0**-22)),
              f"{label}: max |x / scale| = {vmax}: above 448 (past 464 ml_dtypes and moelab's saturation differ)")
        if pow2:
            check_pow2_scales(label, s, s0)
        else:
            # The header's round-trip bound on every finite tile with an unclamped scale (y a normal f32).
            th = 1 if tile == "row128" else BLOCK
            s_el = np.repeat(np.repeat(s, th, axis=0), BLOCK, axis=1)[:xq.shape[0], :xq.shape[1]]
            live = ~bad & (s_el > TINY) & ((y == 0) | (np.abs(y) >= TINY))
            with np.errstate(invalid="ignore", divide="ignore"):
                va = np.abs(v).astype(np.float64)
                h = np.where(va >= 2.0**-6, np.exp2(np.floor(np.log2(np.where(va > 0, va, 1))) - 4), 2.0**-10)
                bound = s_el.astype(np.float64) * h + np.abs(xq.astype(np.float64)) * 2.0**-22
                err = np.abs(y.astype(np.float64) - xq.astype(np.float64))
            ok = ~live | (err <= bound)
            first = tuple(int(i) for i in np.argwhere(~ok)[0]) if (~ok).any() else None
            check(ok.all(), f"{label}: round-trip bound |y - x| <= scale * h(x / scale) + 2^-22 |x| fails at "
                            f"{int((~ok).sum())} elements, first at {first}")
        # Coverage: exact ties of the e4m3 rounding, e4m3 subnormals, values flushed to 0.
        table, _ = format_grid(E4M3, 0x7E)
        vl = np.abs(v[~bad]).astype(np.float64)
        vl = vl[vl < 448]
        lo = np.searchsorted(table, vl, side="right") - 1
        ties = int(((vl != table[lo]) & (vl == (table[lo] + table[np.minimum(lo + 1, 126)]) / 2)).sum())
        sub = int((((q & 0x78) == 0) & ((q & 0x07) != 0)).sum())
        flushed = int((((q & 0x7F) == 0) & (xq != 0)).sum())
        stats[(name, tile, transpose, pow2)] = (label, ties, sub, flushed, int((~np.isfinite(s)).sum()), s.size)

    # Transposes: the tool on x with transpose equals the tool on the numpy x^T (besides the reference).
    for (name, tile, transpose, pow2), (q, s, y) in outs.items():
        if not transpose:
            continue
        q2, s2, y2 = tool.quantize(np.ascontiguousarray(mats[name].T), tile, False, pow2)
        check((q == q2).all() and same_bits(s, s2).all() and same_bits(y, y2).all(),
              f"{name} {tile} pow2={pow2}: transpose differs from quantising the transpose")

    # The poisoned blocks: scale NaN / +Inf, every q 0x7f, every y NaN; the other blocks are those of the
    # clean matrix.
    for transpose, pow2 in itertools.product((False, True), (False, True)):
        q, s, y = outs[("blocks_poisoned", "block128", transpose, pow2)]
        qc, sc, yc = outs[("blocks", "block128", transpose, pow2)]
        blk_nan, blk_inf = ((1, 0), (2, 1)) if transpose else ((0, 1), (1, 2))
        tag = f"blocks_poisoned block128{' transpose' if transpose else ''}{' pow2' if pow2 else ''}"
        check(np.isnan(s[blk_nan]), f"{tag}: the NaN block's scale is {s[blk_nan]!r}, expected NaN")
        check(s[blk_inf] == np.inf, f"{tag}: the Inf block's scale is {s[blk_inf]!r}, expected +Inf")
        for bi, bj in itertools.product(range(s.shape[0]), range(s.shape[1])):
            sl = (slice(bi * BLOCK, (bi + 1) * BLOCK), slice(bj * BLOCK, (bj + 1) * BLOCK))
            if (bi, bj) in (blk_nan, blk_inf):
                check((q[sl] == 0x7F).all() and np.isnan(y[sl]).all(),
                      f"{tag}: block {(bi, bj)} not all NaN (0x7f): {int((q[sl] != 0x7F).sum())} other q")
            else:
                check((q[sl] == qc[sl]).all() and same_bits(s[bi, bj], sc[bi, bj]) and same_bits(y[sl], yc[sl]).all(),
                      f"{tag}: block {(bi, bj)} differs from the clean matrix's")
        q, s, y = outs[("blocks_nan_inf", "block128", transpose, pow2)]
        b00, b12 = (0, 0), ((2, 1) if transpose else (1, 2))
        check(np.isnan(s[b00]) and s[b12] == np.inf and (q[:BLOCK, :BLOCK] == 0x7F).all(),
              f"{tag}: NaN and -Inf in one block: scale {s[b00]!r} (expected NaN); -Inf alone: {s[b12]!r} (+Inf)")

    def need(key, min_ties=0, min_sub=0, min_flushed=0, min_poisoned=0):
        label, t, su, f, p, _n = stats[key]
        check(t >= min_ties and su >= min_sub and f >= min_flushed and p >= min_poisoned,
              f"coverage {label}: {t} ties, {su} subnormal q, {f} flushed, {p} poisoned tiles")

    for pow2 in (False, True):
        need(("rows", "row128", False, pow2), 200, 1000, 1000, 4)
        need(("ties", "block128", False, pow2), 2000, 100)
        need(("ties", "block128", True, pow2), 2000, 100)
        need(("blocks", "block128", False, pow2), 0, 100, 1000)
    for (_name, _tile, transpose, pow2), (label, t, su, f, p, n) in stats.items():
        if not transpose and not pow2:
            print(f"quantize {label}: {n} tiles ({p} poisoned), {t} exact ties, {su} e4m3 subnormals, {f} flushed")
    return len(outs)


# ---------------------------------------------------------------------------------------------------
# 3. The tool's command line


def check_cli(tool):
    f = tool.file
    x = np.arange(6, dtype="<f4")
    x.tofile(f("cli_x.bin"))
    x[:5].tofile(f("cli_short.bin"))
    out = [f("cli_q.bin"), f("cli_s.bin"), f("cli_y.bin")]
    cases = [
        ((), 2, "usage"),
        (("frobnicate",), 2, "unknown mode"),
        (("codes", f("a")), 2, "codes takes"),
        (("convert", "x", f("cli_x.bin"), f("a"), f("b")), 2, "N must be"),
        (("quantize", 2, 3, f("cli_x.bin"), *out, "--tile", "row64"), 2, "--tile must be"),
        (("quantize", 2, 3, f("cli_x.bin"), *out, "--pow2"), 2, "pairs"),
        (("quantize", 2, 3, f("cli_x.bin"), *out, "--transpose", "2"), 2, "--transpose must be"),
        (("quantize", 2, 3, f("cli_x.bin"), *out, "--speed", "1"), 2, "unknown option"),
        (("quantize", 2, 3, f("no_such_file.bin"), *out), 1, "cannot open"),
        (("quantize", 2, 3, f("cli_short.bin"), *out), 1, "does not hold 24 bytes"),
        (("convert", 7, f("cli_x.bin"), f("a"), f("b")), 1, "does not hold 28 bytes"),
        (("quantize", 2, 3, f("cli_x.bin"), os.path.join(f("no_such_dir"), "q.bin"), *out[1:]), 1, "cannot open"),
    ]
    for args, rc, msg in cases:
        r = tool.run(*args)
        check(r.returncode == rc and msg in r.stderr,
              f"tool {' '.join(map(str, args[:2]))}...: exit {r.returncode} (expected {rc}), stderr {r.stderr!r} "
              f"(expected to name {msg!r})")
    # The original 6-argument form is quantize with the defaults.
    r = tool.run(2, 3, f("cli_x.bin"), *out)
    legacy = [np.fromfile(p, dtype=np.uint8) for p in out] if r.returncode == 0 else None
    tool.ok("quantize", 2, 3, f("cli_x.bin"), *out)
    new = [np.fromfile(p, dtype=np.uint8) for p in out]
    check(legacy is not None and all((a == b).all() for a, b in zip(legacy, new)),
          f"the 6-argument form (exit {r.returncode}) differs from quantize with the defaults")
    print(f"command line: {len(cases) + 1} usage and error cases")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tool", required=True, help="the moelab_fp8_quant_tool executable")
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--seed", type=int, default=20240520)
    args = ap.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    t0 = time.time()
    tool = Tool(args.tool, args.workdir)
    rng = np.random.default_rng(args.seed)

    check_ml_dtypes_rules()
    check_codes(tool)
    check_convert(tool, rng)
    n = check_quantize(tool, rng)
    check_cli(tool)
    print(f"{n} quantisations, {tool.calls} tool runs, {time.time() - t0:.1f} s")
    if failures:
        print(f"fp8 ml_dtypes check: {len(failures)} failure(s)")
        return 1
    print("fp8 ml_dtypes check: OK (codes, conversions, q, scales and y equal ml_dtypes/numpy bit for bit)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
