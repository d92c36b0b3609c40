#!/usr/bin/env bash
# alfa's DINOv2 (candle-transformers) next to timm's on PyTorch, same machine, same run,
# on the same random weights of DINOv2 ViT-S/14's shapes; then few-shot detection with
# 16 references (DINOv2 bank built) against zero-shot ALFA on one 900x900 image
# (random ViT-B-16-plus-240 CLIP weights).
#
#   benches/dinov2.sh [CARGO FLAGS...]        a release build (the default)
#   PROFILE=dev benches/dinov2.sh             the debug build: candle and its kernels are
#                                             optimised in it too (Cargo.toml), so the DINOv2
#                                             figures hold; alfa's own code is not (CLIP's
#                                             packed kernels, the aligner), so the detection
#                                             part is skipped unless ENGINE=1
#
# Needs the reference venv (tests/fixtures/requirements.txt) at .venv, or PYTHON=...
# Prints Markdown for the README; ratio = alfa / timm (below 1 is faster).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
threads=${THREADS:-$(nproc)}
repeats=${REPEATS:-3}
profile=${PROFILE:-release}
weights=$(mktemp -d)/dinov2_vits14_random.safetensors
trap 'rm -rf "$(dirname "$weights")"' EXIT

reference=$("$python" benches/dinov2_bench.py --threads "$threads" --repeats "$repeats" --save "$weights")
alfa=(cargo run --quiet --profile "$profile" "$@" --)
forward=$("${alfa[@]}" bench --dinov2 "$weights" --json --repeats "$repeats")
engine='{"runs": []}'
if [ "$profile" = release ] || [ -n "${ENGINE:-}" ]; then
  engine=$("${alfa[@]}" bench --engine --dinov2 "$weights" --json --repeats "$repeats" \
    --tokenizer "${TOKENIZER:-../shared/clip/tokenizer.json}")
else
  echo "detection skipped: alfa's own code is not optimised in the $profile build (ENGINE=1 runs it anyway)" >&2
fi
python3 - "$forward" "$reference" "$engine" "$profile" <<'PY'
import json, platform, sys
ours, ref, engine, profile = json.loads(sys.argv[1]), json.loads(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
flags = sorted({f for l in open("/proc/cpuinfo") if l.startswith("flags") for f in l.split() if f.startswith("avx512")})
print(f"DINOv2 ViT-S/14 shapes, random weights, {ours['threads']} threads, {cpu} ({' '.join(flags) or 'no AVX-512'}); "
      f"alfa {profile} build, timm {ref['timm']} / torch {ref['torch']}\n")
print("| case | alfa (s) | timm (s) | ratio |")
print("|---|---|---|---|")
for b in (1, 8):
    a, t = ours[f"forward_b{b}_s"], ref[f"forward_b{b}_s"]
    print(f"| DINOv2 forward at 518 px, batch {b} | {a:.3f} | {t:.3f} ({ref[f'forward_b{b}_best_s']:.3f} fastest) | {a / t:.2f} |")
print("\nWhere alfa's forward goes (each operation timed alone on the model's shapes):\n")
print("| operation | ms each | per forward | ms per forward |")
print("|---|---|---|---|")
for op in ours["ops"]:
    print(f"| {op['op']} | {op['each_s'] * 1e3:.2f} | {op['per_forward']} | {op['each_s'] * 1e3 * op['per_forward']:.1f} |")
if not engine["runs"]:
    sys.exit(0)
print(f"\nDetection on one {engine['image']} image ({engine['arch']} random weights, class `{engine['class']}`):\n")
print("| case | alfa (s) | stages |")
print("|---|---|---|")
zero = None
for run in engine["runs"]:
    stages = ", ".join(f"{s['stage']} {s['seconds']:.2f}" for s in run["stages"])
    name = "zero-shot" if not run["references"] else f"few-shot, {run['references']} references, {run['refs_backbone']} bank"
    zero = zero or run["total_s"]
    print(f"| {run['window_mode']} mode, {name} | {run['total_s']:.3f} ({run['total_s'] / zero:.2f}x zero-shot) | {stages} |")
PY
