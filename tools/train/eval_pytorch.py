#!/usr/bin/env python3
"""Greedy answers of a saved model on evaluation sets, in PyTorch (run on the GPU machine): train_tiny.py's own
evaluation (fp32 from the saved weights, exact match), for a model already trained or for larger sets than the
committed 20 documents, e.g. 60 per set written by `make_eval_set.py DIR --docs 60` (its first 20 are the
committed ones). The output is what `livekv_eval --eval_dir=DIR --pytorch=OUT` compares the C++ engine with.

Usage: python3 tools/train/eval_pytorch.py MODEL_DIR --eval_dir DIR [--docs 60] --out OUT.json
"""
import argparse
import json
import os
import sys
import time

import torch
from transformers import LlamaForCausalLM

sys.path.insert(0, os.path.dirname(__file__))
import train_tiny  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--eval_dir", required=True)
    ap.add_argument("--docs", type=int, default=20)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = LlamaForCausalLM.from_pretrained(args.model, dtype=torch.float32, attn_implementation="sdpa").to(device)
    t = time.time()
    result = train_tiny.evaluate(model, args.eval_dir, args.docs, device)
    print(f"{args.model}: {time.time() - t:.0f} s,", json.dumps(result["accuracy"]), flush=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
