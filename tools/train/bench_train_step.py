#!/usr/bin/env python3
"""Where a training step of train_tiny.py spends its time (run on the GPU machine).

Prints, per document length: the time one process takes to generate a batch (train_tiny's workers), the share of
the batch that is padding, and the time of one training step (forward, backward, optimizer) with each
scaled_dot_product_attention backend, eager and under torch.compile, next to the attention's FLOP rate.

Usage: python3 tools/train/bench_train_step.py [--lengths 2048,8192,24576] [--batch_tokens 65536]
           [--backends flash,cudnn,efficient] [--compile]
"""
import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, os.path.dirname(__file__))
import train_tiny  # noqa: E402

BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION}


def step_seconds(model, opt, ids, w, reps):
    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(ids).logits
        loss_tok = F.cross_entropy(logits[:, :-1].float().reshape(-1, 259), ids[:, 1:].reshape(-1),
                                   reduction="none")
        loss = (loss_tok * w[:, :-1].reshape(-1)).sum() / w[:, :-1].sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    t = time.time()
    for _ in range(reps):
        step()
    torch.cuda.synchronize()
    return (time.time() - t) / reps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", default="2048,8192,24576")
    ap.add_argument("--batch_tokens", type=int, default=65536)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--backends", default=",".join(BACKENDS))
    ap.add_argument("--compile", action="store_true", help="also time the model under torch.compile")
    args = ap.parse_args()
    config = LlamaConfig(vocab_size=259, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                         num_attention_heads=8, num_key_value_heads=2, head_dim=32, rope_theta=1e5,
                         max_position_embeddings=131072, tie_word_embeddings=True)
    config._attn_implementation = "sdpa"
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    print("length  batch  gen_s  pad  backend    mode     step_ms  attn_TFLOP/s  tokens/s")
    for length in (int(x) for x in args.lengths.split(",")):
        batch = max(1, args.batch_tokens // length)
        t = time.time()
        ids, w = train_tiny.make_batch(1, batch, length, train_tiny.FAMILIES)
        gen = time.time() - t
        pad = float((ids == train_tiny.PAD).float().mean())
        ids, w = ids.cuda(), w.cuda()
        # Causal attention FLOPs of forward + backward (2.5x forward) over the 4 layers, padding included.
        attn_flop = 4 * batch * 8 * 4 * 32 * length * length / 2 * 3.5
        modes = [("eager", False)] + ([("compile", True)] if args.compile else [])
        for name in args.backends.split(","):
            backend = BACKENDS[name]
            for mode, compiled in modes:
                torch.manual_seed(0)
                model = LlamaForCausalLM(config).cuda()
                if compiled:
                    model = torch.compile(model, dynamic=True)
                opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
                try:
                    with sdpa_kernel(backend):
                        s = step_seconds(model, opt, ids, w, args.reps)
                except Exception as e:  # a backend that refuses this shape
                    print(f"{length:6d} {batch:6d} {gen:6.3f} {pad:4.2f}  {name:9s}  {mode:7s}  refused: "
                          f"{str(e).splitlines()[0][:80]}")
                    continue
                print(f"{length:6d} {batch:6d} {gen:6.3f} {pad:4.2f}  {name:9s}  {mode:7s}  {s * 1e3:7.2f}  "
                      f"{attn_flop / s / 1e12:12.1f}  {batch * length / s:9.0f}", flush=True)


if __name__ == "__main__":
    main()
