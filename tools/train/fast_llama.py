"""The training forward of a transformers LlamaForCausalLM in fewer kernels (used by train_tiny.py).

The tiny model (3M parameters, hidden 256, head_dim 32) trains on 65,536-token batches, where transformers' own
forward spends most of a step outside attention: fp32 RMSNorm in six elementwise kernels, separate q/k/v and
gate/up GEMMs, RoPE and SwiGLU in several passes, the logits upcast to fp32 before the loss. This module computes
the same function from the same parameters (the model object still owns them, saves them with save_pretrained and
evaluates them): per layer one fused norm + QKV GEMM + RoPE, scaled_dot_product_attention (kept out of the compiled
graphs so the chosen backend runs), one fused O GEMM + residual + norm + gate/up GEMM + SwiGLU + down GEMM +
residual, and a fused final norm + head + cross-entropy. GEMMs in bf16 with fp32 accumulation, the residual
stream and the norms in fp32, as transformers computes under bf16 autocast.

`token_losses(ids)` returns the next-token cross-entropy at every position but the last, shape (B, L-1).
bench_train_step.py --check compares it with transformers' forward on the same parameters.
"""
import torch
import torch._inductor.config
import torch.nn.functional as F


def _rms_norm(x, weight, eps):
    x = x.float()
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _rotate(x, cos, sin):
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def _attention_inputs(x, norm_w, w_qkv, cos, sin, eps, n_q, n_kv, head_dim, dtype):
    """x (B, L, D) fp32 -> q (B, L, n_q, hd), k, v (B, L, n_kv, hd) in `dtype`, RoPE applied to q and k.

    Token-major like the GEMM's output: scaled_dot_product_attention takes them as (B, heads, L, hd) views, so
    neither this kernel nor its backward transposes (a transposing RoPE backward was 22% of a 2k-token step)."""
    b, length, _ = x.shape
    h = _rms_norm(x, norm_w, eps).to(dtype)
    qkv = F.linear(h, w_qkv.to(dtype))
    q, k, v = qkv.split([n_q * head_dim, n_kv * head_dim, n_kv * head_dim], dim=-1)
    cos, sin = cos[:, None, :], sin[:, None, :]
    q = _rotate(q.reshape(b, length, n_q, head_dim).float(), cos, sin).to(dtype)
    k = _rotate(k.reshape(b, length, n_kv, head_dim).float(), cos, sin).to(dtype)
    return q, k, v.reshape(b, length, n_kv, head_dim)


def _after_attention(x, attn, w_o, norm_w, w_gate_up, w_down, eps, dtype):
    """The rest of a decoder layer: O projection, residual, norm, SwiGLU MLP, residual. attn (B, n_q, L, hd)."""
    b, n_q, length, head_dim = attn.shape
    attn = attn.transpose(1, 2).reshape(b, length, n_q * head_dim)
    x = x + F.linear(attn, w_o.to(dtype)).float()
    h = _rms_norm(x, norm_w, eps).to(dtype)
    gate, up = F.linear(h, w_gate_up.to(dtype)).chunk(2, dim=-1)
    return x + F.linear(F.silu(gate) * up, w_down.to(dtype)).float()


def _head_losses(x, norm_w, w_head, targets, eps, dtype):
    """Final norm, LM head, cross-entropy of every position against `targets` (B, L-1): (B, L-1) fp32."""
    h = _rms_norm(x[:, :-1], norm_w, eps).to(dtype)
    logits = F.linear(h, w_head.to(dtype)).float()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           reduction="none").view(targets.shape)


class FastLlamaTraining:
    """token_losses(ids) of `model` (a LlamaForCausalLM with fp32 parameters), optionally under torch.compile.

    GEMMs and attention compute in `dtype` (bf16 for training; fp32 checks the function itself)."""

    def __init__(self, model, compile=True, dtype=torch.bfloat16):
        self.dtype = dtype
        config = model.config
        self.model = model
        self.n_q = config.num_attention_heads
        self.n_kv = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.n_q
        self.eps = config.rms_norm_eps
        rope = getattr(config, "rope_parameters", None) or {}
        self.theta = float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0)))
        if rope.get("rope_type", "default") != "default":
            raise ValueError(f"FastLlamaTraining implements the default RoPE only, not {rope['rope_type']}")
        self.tables = None
        if compile:
            # torch 2.11's inductor asserts in its coalescing analysis on these graphs with dynamic shapes.
            torch._inductor.config.triton.coalesce_tiling_analysis = False
        wrap = (lambda f: torch.compile(f, dynamic=True)) if compile else (lambda f: f)
        self.attention_inputs = wrap(_attention_inputs)
        self.after_attention = wrap(_after_attention)
        self.head_losses = wrap(_head_losses)

    def _rope(self, length, device):
        if self.tables is None or self.tables[0].shape[0] < length or self.tables[0].device != device:
            inv = 1.0 / self.theta ** (torch.arange(0, self.head_dim, 2, device=device, dtype=torch.float32)
                                       / self.head_dim)
            freqs = torch.outer(torch.arange(max(length, 4096), device=device, dtype=torch.float32), inv)
            emb = torch.cat((freqs, freqs), dim=-1)
            self.tables = (emb.cos(), emb.sin())
        return self.tables[0][:length], self.tables[1][:length]

    def token_losses(self, ids):
        inner = self.model.model
        cos, sin = self._rope(ids.shape[1], ids.device)
        x = F.embedding(ids, inner.embed_tokens.weight)
        for layer in inner.layers:
            a, m = layer.self_attn, layer.mlp
            w_qkv = torch.cat((a.q_proj.weight, a.k_proj.weight, a.v_proj.weight))
            q, k, v = self.attention_inputs(x, layer.input_layernorm.weight, w_qkv, cos, sin, self.eps,
                                            self.n_q, self.n_kv, self.head_dim, self.dtype)
            attn = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                  is_causal=True, enable_gqa=self.n_kv != self.n_q)
            w_gate_up = torch.cat((m.gate_proj.weight, m.up_proj.weight))
            x = self.after_attention(x, attn, a.o_proj.weight, layer.post_attention_layernorm.weight, w_gate_up,
                                     m.down_proj.weight, self.eps, self.dtype)
        return self.head_losses(x, inner.norm.weight, self.model.lm_head.weight, ids[:, 1:], self.eps, self.dtype)
