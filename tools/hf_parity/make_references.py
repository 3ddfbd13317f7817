#!/usr/bin/env python3
"""Creates tiny random Hugging Face models and their reference logits, for livekv's parity tests.

Runs where PyTorch and transformers are installed (our GPU machine; no network needed). For each model shape it
writes, under OUT/<name>/:
  config.json, model.safetensors   -- from save_pretrained (safetensors)
  reference.safetensors            -- prompt_ids [P] I32, prefill_logits [P][V] F32,
                                      decode_ids [8] I32, decode_logits [8][V] F32
The reference is transformers' own forward pass (eager attention) in float64 on the CPU, on the checkpoint reloaded
from disk (so bf16 weights are exactly the saved bf16 values): the prefill logits at every prompt position, then 8 greedy decode steps through its KV cache. RoPE
angles stay fp32 inside transformers, as livekv computes them.

Usage: python3 tools/hf_parity/make_references.py OUT_DIR
"""
import json
import os
import sys

import torch
import transformers
from safetensors.torch import save_file
from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config,
                          Qwen2ForCausalLM)

VOCAB = 256
PROMPT_LEN = 13
DECODE_STEPS = 8

# name: (model class, config class, config kwargs, saved dtype)
SHAPES = {
    # GQA ratio 1, head_dim 32, theta 1e4, untied.
    "llama_gqa1_d32": (LlamaForCausalLM, LlamaConfig,
                       dict(hidden_size=128, num_attention_heads=4, num_key_value_heads=4, head_dim=32,
                            rope_theta=1e4, tie_word_embeddings=False), torch.float32),
    # GQA ratio 2, head_dim 64, llama3 rope scaling (as Llama 3.1), theta 5e5.
    "llama_gqa2_d64_llama3": (LlamaForCausalLM, LlamaConfig,
                              dict(hidden_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                                   rope_theta=5e5, max_position_embeddings=131072,
                                   rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                                     high_freq_factor=4.0, original_max_position_embeddings=8192),
                                   tie_word_embeddings=False), torch.float32),
    # An odd hidden size (105 = 3 heads of 35, with head_dim 32 set explicitly), GQA ratio 3, tied, theta 1e6.
    "llama_gqa3_odd_tied": (LlamaForCausalLM, LlamaConfig,
                            dict(hidden_size=105, num_attention_heads=3, num_key_value_heads=1, head_dim=32,
                                 rope_theta=1e6, tie_word_embeddings=True), torch.float32),
    # Llama with attention bias.
    "llama_bias_d32": (LlamaForCausalLM, LlamaConfig,
                       dict(hidden_size=96, num_attention_heads=3, num_key_value_heads=3, head_dim=32,
                            rope_theta=1e4, attention_bias=True, tie_word_embeddings=False), torch.float32),
    # Qwen2: QKV bias, tied embeddings, GQA 2, theta 1e6.
    "qwen2_gqa2_tied": (Qwen2ForCausalLM, Qwen2Config,
                        dict(hidden_size=128, num_attention_heads=4, num_key_value_heads=2, rope_theta=1e6,
                             tie_word_embeddings=True, use_sliding_window=False), torch.float32),
    # Qwen2: GQA 4, head_dim 64, untied, theta 1e4.
    "qwen2_gqa4_d64_untied": (Qwen2ForCausalLM, Qwen2Config,
                              dict(hidden_size=256, num_attention_heads=4, num_key_value_heads=1, rope_theta=1e4,
                                   tie_word_embeddings=False, use_sliding_window=False), torch.float32),
    # bf16 weights on disk (converted at load by livekv; the reference upcasts the same bf16 values).
    "llama_gqa2_bf16": (LlamaForCausalLM, LlamaConfig,
                        dict(hidden_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                             rope_theta=1e4, tie_word_embeddings=False), torch.bfloat16),
    # Mistral with a sliding window shorter than the sequence.
    "mistral_window6": (MistralForCausalLM, MistralConfig,
                        dict(hidden_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                             rope_theta=1e4, sliding_window=6, tie_word_embeddings=False), torch.float32),
}


def randomize(model, gen):
    # transformers initialises norms to 1 and biases to 0, which would leave those code paths untested.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.08 * torch.randn(p.shape, generator=gen))


def make(name, model_cls, config_cls, kwargs, dtype, out_dir, seed):
    gen = torch.Generator().manual_seed(seed)
    config = config_cls(vocab_size=VOCAB, intermediate_size=192, num_hidden_layers=2, rms_norm_eps=1e-5,
                        bos_token_id=1, eos_token_id=2, max_position_embeddings=kwargs.pop("max_position_embeddings", 4096),
                        **kwargs)
    config._attn_implementation = "eager"
    model = model_cls(config).eval()
    randomize(model, gen)
    model = model.to(dtype)
    path = os.path.join(out_dir, name)
    model.save_pretrained(path, safe_serialization=True)
    # Keep only what livekv reads: the config and the weights.
    for f in os.listdir(path):
        if f not in ("config.json", "model.safetensors"):
            os.remove(os.path.join(path, f))

    # Reload from disk rather than casting `model`: casting in place would also round transformers' RoPE
    # inv_freq buffer to the saved dtype, which a fresh load (as any user does) computes in fp32.
    ref = model_cls.from_pretrained(path, dtype=torch.float64, attn_implementation="eager").eval()
    prompt = torch.randint(3, VOCAB, (1, PROMPT_LEN), generator=gen)
    with torch.no_grad():
        out = ref(prompt, use_cache=True)
        prefill_logits = out.logits[0].float()
        past = out.past_key_values
        next_id = int(out.logits[0, -1].argmax())
        ids, step_logits = [], []
        for _ in range(DECODE_STEPS):
            ids.append(next_id)
            out = ref(torch.tensor([[next_id]]), past_key_values=past, use_cache=True)
            past = out.past_key_values
            step_logits.append(out.logits[0, -1].float())
            next_id = int(out.logits[0, -1].argmax())
    save_file({
        "prompt_ids": prompt[0].to(torch.int32).contiguous(),
        "prefill_logits": prefill_logits.contiguous(),
        "decode_ids": torch.tensor(ids, dtype=torch.int32),
        "decode_logits": torch.stack(step_logits).contiguous(),
    }, os.path.join(path, "reference.safetensors"),
        metadata={"transformers": transformers.__version__, "torch": torch.__version__})
    margin = (prefill_logits[-1].topk(2).values[0] - prefill_logits[-1].topk(2).values[1]).item()
    print(f"{name}: params={sum(p.numel() for p in model.parameters())} decode={ids} top1-top2 margin={margin:.4f}")


def main():
    out_dir = sys.argv[1]
    os.makedirs(out_dir, exist_ok=True)
    torch.manual_seed(0)
    print("transformers", transformers.__version__, "torch", torch.__version__)
    for i, (name, (model_cls, config_cls, kwargs, dtype)) in enumerate(SHAPES.items()):
        make(name, model_cls, config_cls, dict(kwargs), dtype, out_dir, seed=1000 + i)


if __name__ == "__main__":
    main()
