#!/usr/bin/env python3
"""Where a training step of train_tiny.py spends its time (run on the GPU machine).

Prints, per document length: the time one process takes to generate a batch (train_tiny's workers), the share of
the batch that is padding, and the time of one training step (forward, backward, clipping, optimizer) with each
scaled_dot_product_attention backend and each forward: transformers' LlamaForCausalLM under bf16 autocast (`hf`),
fast_llama.FastLlamaTraining eager (`fast`) and under torch.compile (`compiled`, attention outside the graphs), next
to the attention's FLOP rate.

--check first compares fast_llama's token losses with transformers' on the same parameters (fp32 math attention,
then bf16) and exits non-zero if they differ by more than the bf16 tolerance. --profile prints the 15 costliest GPU
kernels of one step of each forward at the first length.

Usage: python3 tools/train/bench_train_step.py [--lengths 2048,8192,24576] [--batch_tokens 65536]
           [--backends cudnn,flash] [--forwards hf,fast,compiled] [--check] [--profile] [--traceback]
"""
import argparse
import os
import sys
import time
import traceback

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, os.path.dirname(__file__))
import fast_llama  # noqa: E402
import train_tiny  # noqa: E402

BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION}


def tiny_config():
    config = LlamaConfig(vocab_size=259, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                         num_attention_heads=8, num_key_value_heads=2, head_dim=32, rope_theta=1e5,
                         max_position_embeddings=131072, tie_word_embeddings=True)
    config._attn_implementation = "sdpa"
    return config


def hf_token_losses(model, ids):
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = model(ids).logits
    return F.cross_entropy(logits[:, :-1].float().reshape(-1, 259), ids[:, 1:].reshape(-1),
                           reduction="none").view(ids.shape[0], -1)


def make_step(forward, model, opt, ids, w):
    def step():
        loss_tok = forward(ids)
        loss = (loss_tok * w[:, :-1]).sum() / w[:, :-1].sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return step


def seconds_per_step(step, reps):
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    t = time.time()
    for _ in range(reps):
        step()
    torch.cuda.synchronize()
    return (time.time() - t) / reps


def forward_of(name, model):
    if name == "hf":
        return lambda ids: hf_token_losses(model, ids)
    return fast_llama.FastLlamaTraining(model, compile=name == "compiled").token_losses


def grads(model, losses, ids, w):
    model.zero_grad(set_to_none=True)
    ((losses(ids) * w[:, :-1]).sum() / w[:, :-1].sum()).backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def check(config):
    """fast_llama against transformers on one model and batch: token losses and the weighted loss's gradients
    against transformers in fp32 (math attention): fast_llama in fp32, then transformers (autocast) and fast_llama
    (eager and compiled) in bf16 with each attention backend. The largest relative gradient error over the
    parameter tensors must be within the precision's tolerance, and fast_llama's no worse than 1.5x
    transformers' own bf16 error."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).cuda()
    ids, w = train_tiny.make_batch(7, 4, 1024, train_tiny.FAMILIES)
    ids, w = ids.cuda(), w.cuda()

    def hf_fp32(x):
        return F.cross_entropy(model(x).logits[:, :-1].reshape(-1, 259), x[:, 1:].reshape(-1),
                               reduction="none").view(x.shape[0], -1)
    with sdpa_kernel([SDPBackend.MATH]):
        with torch.no_grad():
            ref_losses = hf_fp32(ids)
        ref_grads = grads(model, hf_fp32, ids, w)
    compiled = fast_llama.FastLlamaTraining(model, compile=True).token_losses
    cases = [("fast fp32 math", SDPBackend.MATH,
              fast_llama.FastLlamaTraining(model, compile=False, dtype=torch.float32).token_losses, 2e-4, 1e-4)]
    for name in ("cudnn", "flash"):
        cases += [(f"transformers bf16 {name}", BACKENDS[name], lambda x: hf_token_losses(model, x), 3e-2, 3e-2),
                  (f"fast bf16 {name}", BACKENDS[name],
                   fast_llama.FastLlamaTraining(model, compile=False).token_losses, 3e-2, 3e-2),
                  (f"compiled bf16 {name}", BACKENDS[name], compiled, 3e-2, 3e-2)]
    ok = True
    hf_error = {}
    for label, backend, fn, loss_tol, grad_tol in cases:
        with sdpa_kernel([backend]):
            with torch.no_grad():
                diff = float((fn(ids) - ref_losses).abs().max())
            g = grads(model, fn, ids, w)
        rel = {n: float((g[n] - ref_grads[n]).norm() / ref_grads[n].norm().clamp_min(1e-30)) for n in g}
        worst = max(rel, key=rel.get)
        backend_name = label.rsplit(" ", 1)[1]
        if label.startswith("transformers"):
            hf_error[backend_name] = rel[worst]
        else:
            grad_tol = max(grad_tol, 1.5 * hf_error.get(backend_name, 0.0))
        print(f"check {label}: max |token loss - fp32 transformers| {diff:.2e} (tolerance {loss_tol:g}); "
              f"largest relative gradient error {rel[worst]:.2e} ({worst}; tolerance {grad_tol:.2g})", flush=True)
        ok &= diff <= loss_tol and rel[worst] <= grad_tol
    return ok


def profile(step, label):
    from torch.profiler import ProfilerActivity, profile as torch_profile
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t = time.time()
        for _ in range(3):
            step()
        torch.cuda.synchronize()
        wall = (time.time() - t) / 3
    events = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
    gpu = sum(e.self_device_time_total for e in events) / 3 / 1e3
    print(f"profile {label}: wall {wall * 1e3:.2f} ms/step, GPU kernels {gpu:.2f} ms/step")
    for e in sorted(events, key=lambda e: -e.self_device_time_total)[:15]:
        print(f"  {e.self_device_time_total / 3 / 1e3:7.3f} ms  x{e.count // 3:<4d} {e.key[:90]}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", default="2048,8192,24576")
    ap.add_argument("--batch_tokens", type=int, default=65536)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--backends", default="cudnn,flash")
    ap.add_argument("--forwards", default="hf,fast,compiled")
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--traceback", action="store_true", help="the whole traceback of a backend that refuses")
    args = ap.parse_args()
    config = tiny_config()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    if args.check and not check(config):
        print("CHECK FAILED")
        sys.exit(1)
    print("length  batch  gen_s  pad  backend    forward   step_ms  attn_TFLOP/s  tokens/s")
    for i, length in enumerate(int(x) for x in args.lengths.split(",")):
        batch = max(1, args.batch_tokens // length)
        t = time.time()
        ids, w = train_tiny.make_batch(1, batch, length, train_tiny.FAMILIES)
        gen = time.time() - t
        pad = float((ids == train_tiny.PAD).float().mean())
        ids, w = ids.cuda(), w.cuda()
        # Causal attention FLOPs of forward + backward (2.5x forward) over the 4 layers, padding included.
        attn_flop = 4 * batch * 8 * 4 * 32 * length * length / 2 * 3.5
        for name in args.backends.split(","):
            for fwd in args.forwards.split(","):
                torch.manual_seed(0)
                model = LlamaForCausalLM(config).cuda()
                opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.05,
                                        fused=True)
                step = make_step(forward_of(fwd, model), model, opt, ids, w)
                try:
                    with sdpa_kernel(BACKENDS[name]):
                        s = seconds_per_step(step, args.reps)
                        if args.profile and i == 0 and name == args.backends.split(",")[0]:
                            profile(step, f"{fwd} {name} {length}")
                except Exception as e:  # a backend that refuses this shape
                    if args.traceback:
                        traceback.print_exc()
                    print(f"{length:6d} {batch:6d} {gen:6.3f} {pad:4.2f}  {name:9s}  {fwd:8s}  refused: "
                          f"{str(e).splitlines()[0][:80]}")
                    continue
                print(f"{length:6d} {batch:6d} {gen:6.3f} {pad:4.2f}  {name:9s}  {fwd:8s}  {s * 1e3:7.2f}  "
                      f"{attn_flop / s / 1e12:12.1f}  {batch * length / s:9.0f}", flush=True)


if __name__ == "__main__":
    main()
