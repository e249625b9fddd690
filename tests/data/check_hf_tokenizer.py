#!/usr/bin/env python3
"""Checks that Hugging Face `tokenizers` reads moelab's tokenizer.json files and agrees with moelab.

moelab (through tests/data/tools/data_tool.cpp) builds a char, a byte and two byte-level BPE
tokenizers and saves them as tokenizer.json; `tokenizers.Tokenizer.from_file` loads each, and
for a set of texts (tinyshakespeare, multilingual text, random Unicode, special tokens) both must
give the same ids and decode to the same text. The GPT-2 pre-tokenizer split, written by hand in
data/pretokenize.cpp, is also compared piece by piece with `tokenizers`' own on text holding every
Unicode code point. Finally a token shard written here the way llm.c's Python writes it must read
back in moelab with the same tokens.

Exit status: 0 pass, 1 mismatch, 77 skipped (the `tokenizers` package is not installed:
    python3 -m pip install tokenizers).

    python3 tests/data/check_hf_tokenizer.py --tool build/tests/moelab_data_tool \\
        --corpus ../shared/data/tinyshakespeare.txt --workdir /tmp/hf_check
"""
import argparse
import array
import os
import random
import subprocess
import sys
import time

SKIP = 77

try:
    from tokenizers import Tokenizer, pre_tokenizers
except ImportError:
    print("SKIP: the Python package `tokenizers` is not installed (python3 -m pip install tokenizers)")
    sys.exit(SKIP)


def run_tool(tool, *args):
    r = subprocess.run([tool, *args], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"FAIL: {tool} {' '.join(args)}\n{r.stdout}{r.stderr}")
    return r.stdout


def write_text(path, text):
    with open(path, "wb") as f:
        f.write(text.encode("utf-8"))


def moelab_ids(tool, tok_path, text_path, mode):
    out = text_path + "." + os.path.basename(tok_path) + "." + mode + ".ids"
    run_tool(tool, "encode", tok_path, text_path, out, mode)
    with open(out) as f:
        return [int(x) for x in f.read().split()]


def first_difference(a, b):
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))


def multilingual_text():
    return "\n".join([
        "Hello, world! It's a test: don't, we'll, they've, I'd, you're, I'M LOUD.",
        "Numbers 1234567890 and 3.14159, ½ ¾, Ⅻ, ٣٤٥ and ४५६.",
        "Français: à la carte, être, garçon. Deutsch: Straße, über, Größe.",
        "Русский текст, Ελληνικά, עברית, العربية, हिन्दी, தமிழ், ไทย.",
        "中文字符和日本語のテキスト、한국어 텍스트。",
        "Emoji 😀🎉👍🏽 and symbols ™ © ® → ∑ ∫ ≠ ≤.",
        "White\tspace\r\n  two  spaces   three\u00a0nbsp\u3000ideographic\u2028line\u2029para\u200bzw",
        "   leading spaces, trailing spaces   ",
        "\n\n\nnewlines\n\n",
        "punctuation!!! ??? ... --- ''' \"\"\" ((())) [[]] {{}}",
        "mixed123abc abc123 123 456 a1b2c3",
    ])


def random_unicode(rng, n):
    # Code points from a mix of ranges, the ASCII ones most often; no surrogates.
    ranges = [(0x20, 0x7E)] * 6 + [(0x09, 0x0D), (0xA0, 0x24F), (0x370, 0x52F), (0x590, 0x6FF), (0x900, 0xDFF),
                                   (0x2000, 0x206F), (0x3000, 0x30FF), (0x4E00, 0x9FFF), (0xAC00, 0xD7A3),
                                   (0x1F300, 0x1FAFF), (0x10000, 0x1FFFF), (0xE000, 0xFFFD)]
    out = []
    for _ in range(n):
        lo, hi = rng.choice(ranges)
        out.append(chr(rng.randint(lo, hi)))
    return "".join(out)


def every_code_point_text(rng):
    # Every code point in order: the pieces break exactly where the character class changes, so
    # one misclassified code point moves a boundary. Then all of them shuffled (every class next
    # to every other), then a sample after a letter, a digit, a space, a newline and a contraction.
    cps = [cp for cp in range(0x110000) if not 0xD800 <= cp < 0xE000]
    in_order = "".join(map(chr, cps))
    shuffled = cps[:]
    rng.shuffle(shuffled)
    contexts = "".join("a" + c + "1" + c + " " + c + "\n" + c + "'s" + c + "." for c in map(chr, rng.sample(cps, 20000)))
    return in_order + "\n" + "".join(map(chr, shuffled)) + "\n" + contexts


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tool", required=True, help="path of moelab_data_tool")
    ap.add_argument("--corpus", default="", help="tinyshakespeare.txt (a built-in text when missing)")
    ap.add_argument("--workdir", required=True)
    args = ap.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    w = lambda name: os.path.join(args.workdir, name)
    failures = []

    if args.corpus and os.path.exists(args.corpus):
        with open(args.corpus, "rb") as f:
            corpus = f.read().decode("utf-8")
    else:
        print(f"note: corpus {args.corpus!r} not found, using a built-in text")
        corpus = (multilingual_text() + "\n") * 200
    write_text(w("corpus.txt"), corpus)
    multi = multilingual_text()
    rng = random.Random(1234)
    mixed_corpus = corpus[:300000] + "\n" + (multi + "\n") * 20 + random_unicode(rng, 20000)
    write_text(w("mixed_corpus.txt"), mixed_corpus)

    # 1. The split, piece by piece, on every code point.
    t0 = time.time()
    text = every_code_point_text(rng)
    write_text(w("all_code_points.txt"), text)
    run_tool(args.tool, "split", w("all_code_points.txt"), w("all_code_points.pieces"))
    with open(w("all_code_points.pieces"), encoding="utf-8") as f:
        ours = f.read().split("\n")[:-1]
    hf_split = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    theirs = [p for p, _ in hf_split.pre_tokenize_str(text)]
    if ours != theirs:
        i = first_difference(ours, theirs)
        failures.append(f"split of every code point: piece {i} differs: moelab {ours[i:i + 3]} vs "
                        f"tokenizers {theirs[i:i + 3]}")
    print(f"split: {len(theirs)} pieces of {len(text)} characters compared ({time.time() - t0:.1f} s)")

    # 2. Tokenizers built by moelab, loaded by `tokenizers`.
    builds = [("char", "corpus.txt", 0), ("byte", "corpus.txt", 0), ("bpe", "corpus.txt", 4096),
              ("bpe", "mixed_corpus.txt", 1500)]
    texts = {"corpus": corpus, "multilingual": multi, "random_unicode": random_unicode(rng, 50000),
             "special": "Hello<|endoftext|>world <|endoftext|><|endoftext|>x <|endof",
             "empty": ""}
    for name, t in texts.items():
        write_text(w(f"text_{name}.txt"), t)
    for kind, source, vocab in builds:
        tok_path = w(f"tokenizer_{kind}_{vocab}.json")
        t0 = time.time()
        run_tool(args.tool, "build", kind, w(source), str(vocab), tok_path)
        built_s = time.time() - t0
        hf = Tokenizer.from_file(tok_path)
        label = f"{kind} ({source}, {hf.get_vocab_size()} tokens)"
        print(f"{label}: built by moelab in {built_s:.2f} s, loaded by tokenizers")
        for name, t in texts.items():
            if kind == "char" and name not in ("corpus", "empty"):
                continue  # a char alphabet covers only its own text
            mode = "special" if name == "special" else "plain"
            if kind != "bpe" and mode == "special":
                continue  # char and byte have no special tokens
            ours = moelab_ids(args.tool, tok_path, w(f"text_{name}.txt"), mode)
            theirs = hf.encode(t, add_special_tokens=False).ids
            if ours != theirs:
                i = first_difference(ours, theirs)
                failures.append(f"{label} on {name}: {len(ours)} vs {len(theirs)} ids, first difference at {i}: "
                                f"moelab {ours[i:i + 8]} vs tokenizers {theirs[i:i + 8]}")
                continue
            back = hf.decode(theirs, skip_special_tokens=False)
            if back != t:
                failures.append(f"{label} on {name}: tokenizers' decode differs from the text")
            print(f"  {name}: {len(ours)} ids agree")

    # 3. The other way round: a tokenizer trained by `tokenizers` (specials first, its own id order,
    # merges as pairs) read by moelab.
    from tokenizers import decoders, models, trainers
    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.decoder = decoders.ByteLevel()
    hf.train([w("mixed_corpus.txt")], trainers.BpeTrainer(
        vocab_size=2000, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    hf.save(w("tokenizer_trained_by_hf.json"))
    for name, t in texts.items():
        mode = "special" if name == "special" else "plain"
        ours = moelab_ids(args.tool, w("tokenizer_trained_by_hf.json"), w(f"text_{name}.txt"), mode)
        theirs = hf.encode(t, add_special_tokens=False).ids
        if ours != theirs:
            i = first_difference(ours, theirs)
            failures.append(f"tokenizer trained by tokenizers, on {name}: first difference at {i}: "
                            f"moelab {ours[i:i + 8]} vs tokenizers {theirs[i:i + 8]}")
    print(f"a tokenizer trained by tokenizers ({hf.get_vocab_size()} tokens): read by moelab, ids compared")

    # 4. A shard written the way llm.c's Python does (dev/data/data_common.py, write_datafile).
    toks = [50256, 15496, 11, 995, 0, 40000, 32768, 65535]
    header = array.array("i", [0] * 256)
    header[0], header[1], header[2] = 20240520, 1, len(toks)
    with open(w("llmc.bin"), "wb") as f:
        f.write(header.tobytes())
        f.write(array.array("H", toks).tobytes())
    got = [int(x) for x in run_tool(args.tool, "shard", w("llmc.bin"), "65536").split()]
    if got != toks:
        failures.append(f"llm.c shard: moelab read {got}, expected {toks}")
    else:
        print(f"llm.c shard written by Python: {len(toks)} tokens read back")

    if failures:
        print("FAIL:\n  " + "\n  ".join(failures))
        return 1
    print("PASS: tokenizers agrees with moelab")
    return 0


if __name__ == "__main__":
    sys.exit(main())
