#!/usr/bin/env bash
# The batch machinery at scale: `alfa detect --threshold --report` over 1,000 and 10,000
# generated 64x64 images with the tiny fixture model, so the model costs little and what
# is measured is the rest (files, verdicts, scores.csv, summary, report).
# Prints, per run: peak RSS, wall time, the analysis time the records report (their
# stage times), and the per-image overhead = (wall - model load - analysis) / images.
# Needs ImageMagick's `convert` and python3. Usage: benches/batch.sh [ALFA_BINARY]
set -euo pipefail
cd "$(dirname "$0")/.."
alfa=${1:-target/release/alfa}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/seed"
for k in 0 1 2 3 4 5 6 7; do
  convert -size 64x64 "plasma:fractal" -seed "$k" "$work/seed/$k.png" 2>/dev/null || convert -size 64x64 "gradient:#$((k+1))0$((k+1))0f0-#20$((k))0$((k))0" "$work/seed/$k.png"
done
printf '%8s %10s %8s %12s %14s %10s\n' images peak_MiB wall_s analysis_s overhead_ms report_kB
for n in 1000 10000; do
  mkdir -p "$work/in$n"
  for ((i = 0; i < n; i++)); do cp "$work/seed/$((i % 8)).png" "$work/in$n/$(printf '%05d' "$i").png"; done
  /usr/bin/time -f '%M %e' -o "$work/time$n" "$alfa" detect --model tests/fixtures/tiny-gelu --class bottle \
    --threshold 0.1 --report --out "$work/out$n" "$work/in$n" 2>"$work/log$n" || true
  # A one-image run gives the fixed cost (process start, model load, prompt encoding).
  /usr/bin/time -f '%M %e' -o "$work/time1-$n" "$alfa" detect --model tests/fixtures/tiny-gelu --class bottle \
    --threshold 0.1 --out "$work/one$n" "$work/in$n/00000.png" 2>/dev/null || true
  python3 - "$work" "$n" <<'PY'
import json, os, sys
work, n = sys.argv[1], int(sys.argv[2])
peak_kib, wall = open(f"{work}/time{n}").read().split()[-2:]
_, fixed = open(f"{work}/time1-{n}").read().split()[-2:]
out = f"{work}/out{n}"
analysis = 0.0
for name in os.listdir(out):
    if name.endswith(".json") and name != "summary.json":
        record = json.load(open(os.path.join(out, name)))
        analysis += sum(t["seconds"] for t in record["timings"])
overhead = (float(wall) - float(fixed) - analysis) / n * 1000
report = os.path.getsize(f"{out}/report.html") / 1024
print(f"{n:8d} {int(peak_kib) / 1024:10.1f} {float(wall):8.1f} {analysis:12.1f} {overhead:14.2f} {report:10.0f}")
PY
done
