#!/usr/bin/env python3
"""CPU benchmark of DINOv2 ViT-S/14 in timm (PyTorch), for comparison with alfa's
candle-transformers DINOv2 (`alfa bench --dinov2 FILE`).

    .venv/bin/python benches/dinov2_bench.py --save weights.safetensors [--threads N] [--repeats R]

Model: timm's VisionTransformer with DINOv2 ViT-S/14's configuration (518 px, patch 14,
width 384, 12 blocks, 6 heads, layer scale, norm eps 1e-6, exact GELU), random init,
fp32, eval, torch.inference_mode. --save writes its weights under DINOv2's names
(the layout alfa loads), so both sides run the same random weights of the real shapes.
Cases (1 warm-up run each, then the median of R runs):
  forward_b1_s   forward_features + L2-normalised patch tokens, batch 1, 518 x 518
  forward_b8_s   the same, one batch of 8
Prints one JSON object on stdout; human-readable lines go to stderr.
"""
import argparse
import json
import statistics
import sys
import time
from functools import partial

import timm
import torch
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer
from torch import nn


def timed(repeats, fn):
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--save", help="write the random weights here (safetensors)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = VisionTransformer(
        img_size=518, patch_size=14, embed_dim=384, depth=12, num_heads=6, mlp_ratio=4.0, qkv_bias=True,
        init_values=1e-5, num_classes=0, norm_layer=partial(nn.LayerNorm, eps=1e-6),
    ).eval()
    if args.save:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, args.save)
    out = {"impl": "timm", "timm": timm.__version__, "torch": torch.__version__, "threads": torch.get_num_threads()}
    for batch in (1, 8):
        x = torch.randn(batch, 3, 518, 518)

        def forward():
            with torch.inference_mode():
                tokens = model.forward_features(x)
                return nn.functional.normalize(tokens[:, 1:], dim=-1)

        median, best = timed(args.repeats, forward)
        out[f"forward_b{batch}_s"], out[f"forward_b{batch}_best_s"] = median, best
        print(f"timm forward, batch {batch}: {median:.3f} s", file=sys.stderr)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
