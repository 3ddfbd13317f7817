#!/usr/bin/env python3
"""Trains livekv's small model on synthetic long-context retrieval tasks (run on the GPU machine).

A byte-level Llama (vocabulary 259: bytes, <|bos|>=256, <|eos|>=257, <|pad|>=258), trained from scratch on
documents of filler prose with facts hidden in them (tools/train/synthetic_tasks.py), with a length curriculum up
to --max_len bytes. Writes a Hugging Face model directory (config.json, model.safetensors, livekv_tokenizer.json,
train_log.json) that livekv loads directly.

Usage: python3 tools/train/train_tiny.py --out OUT_DIR [--seconds 330]
"""
import argparse
import json
import math
import os
import random
import sys
import time

import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, os.path.dirname(__file__))
import synthetic_tasks  # noqa: E402

BOS, EOS, PAD = 256, 257, 258


def encode(text):
    return list(text.encode("utf-8"))


def make_batch(rng, batch, length):
    ids = torch.full((batch, length), PAD, dtype=torch.long)
    weights = torch.zeros((batch, length))
    for b in range(batch):
        n_bytes = rng.randint(length // 4, length - 64)
        prompt, answer = synthetic_tasks.make_document(rng, n_bytes)
        toks = [BOS] + encode(prompt)
        ans = encode(answer) + [EOS]
        toks = (toks + ans)[:length]
        ids[b, :len(toks)] = torch.tensor(toks)
        # Next-token loss on the whole document; the answer counts 20x (it is what the tasks test).
        w = torch.zeros(length)
        w[:len(toks) - 1] = 1.0
        a0 = min(len(toks), 1 + len(encode(prompt))) - 1
        w[a0:len(toks) - 1] = 20.0
        weights[b] = w
    return ids, weights


def evaluate(model, rng, lengths, trials, device):
    model.eval()
    out = {}
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        for length in lengths:
            for task in ["passkey", "multikey", "vartrack"]:
                ok = 0
                for _ in range(trials):
                    prompt, answer = synthetic_tasks.make_document(rng, length, task)
                    ids = torch.tensor([[BOS] + encode(prompt)], device=device)
                    want = encode(answer)
                    got = []
                    past = None
                    x = ids
                    for _ in range(len(want)):
                        o = model(x, past_key_values=past, use_cache=True)
                        past = o.past_key_values
                        t = int(o.logits[0, -1].argmax())
                        got.append(t)
                        x = torch.tensor([[t]], device=device)
                    ok += got == want
                out[f"{task}@{length}"] = ok / trials
    model.train()
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--seconds", type=float, default=330)
    ap.add_argument("--max_len", type=int, default=4096)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    device = "cuda"
    config = LlamaConfig(vocab_size=259, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                         num_attention_heads=8, num_key_value_heads=2, head_dim=32, rope_theta=100000.0,
                         max_position_embeddings=131072, rms_norm_eps=1e-5, tie_word_embeddings=True,
                         bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD)
    config._attn_implementation = "sdpa"
    model = LlamaForCausalLM(config).to(device)
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1.5e-3, betas=(0.9, 0.95), weight_decay=0.05)
    batch_tokens = 65536
    t0 = time.time()
    step = 0
    log = []
    while True:
        elapsed = time.time() - t0
        if elapsed > args.seconds:
            break
        frac = elapsed / args.seconds
        # Length curriculum: 512 -> max_len over the first 70% of the time, then mixed lengths.
        if frac < 0.7:
            length = int(512 * (args.max_len / 512) ** (frac / 0.7))
        else:
            length = rng.choice([1024, 2048, args.max_len])
        length = max(256, (length // 64) * 64)
        batch = max(4, batch_tokens // length)
        lr = 1.5e-3 * min(1.0, (step + 1) / 200) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = lr
        ids, w = make_batch(rng, batch, length)
        ids, w = ids.to(device), w.to(device)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(ids).logits
        loss_tok = F.cross_entropy(logits[:, :-1].float().reshape(-1, 259), ids[:, 1:].reshape(-1), reduction="none")
        loss = (loss_tok * w[:, :-1].reshape(-1)).sum() / w[:, :-1].sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 100 == 0:
            print(f"step {step} t={elapsed:.0f}s len={length} batch={batch} lr={lr:.2e} loss={loss.item():.4f}",
                  flush=True)
            log.append({"step": step, "seconds": round(elapsed, 1), "length": length, "loss": loss.item()})
        step += 1
    eval_rng = random.Random(12345)
    acc = evaluate(model, eval_rng, [1024, 2048, 4096], 30, device)
    print("eval (greedy, exact answer):", json.dumps(acc), flush=True)
    os.makedirs(args.out, exist_ok=True)
    model.to(torch.float32).save_pretrained(args.out, safe_serialization=True)
    for f in os.listdir(args.out):
        if f not in ("config.json", "model.safetensors"):
            os.remove(os.path.join(args.out, f))
    with open(os.path.join(args.out, "livekv_tokenizer.json"), "w") as f:
        f.write('{"type": "byte"}\n')
    with open(os.path.join(args.out, "train_log.json"), "w") as f:
        json.dump({"parameters": params, "steps": step, "seconds": round(time.time() - t0, 1),
                   "torch": torch.__version__, "gpu": torch.cuda.get_device_name(), "log": log,
                   "eval_transformers_bf16": acc}, f, indent=1)
    print(f"saved {args.out}: {params} parameters, {step} steps", flush=True)


if __name__ == "__main__":
    main()
