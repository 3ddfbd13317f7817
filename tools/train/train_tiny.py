#!/usr/bin/env python3
"""Trains livekv's small model on synthetic long-context tasks (run on the GPU machine).

A byte-level Llama (vocabulary 259: bytes, <|bos|>=256, <|eos|>=257, <|pad|>=258), trained from scratch on
documents of tools/train/synthetic_tasks.py: passkey, multikey, multivalue, vartrack and commonword. The schedule
(--phases: which families at which lengths, for which share of the time; one warm-up and cosine learning rate over
all of it) runs over --total_seconds of training; one call trains at most --max_seconds of it and, if the schedule is
not finished, writes a checkpoint (weights, optimizer moments, schedule state) to resume from (--resume), so
training fits under a per-command time limit. When the schedule is done it evaluates the
saved bf16 weights on the committed evaluation documents (--eval_dir, the same files livekv's C++ evaluation reads)
and writes a Hugging Face model directory (config.json, model.safetensors in bf16, livekv_tokenizer.json,
train_log.json, eval_pytorch.json) that livekv loads directly.

Usage: python3 tools/train/train_tiny.py --out OUT_DIR --ckpt CKPT [--resume CKPT] [--init MODEL_DIR]
           [--total_seconds 720] [--max_seconds 480] [--eval_dir models/tiny/eval] [--phases "..."]
       python3 tools/train/train_tiny.py --smoke ...   (CPU, a tiny config, seconds)

The default phases are the best 12-minute schedule found (models/tiny/README.md, "Training in 12 minutes"; the
committed model took four stages and 22.6 minutes): short documents of the copying families first (from random
weights at 2k-16k tokens a 720 s run learned no retrieval at all: the copying circuit forms on short documents),
then all five families up to 24k tokens, then the two hardest (multikey, multivalue) weighted up at 3k-24k tokens.
The longest trained documents are well past 16k tokens so that the 16k-byte evaluation documents (16.5k tokens
with the question) lie inside the trained positions: a model trained up to exactly 16384 tokens answered 100% at
8k and 35-100% at 16k.
"""
import argparse
import glob
import io
import json
import math
import multiprocessing
import os
import random
import sys
import time

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, os.path.dirname(__file__))
import fast_llama  # noqa: E402
import synthetic_tasks  # noqa: E402

BOS, EOS, PAD = 256, 257, 258
ANSWER_WEIGHT = 20.0  # the answer is what the tasks test; filler prose is easy to predict
FAMILIES = synthetic_tasks.ALL_FAMILIES


def encode(text):
    return list(text.encode("utf-8"))


def make_batch(seed, batch, length, families=FAMILIES):
    """`batch` documents of at most `length` tokens (BOS + prompt + answer + EOS), padded; runs in a worker."""
    rng = random.Random(seed)
    ids = torch.full((batch, length), PAD, dtype=torch.long)
    weights = torch.zeros((batch, length))
    for b in range(batch):
        # Documents fill their row to within an eighth (the lengths' spread comes from the rows' lengths): padding
        # costs as much as text, and drawing from half the row up left 27% of every batch padding.
        n_bytes = rng.randint(max(1, length - 160 - length // 8), length - 160)
        while True:
            prompt, answer = synthetic_tasks.make_document(rng, n_bytes, families=families)
            toks = [BOS] + encode(prompt) + encode(answer) + [EOS]
            if len(toks) <= length:
                break
            n_bytes -= 64  # needles and question made it too long: a shorter document
        ids[b, :len(toks)] = torch.tensor(toks)
        # Weight of the prediction of token t+1 at position t: 1 on the document, ANSWER_WEIGHT on the answer.
        a0 = 1 + len(encode(prompt)) - 1  # position whose next token is the answer's first
        weights[b, :len(toks) - 1] = 1.0
        weights[b, a0:len(toks) - 1] = ANSWER_WEIGHT
    return ids, weights


# share of the time : min-max tokens : ramp (grow from min to max over the phase's first half) or mix (log-uniform
# throughout) : sampling weights of passkey, multikey, vartrack, multivalue, commonword
DEFAULT_PHASES = "0.3:512-4096:ramp:1,2,1,1,0 0.25:1024-24576:ramp:1,2,1,2,1 0.45:3072-24576:mix:1,8,1,8,1"


def parse_phases(text):
    """[(end fraction, min_len, max_len, ramp, families)] from --phases; ValueError on a malformed one."""
    phases = []
    end = 0.0
    for item in text.split():
        parts = item.split(":")
        if len(parts) != 4:
            raise ValueError(f"phase {item!r}: expected SHARE:MIN-MAX:ramp|mix:WEIGHTS")
        share, lengths, mode, weights = parts
        lo, hi = (int(x) for x in lengths.split("-"))
        w = [int(x) for x in weights.split(",")]
        if not (float(share) > 0 and 256 <= lo <= hi and mode in ("ramp", "mix") and len(w) == len(FAMILIES)
                and min(w) >= 0 and sum(w) > 0):
            raise ValueError(f"phase {item!r}: share > 0, 256 <= MIN <= MAX, ramp|mix, {len(FAMILIES)} weights")
        end += float(share)
        phases.append((end, lo, hi, mode == "ramp", tuple(f for f, n in zip(FAMILIES, w) for _ in range(n))))
    if not phases or abs(end - 1.0) > 1e-6:
        raise ValueError(f"the phases' shares must add up to 1, saw {end}")
    return phases


def phase_at(phases, frac):
    """(index of the phase, fraction of that phase done) at `frac` of the whole schedule."""
    start = 0.0
    for i, phase in enumerate(phases):
        if frac < phase[0] or i == len(phases) - 1:
            return i, min(1.0, max(0.0, (frac - start) / (phase[0] - start)))
        start = phase[0]


def curriculum_length(phase_frac, rng, min_len, max_len, ramp):
    """With ramp: min_len first, growing to max_len by half the phase; then (or throughout, without ramp) lengths
    mixed uniformly on a log scale."""
    if ramp and phase_frac < 0.1:
        length = min_len
    elif ramp and phase_frac < 0.5:
        length = int(min_len * (max_len / min_len) ** ((phase_frac - 0.1) / 0.4))
    else:
        length = int(min_len * (max_len / min_len) ** rng.random())
    return max(256, (length // 256) * 256)


def remaining_shapes(phases, frac, batch_tokens):
    """Every (batch, length) the schedule can still draw from `frac` of it on (curriculum_length's lengths)."""
    shapes = set()
    for end, lo, hi, _, _ in phases:
        if end > frac:
            for length in range(max(256, lo // 256 * 256), hi // 256 * 256 + 1, 256):
                shapes.add((max(1, batch_tokens // length), length))
    return sorted(shapes, key=lambda s: s[1])


def read_eval_sets(eval_dir, docs):
    sets = {}
    for path in sorted(glob.glob(os.path.join(eval_dir, "*.jsonl"))):
        name = os.path.basename(path)[:-len(".jsonl")]
        with open(path) as f:
            sets[name] = [json.loads(line) for line in f][:docs]
    return sets


def greedy_answers(model, sets, device):
    """Per set, the greedy continuation of each prompt (as many bytes as the expected answer), in fp32."""
    model.eval()
    out = {}
    with torch.no_grad():
        for name, docs in sets.items():
            got_all = []
            for doc in docs:
                x = torch.tensor([[BOS] + encode(doc["prompt"])], device=device)
                past = None
                got = []
                for _ in range(len(encode(doc["answer"]))):
                    o = model(x, past_key_values=past, use_cache=True)
                    past = o.past_key_values
                    t = int(o.logits[0, -1].argmax())
                    if t >= 256:
                        break
                    got.append(t)
                    x = torch.tensor([[t]], device=device)
                got_all.append(bytes(got).decode("utf-8", errors="replace"))
            out[name] = got_all
    return out


def evaluate(model, eval_dir, docs, device):
    """{"eval_dir", "docs", "accuracy": {set: exact-match share}, "answers": {set: [greedy answer]}} of `model` on
    the first `docs` documents of each <task>_<bytes>.jsonl in `eval_dir` (the format livekv_eval --pytorch reads)."""
    sets = read_eval_sets(eval_dir, docs)
    answers = greedy_answers(model, sets, device)
    accuracy = {name: sum(a == d["answer"] for a, d in zip(answers[name], ds)) / max(1, len(ds))
                for name, ds in sets.items()}
    return {"eval_dir": eval_dir, "docs": docs, "accuracy": accuracy, "answers": answers}


CKPT_PART_BYTES = 15 << 20  # the GPU machine returns files of at most 16 MiB


def save_checkpoint(path, model, opt, state):
    """Weights (fp32), the optimizer's moments and the schedule state in parts PATH.0, PATH.1, ..."""
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "state": state}, buf)
    data = buf.getvalue()
    for old in glob.glob(path + ".*"):
        os.remove(old)
    for i in range(0, len(data), CKPT_PART_BYTES):
        with open(f"{path}.{i // CKPT_PART_BYTES}", "wb") as f:
            f.write(data[i:i + CKPT_PART_BYTES])


def load_checkpoint(path, device):
    parts = sorted(glob.glob(path + ".*"), key=lambda p: int(p.rsplit(".", 1)[1]))
    if not parts:
        raise FileNotFoundError(f"no checkpoint parts {path}.0, {path}.1, ...")
    data = b"".join(open(p, "rb").read() for p in parts)
    return torch.load(io.BytesIO(data), map_location=device)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True, help="model directory written when the schedule is done")
    ap.add_argument("--ckpt", required=True, help="checkpoint (parts CKPT.0, CKPT.1, ...) written when this call "
                    "stops before the end of the schedule")
    ap.add_argument("--resume", help="checkpoint to continue from (the --ckpt of an earlier call)")
    ap.add_argument("--total_seconds", type=float, default=720, help="training time of the whole schedule")
    ap.add_argument("--max_seconds", type=float, default=480, help="training time of this call")
    ap.add_argument("--phases", default=DEFAULT_PHASES,
                    help="space-separated SHARE:MIN-MAX:ramp|mix:WEIGHTS (tokens; weights of " + ",".join(FAMILIES)
                    + "); default: " + DEFAULT_PHASES)
    ap.add_argument("--batch_tokens", type=int, default=65536)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--intermediate", type=int, default=768)
    ap.add_argument("--rope_theta", type=float, default=100000.0)
    ap.add_argument("--lr", type=float, default=1.5e-3)
    ap.add_argument("--lr_floor", type=float, default=0.02,
                    help="share of --lr the cosine ends at (at 0.1 a 720 s run slipped digits of multikey values)")
    ap.add_argument("--init", help="a model directory to start from (an earlier training stage) instead of random")
    ap.add_argument("--eval_dir", default="models/tiny/eval")
    ap.add_argument("--eval_docs", type=int, default=20, help="documents per evaluation file")
    ap.add_argument("--workers", type=int, default=12, help="processes generating batches")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help="CPU, a tiny model and lengths: checks the logic")
    args = ap.parse_args()
    try:
        phases = parse_phases(args.phases)
    except ValueError as e:
        ap.error(str(e))
    device = "cpu" if args.smoke else "cuda"
    torch.manual_seed(args.seed)
    config = LlamaConfig(vocab_size=259, hidden_size=args.hidden, intermediate_size=args.intermediate,
                         num_hidden_layers=args.layers, num_attention_heads=args.hidden // 32,
                         num_key_value_heads=max(1, args.hidden // 128), head_dim=32, rope_theta=args.rope_theta,
                         max_position_embeddings=131072, rms_norm_eps=1e-5, tie_word_embeddings=True,
                         bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD)
    config._attn_implementation = "sdpa"
    if args.init:
        # Continue from an earlier stage (its architecture and rope_theta; the size flags are ignored).
        model = LlamaForCausalLM.from_pretrained(args.init, dtype=torch.float32, attn_implementation="sdpa")
        model = model.to(device)
    else:
        model = LlamaForCausalLM(config).to(device)
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.05,
                            fused=not args.smoke)
    # transformers' forward spent ~60% of a 2k-token step in unfused elementwise kernels; fast_llama computes the
    # same function from the same parameters, compiled (1.2-1.8x faster steps: bench_train_step.py).
    forward = fast_llama.FastLlamaTraining(model, compile=not args.smoke,
                                           dtype=torch.float32 if args.smoke else torch.bfloat16)
    state = {"step": 0, "seconds": 0.0, "log": [], "calls": 0}
    if args.resume:
        ck = load_checkpoint(args.resume, device)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        state = ck["state"]
        print(f"resumed at step {state['step']}, {state['seconds']:.0f}s of {args.total_seconds:.0f}s", flush=True)
    state["calls"] += 1
    rng = random.Random(f"{args.seed}-{state['step']}")
    # One thread per generator: with torch's default (a thread per core in each of 14 processes) the spinning
    # threads starved the training loop's own thread, and a step took 43-46 ms whatever its length instead of
    # 19-29 ms (a 2k-token step is 16 ms with the batch already on the GPU: bench_train_step.py).
    pool = multiprocessing.get_context("spawn").Pool(args.workers, initializer=torch.set_num_threads, initargs=(1,))
    pending = []  # (phase, length, batch, async result), requested ahead so generation overlaps the GPU

    def request():
        frac = min(1.0, state["seconds"] / args.total_seconds)
        phase, phase_frac = phase_at(phases, frac)
        _, min_len, max_len, ramp, families = phases[phase]
        length = curriculum_length(phase_frac, rng, min_len, max_len, ramp)
        batch = max(1, args.batch_tokens // length)
        seed = rng.getrandbits(63)
        pending.append((phase, length, batch, pool.apply_async(make_batch, (seed, batch, length, families))))

    # cuDNN's attention first: 5-9% faster steps than flash at 2k-24k tokens on the H100 (bench_train_step.py).
    attention_backends = [SDPBackend.MATH] if args.smoke else [SDPBackend.CUDNN_ATTENTION,
                                                                SDPBackend.FLASH_ATTENTION]
    data_wait = 0.0  # seconds the GPU waited for the batch generators

    def to_device(batch):
        # From pageable memory (pinning each batch, or double-buffered pinned staging, made steps slower there).
        return [t.to(device, non_blocking=True) for t in batch]

    # Set-up, outside the schedule's clock and logged as setup_seconds: the batch generators' start (spawned
    # interpreters importing torch) and the compilation of the forward and backward (once: dynamic shapes). On
    # the clock it took the schedule's first 20-40 s, the short documents where retrieval is learned first.
    t_setup = time.time()
    while len(pending) < args.workers:
        request()
    ids, w = to_device(pending[0][3].get())
    with sdpa_kernel(attention_backends, set_priority=True):
        (forward.token_losses(ids) * w[:, :-1]).sum().backward()
    if args.resume and device == "cuda":
        # A resumed call meets every shape of its remaining phases at once (the first call met them one at a time
        # as the lengths ramped up): building their attention plans and kernels on the clock took the first 25 s
        # of run I's 240 s second call. Build them here, off the clock; the gradients are discarded.
        t_warm = time.time()
        shapes = remaining_shapes(phases, state["seconds"] / args.total_seconds, args.batch_tokens)
        for batch, length in shapes:
            with sdpa_kernel(attention_backends, set_priority=True):
                forward.token_losses(torch.randint(0, 256, (batch, length), device=device)).sum().backward()
        print(f"warmed {len(shapes)} batch shapes in {time.time() - t_warm:.1f}s", flush=True)
    opt.zero_grad(set_to_none=True)
    if device == "cuda":
        torch.cuda.synchronize()
    state["setup_seconds"] = state.get("setup_seconds", 0.0) + time.time() - t_setup
    print(f"set-up {time.time() - t_setup:.1f}s (batch generators, compilation)", flush=True)
    t_call = time.time()
    seconds_at_start = state["seconds"]
    while state["seconds"] < args.total_seconds and time.time() - t_call < args.max_seconds:
        frac = state["seconds"] / args.total_seconds
        step = state["step"]
        warm = min(1.0, (step + 1) / 200)
        lr = args.lr * warm * (args.lr_floor + (1 - args.lr_floor) * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = lr
        phase, length, batch, result = pending.pop(0)
        request()
        t_wait = time.time()
        ids, w = to_device(result.get())
        data_wait += time.time() - t_wait
        with sdpa_kernel(attention_backends, set_priority=True):
            loss_tok = forward.token_losses(ids)
        loss = (loss_tok * w[:, :-1]).sum() / w[:, :-1].sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 50 == 0:
            # Answer-only loss: how well the facts are retrieved, apart from the filler.
            ans = w[:, :-1] > 1
            ans_loss = loss_tok[ans].mean().item() if ans.any() else float("nan")
            print(f"step {step} t={state['seconds']:.0f}s phase={phase} len={length} batch={batch} lr={lr:.2e} "
                  f"loss={loss.item():.4f} answer_loss={ans_loss:.4f} data_wait={data_wait:.1f}s", flush=True)
            state["log"].append({"step": step, "seconds": round(state["seconds"], 1), "phase": phase,
                                 "length": length,
                                 "loss": round(loss.item(), 5), "answer_loss": round(ans_loss, 5)})
        state["step"] += 1
        state["seconds"] = seconds_at_start + (time.time() - t_call)
    # Let the batches already requested finish, then stop the workers (Python 3.12's Pool.terminate() with
    # results outstanding can raise "Cannot have cache with result_handler not alive").
    for *_, result in pending:
        result.wait()
    pool.close()
    pool.join()
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    print(f"this call: {state['step']} steps so far, {graphs} compiled graphs, data_wait {data_wait:.1f}s", flush=True)
    if state["seconds"] < args.total_seconds:
        save_checkpoint(args.ckpt, model, opt, state)
        print(f"RESUME: {state['seconds']:.0f}s of {args.total_seconds:.0f}s at step {state['step']}; "
              f"checkpoint {args.ckpt}", flush=True)
        return
    os.makedirs(args.out, exist_ok=True)
    model = model.to(torch.bfloat16)
    model.save_pretrained(args.out, safe_serialization=True)
    for f in os.listdir(args.out):
        if f not in ("config.json", "model.safetensors"):
            os.remove(os.path.join(args.out, f))
    with open(os.path.join(args.out, "config.json")) as f:
        saved = json.load(f)
    rope_theta = saved.get("rope_theta", saved.get("rope_parameters", {}).get("rope_theta"))
    with open(os.path.join(args.out, "livekv_tokenizer.json"), "w") as f:
        f.write('{"type": "byte"}\n')
    # Evaluate exactly the saved weights, in fp32 as livekv's CPU engine computes.
    model = model.to(torch.float32)
    t_eval = time.time()
    result = evaluate(model, args.eval_dir, args.eval_docs, device)
    accuracy = result["accuracy"]
    print("eval (fp32 from the bf16 weights, greedy, exact answer):", json.dumps(accuracy), flush=True)
    with open(os.path.join(args.out, "eval_pytorch.json"), "w") as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(args.out, "train_log.json"), "w") as f:
        json.dump({"parameters": params, "steps": state["step"], "train_seconds": round(state["seconds"], 1),
                   "calls": state["calls"], "setup_seconds": round(state["setup_seconds"], 1),
                   "eval_seconds": round(time.time() - t_eval, 1),
                   "init": args.init, "families": list(FAMILIES),
                   "phases": args.phases,
                   "batch_tokens": args.batch_tokens, "lr": args.lr, "lr_floor": args.lr_floor,
                   "rope_theta": rope_theta,
                   "torch": torch.__version__,
                   "gpu": torch.cuda.get_device_name() if device == "cuda" else "cpu",
                   "log": state["log"], "eval_pytorch_fp32": accuracy}, f, indent=1)
    print(f"saved {args.out}: {params} parameters, {state['step']} steps", flush=True)


if __name__ == "__main__":
    main()
