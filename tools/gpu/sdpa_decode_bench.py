#!/usr/bin/env python3
"""Dense decode baseline in PyTorch: one Llama-3-8B-shape decode step (batch 1) at 32k and 128k context, bf16,
cuBLAS matmuls through torch and F.scaled_dot_product_attention (native GQA) over a KV cache of the context.

Timed eager and as a replayed CUDA graph (static shapes: the new token's K/V goes to a fixed slot after the
context, attention covers context + 1 tokens), median of CUDA-event timed steps after warm-up. Also times the
attention alone (one layer, 32/8 heads, d 128) as achieved GB/s. Ratios use a device-to-device copy measured in
the same run. Prints "BENCH <name> <value> <unit> ratio <r> vs <ceiling>" lines like the C++ benchmarks.
Random weights (normal, std 0.02): timing does not depend on values. Runs on the GPU machine (torch with CUDA)."""
import math
import sys
import time

try:
    import torch
    import torch.nn.functional as F
except Exception as e:  # noqa: BLE001
    print(f"SKIPPED: no torch ({e})")
    sys.exit(0)

if not torch.cuda.is_available():
    print("SKIPPED: torch sees no CUDA device")
    sys.exit(0)

dev, dt = "cuda", torch.bfloat16
L, H, HQ, HKV, D, I, V = 32, 4096, 32, 8, 128, 14336, 128256


def report(name, value, unit, ratio, vs):
    print(f"BENCH {name:<38} {value:10.3f} {unit:<8} ratio {ratio:6.3f} vs {vs}", flush=True)


def time_ms(fn, warmup=3, iters=20):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b))
    ts.sort()
    return ts[len(ts) // 2]


print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}, cuda {torch.version.cuda}", flush=True)
x = torch.empty(1 << 28, dtype=torch.float32, device=dev).uniform_()
y = torch.empty_like(x)
copy_ms = time_ms(lambda: y.copy_(x), 2, 10)
hbm = 2 * x.numel() * 4 / (copy_ms * 1e-3) / 1e9
report("torch_ceiling_hbm_d2d_copy", hbm, "GB/s", hbm / 3350, "H100 SXM spec 3350 GB/s")
del x, y

g = torch.Generator(device=dev).manual_seed(0)


def w(*shape):
    return (torch.randn(*shape, device=dev, dtype=dt, generator=g) * 0.02)


embed, lm_head, final_norm = w(V, H), w(V, H), torch.ones(H, device=dev, dtype=dt)
layers = [dict(n1=torch.ones(H, device=dev, dtype=dt), wqkv=w((HQ + 2 * HKV) * D, H), wo=w(H, HQ * D),
               n2=torch.ones(H, device=dev, dtype=dt), wgu=w(2 * I, H), wd=w(H, I)) for _ in range(L)]
weight_bytes = sum(t.numel() * 2 for t in [embed, lm_head, final_norm]) + sum(
    t.numel() * 2 for l in layers for t in l.values())
floor_ms = weight_bytes / (hbm * 1e9) * 1e3
report("torch_weight_read_floor_ms", floor_ms, "ms", 1.0, f"{weight_bytes / 1e9:.2f} GB / measured HBM copy")

inv_freq = 1.0 / (500000.0 ** (torch.arange(0, D, 2, device=dev, dtype=torch.float32) / D))


def rms(x, wt):
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-5)).to(dt) * wt


def rope(t, cos, sin):  # t [1, heads, 1, D]
    t1, t2 = t[..., : D // 2], t[..., D // 2:]
    return torch.cat([t1 * cos - t2 * sin, t2 * cos + t1 * sin], dim=-1)


for ctx in (32768, 131072):
    tag = "32k" if ctx == 32768 else "128k"
    try:
        kc = [torch.empty(1, HKV, ctx + 1, D, device=dev, dtype=dt).uniform_(-1, 1) for _ in range(L)]
        vc = [torch.empty(1, HKV, ctx + 1, D, device=dev, dtype=dt).uniform_(-1, 1) for _ in range(L)]
    except torch.OutOfMemoryError as e:
        print(f"{tag}: out of memory for the KV cache ({e})")
        continue
    pos = ctx
    ang = pos * inv_freq
    cos = torch.cos(ang).to(dt).repeat(2)[None, None, None, : D // 2]
    sin = torch.sin(ang).to(dt).repeat(2)[None, None, None, : D // 2]
    token = torch.tensor([1], device=dev)
    out_logits = torch.empty(1, V, device=dev, dtype=torch.float32)

    def step():
        x = embed[token]  # [1, H]
        for l, lw in enumerate(layers):
            h = rms(x, lw["n1"])
            qkv = h @ lw["wqkv"].t()
            q = qkv[:, : HQ * D].view(1, 1, HQ, D).transpose(1, 2)
            k = qkv[:, HQ * D: (HQ + HKV) * D].view(1, 1, HKV, D).transpose(1, 2)
            v = qkv[:, (HQ + HKV) * D:].view(1, 1, HKV, D).transpose(1, 2)
            q, k = rope(q, cos, sin), rope(k, cos, sin)
            kc[l][:, :, pos: pos + 1].copy_(k)
            vc[l][:, :, pos: pos + 1].copy_(v)
            a = F.scaled_dot_product_attention(q, kc[l], vc[l], enable_gqa=True)
            x = x + a.transpose(1, 2).reshape(1, HQ * D) @ lw["wo"].t()
            h = rms(x, lw["n2"])
            gu = h @ lw["wgu"].t()
            x = x + (F.silu(gu[:, :I]) * gu[:, I:]) @ lw["wd"].t()
        out_logits.copy_((rms(x, final_norm) @ lm_head.t()).float())

    with torch.no_grad():
        eager = time_ms(step)
        report(f"torch_sdpa_decode_{tag}_eager_ms", eager, "ms", eager / floor_ms, "weight-read floor")
        graph_ms = float("nan")
        try:
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                for _ in range(2):
                    step()
            torch.cuda.current_stream().wait_stream(s)
            gr = torch.cuda.CUDAGraph()
            with torch.cuda.graph(gr):
                step()
            graph_ms = time_ms(gr.replay)
            report(f"torch_sdpa_decode_{tag}_graph_ms", graph_ms, "ms", graph_ms / floor_ms, "weight-read floor")
        except Exception as e:  # noqa: BLE001
            print(f"{tag}: CUDA graph capture failed: {e}")
        # Attention alone, one layer: achieved bytes/s over the measured copy bandwidth.
        q = torch.randn(1, HQ, 1, D, device=dev, dtype=dt)
        att = time_ms(lambda: F.scaled_dot_product_attention(q, kc[0], vc[0], enable_gqa=True), 5, 50)
        gbs = 2 * HKV * (ctx + 1) * D * 2 / (att * 1e-3) / 1e9
        report(f"torch_sdpa_attention_{tag}_layer", gbs, "GB/s", gbs / hbm, f"measured HBM copy ({att * 1e3:.1f} us)")
    del kc, vc
    torch.cuda.empty_cache()
