#!/usr/bin/env bash
# alfa's CLIP timings next to OpenCLIP's on PyTorch, same machine, same run.
#
#   benches/compare.sh [CARGO FLAGS...]            the CLIP towers
#   ENGINE=1 benches/compare.sh [CARGO FLAGS...]   the whole detector on a 900x900 image
#   PRECISION=bf16 ...                             alfa's bf16 image tower against PyTorch
#                                                  under bf16 autocast (default: f32 and f32)
#   FAMILIES="avx512 avx2 portable" ENGINE=1 ...   alfa once per CPU kernel family (ALFA_CPU),
#                                                  side by side (default: the widest, or ALFA_CPU)
#   TORCH_ISA=avx2 ...                             PyTorch limited to AVX2 (ATen, MKL, oneDNN):
#                                                  an AVX-512 machine standing in for an AVX2 one
#
# Needs the reference venv (tests/fixtures/requirements.txt) at .venv, or PYTHON=...
# Prints a Markdown table for the README; ratio = alfa / PyTorch (below 1 is faster).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
threads=${THREADS:-$(nproc)}
repeats=${REPEATS:-3}
precision=${PRECISION:-f32}
case "$precision" in
  f32) torch_precision=() ;;
  bf16) torch_precision=(--bf16) ;;
  *) echo "PRECISION must be f32 or bf16, not $precision" >&2; exit 2 ;;
esac
case "${TORCH_ISA:-}" in
  "") torch_isa=() ;;
  avx2) torch_isa=(ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 DNNL_MAX_CPU_ISA=AVX2) ;;
  *) echo "TORCH_ISA must be avx2 or unset, not $TORCH_ISA" >&2; exit 2 ;;
esac

if [ -n "${ENGINE:-}" ]; then
  tokenizer=${TOKENIZER:-../shared/clip/tokenizer.json}
  ours=()
  # One empty family (the widest) unless FAMILIES or ALFA_CPU name some.
  for family in ${FAMILIES:-"${ALFA_CPU:-}"}; do
    ours+=("$(ALFA_CPU=$family cargo run --quiet --release "$@" -- bench --engine --json --repeats "$repeats" \
      --precision "$precision" --threads "$threads" --tokenizer "$tokenizer" ${PIXELS:+--pixels})")
  done
  texts=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["class_texts"])' "${ours[0]}")
  reference=$(env "${torch_isa[@]}" "$python" benches/openclip_bench.py --threads "$threads" --repeats "$repeats" \
    --texts "$texts" --text-batch 150 "${torch_precision[@]}")
  python3 - "$reference" "$*" "${ours[@]}" <<'PY'
import json, platform, re, sys
ref, flags, all_ours = json.loads(sys.argv[1]), sys.argv[2], [json.loads(a) for a in sys.argv[3:]]
ours = all_ours[0]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
isa = " ".join(sorted(set(re.findall(r"\b(avx512[a-z_0-9]*|avx2|fma)\b", open("/proc/cpuinfo").read()))))
n = ours["class_texts"]
print(f"ViT-B-16-plus-240, random weights, {ours['threads']} threads, {cpu} ({isa}); alfa {flags or '(default features)'}, "
      f"open_clip_torch {ref.get('open_clip', '?')} / torch {ref['torch']} (ATen CPU capability "
      f"{ref.get('cpu_capability', '?')}); one {ours['image']} image, scales 2,3; "
      f"image tower {ours['precision']}, PyTorch {ref['precision']}\n")
print("Medians of the runs; in brackets the fastest run of each (noise on a shared machine only adds time).\n")
print("| case | alfa (s) | PyTorch (s) | ratio |")
print("|---|---|---|---|")
torch_image = ref["image_b1_s"] + ref["windows_365_s"]
torch_best = ref["image_b1_best_s"] + ref["windows_365_best_s"]
for ours in all_ours:
  family = f"alfa {ours['cpu']} kernels, " if ours.get("cpu") else ""
  for run in ours["runs"]:
    stages = ", ".join(f"{s['stage']} {s['seconds']:.2f}" for s in run["stages"])
    refs = f", {run['references']} references" if run["references"] else ""
    if run["window_mode"] == "pixels":
        # The paper's mode is 365 full forwards of masked images, timed once: PyTorch's
        # side is its global forward plus 365 image forwards at its batch-8 rate.
        versus = "PyTorch global forward + 365 full forwards (at its batch-8 rate)"
        torch, best = (ref[f"image_b1{k}"] + 365 * ref[f"image_b8{k}"] / 8 for k in ("_s", "_best_s"))
    else:
        versus, torch, best = "PyTorch global forward + 365 windows", torch_image, torch_best
    print(f"| {family}detect, {run['window_mode']} mode{refs} ({stages}) vs {versus} | "
          f"{run['total_s']:.3f} ({run['best_s']:.3f}) | {torch:.3f} ({best:.3f}) | "
          f"{run['total_s'] / torch:.2f} ({run['best_s'] / best:.2f}) |")
  print(f"| {family}encode the class's {n} prompts, cut to the longest per batch (alfa) vs 77 tokens (PyTorch) | "
        f"{ours['class_text_s']:.3f} | {ref[f'text_{n}_s']:.3f} | {ours['class_text_s'] / ref[f'text_{n}_s']:.2f} |")
  agreement = ours.get("versus_f32")
  if agreement:
    print(f"\n{family}alfa bf16 against alfa f32 (same weights), tokens mode: map max |diff| {agreement['map']['max_abs_diff']:.4f}, "
          f"correlation {agreement['map']['correlation']:.5f}; image score {agreement['image_score']:.4f} "
          f"(f32 {agreement['image_score_f32']:.4f})")
PY
  exit 0
fi

ours=$(cargo run --quiet --release "$@" -- bench --json --repeats "$repeats" --precision "$precision" --threads "$threads")
reference=$(env "${torch_isa[@]}" "$python" benches/openclip_bench.py --threads "$threads" --repeats "$repeats" "${torch_precision[@]}")

python3 - "$ours" "$reference" "$*" <<'PY'
import json, platform, subprocess, sys
ours, ref, flags = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
print(f"ViT-B-16-plus-240, random weights, {ours['threads']} threads, {cpu}; alfa {flags or '(default features)'}, "
      f"open_clip_torch {ref.get('open_clip', '?')} / torch {ref['torch']} (ATen CPU capability "
      f"{ref.get('cpu_capability', '?')}); alfa kernels {ours['kernels']} ({ours.get('cpu') or '-'}); image tower {ours['precision']}, "
      f"PyTorch {ref['precision']}\n")
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
