#!/usr/bin/env bash
# alfa's CLIP timings next to OpenCLIP's on PyTorch, same machine, same run.
#
#   benches/compare.sh [CARGO FLAGS...]
#
# Needs the reference venv (tests/fixtures/requirements.txt) at .venv, or PYTHON=...
# Prints a Markdown table for the README; ratio = alfa / PyTorch (below 1 is faster).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
threads=${THREADS:-$(nproc)}
repeats=${REPEATS:-3}

ours=$(cargo run --quiet --release "$@" -- bench --json --repeats "$repeats")
reference=$("$python" benches/openclip_bench.py --threads "$threads" --repeats "$repeats")

python3 - "$ours" "$reference" "$*" <<'PY'
import json, platform, subprocess, sys
ours, ref, flags = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
print(f"ViT-B-16-plus-240, random weights, {ours['threads']} threads, {cpu}; alfa {flags or '(default features)'}, "
      f"open_clip_torch {ref.get('open_clip', '?')} / torch {ref['torch']}\n")
print("| case | alfa (s) | PyTorch (s) | ratio |")
print("|---|---|---|---|")
rows = [("image forward, batch 1", "image_b1_s", "image_b1_s"),
        ("image forward, batch 8", "image_b8_s", "image_b8_s"),
        ("text, 150 prompts at 77 tokens", "text_150_s", "text_150_s"),
        ("text, 150 prompts cut to the longest (alfa) vs 77 (PyTorch)", "text_150_truncated_s", "text_150_s"),
        ("365 windows, scales 2+3, tokens mode", "windows_365_s", "windows_365_s")]
for name, a, b in rows:
    print(f"| {name} | {ours[a]:.3f} | {ref[b]:.3f} | {ours[a] / ref[b]:.2f} |")
PY
