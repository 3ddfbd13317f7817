#!/usr/bin/env python3
"""Writes the evaluation documents livekv's accuracy tests and benchmarks read (no Python needed at test time).

Each line of OUT/<task>_<bytes>.jsonl is {"prompt": ..., "answer": ...}: the model reads the prompt (after
<|bos|>) and should continue with the answer. Seeds differ from training's.

Usage: python3 tools/train/make_eval_set.py models/tiny/eval [--docs 20]
"""
import argparse
import json
import os
import random
import sys

sys.path.insert(0, os.path.dirname(__file__))
import synthetic_tasks  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--docs", type=int, default=20)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for task in ["passkey", "multikey", "vartrack"]:
        for n_bytes in [1024, 2048, 4096]:
            rng = random.Random(f"eval-{task}-{n_bytes}")
            path = os.path.join(args.out, f"{task}_{n_bytes}.jsonl")
            with open(path, "w") as f:
                for _ in range(args.docs):
                    prompt, answer = synthetic_tasks.make_document(rng, n_bytes, task)
                    f.write(json.dumps({"prompt": prompt, "answer": answer}) + "\n")
            print("wrote", path)


if __name__ == "__main__":
    main()
