#!/usr/bin/env python3
"""Expected token ids from Hugging Face `tokenizers`, the reference for livekv's BpeTokenizer.

Needs the `tokenizers` Python package, version 0.19 or later (for BPE "ignore_merges"); it is not installed on
the CPU build machine, so run this where it is (e.g. the GPU machine) and commit the output. The C++ test
//engine/tokenizer:bpe_tokenizer_test (BpeVariantsTest.MatchesHuggingFaceReference) then checks every file.

Mode 1, the committed reference (default):

    python3 tools/tokenizer/hf_reference.py [--testdata engine/tokenizer/testdata]

  builds each configuration of <testdata>/variants.json from <testdata>/gpt2/tokenizer.json (top-level fields
  replaced; "model" merged field by field, exactly as bpe_tokenizer_test.cc does), encodes every text of
  <testdata>/gpt2_corpus.jsonl, and writes <testdata>/hf_expected/<variant>.jsonl, one line per text:

    {"text": ..., "ids": [...], "ids_parse_special": [...], "ids_with_specials": [...]}

  ids                Encode(text, parse_special=false): special added tokens are ordinary text. `tokenizers`
                     matches added tokens by default, so this encodes with a copy of the tokenizer whose
                     "added_tokens" list lacks the special ones. (Setting encode_special_tokens=True gave the same
                     ids with tokenizers 0.23.2, e.g. for "a <|endoftext|> b", but older versions lack it.)
  ids_parse_special  Encode(text, parse_special=true): the tokenizer as written, add_special_tokens=False.
  ids_with_specials  EncodeWithSpecials(text, parse_special=false): the post-processor template applied
                     (add_special_tokens=True), special tokens in the text still ordinary text.
  The last two are omitted where they equal "ids".

Mode 2, any tokenizer files (e.g. real Llama-3 / Qwen2 downloads), for an ad-hoc comparison:

    python3 tools/tokenizer/hf_reference.py --tokenizers DIR --out OUT_DIR [--corpus FILE.jsonl]

  encodes the corpus with DIR/<name>/tokenizer.json for every <name> and writes OUT_DIR/<name>.jsonl in the
  same format; compare with `bazel run //engine/tokenizer:tokenizer_conformance -- --model_dir=DIR/<name>
  --expected=OUT_DIR/<name>.jsonl`.
"""

import argparse
import copy
import json
import os
import sys


def load_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def build_variant(base, override):
    """The tokenizer.json of one variant: top-level fields replaced, "model" merged field by field."""
    cfg = copy.deepcopy(base)
    for key, value in override.items():
        if key == "model":
            cfg["model"].update(value)
        else:
            cfg[key] = value
    return cfg


def without_special_added_tokens(cfg):
    cfg = copy.deepcopy(cfg)
    cfg["added_tokens"] = [t for t in cfg.get("added_tokens") or [] if not t.get("special", False)]
    return cfg


def expected_lines(cfg, texts):
    from tokenizers import Tokenizer  # imported here so --help works without it

    full = Tokenizer.from_str(json.dumps(cfg))
    plain = Tokenizer.from_str(json.dumps(without_special_added_tokens(cfg)))
    lines = []
    for text in texts:
        line = {"text": text, "ids": plain.encode(text, add_special_tokens=False).ids}
        # The other two are written only where they differ from "ids", to keep the committed files small.
        parse_special = full.encode(text, add_special_tokens=False).ids
        with_specials = plain.encode(text, add_special_tokens=True).ids
        if parse_special != line["ids"]:
            line["ids_parse_special"] = parse_special
        if with_specials != line["ids"]:
            line["ids_with_specials"] = with_specials
        lines.append(json.dumps(line, ensure_ascii=False, separators=(",", ":")))
    return lines


def write_lines(path, lines):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {path} ({len(lines)} texts)", file=sys.stderr)


def main():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--testdata", default=os.path.join(root, "engine", "tokenizer", "testdata"))
    p.add_argument("--corpus", help="JSONL with a 'text' field per line (default: <testdata>/gpt2_corpus.jsonl)")
    p.add_argument("--tokenizers", help="mode 2: directory of <name>/tokenizer.json")
    p.add_argument("--out", help="mode 2: output directory")
    args = p.parse_args()

    import tokenizers
    print(f"tokenizers {tokenizers.__version__}", file=sys.stderr)
    corpus = args.corpus or os.path.join(args.testdata, "gpt2_corpus.jsonl")
    texts = [case["text"] for case in load_jsonl(corpus)]

    if args.tokenizers:
        if not args.out:
            p.error("--tokenizers needs --out")
        for name in sorted(os.listdir(args.tokenizers)):
            path = os.path.join(args.tokenizers, name, "tokenizer.json")
            if not os.path.isfile(path):
                continue
            with open(path, encoding="utf-8") as f:
                cfg = json.load(f)
            write_lines(os.path.join(args.out, name + ".jsonl"), expected_lines(cfg, texts))
        return

    with open(os.path.join(args.testdata, "gpt2", "tokenizer.json"), encoding="utf-8") as f:
        base = json.load(f)
    with open(os.path.join(args.testdata, "variants.json"), encoding="utf-8") as f:
        variants = json.load(f)
    for name, override in variants.items():
        if name.startswith("//"):
            continue
        write_lines(os.path.join(args.testdata, "hf_expected", name + ".jsonl"),
                    expected_lines(build_variant(base, override), texts))


if __name__ == "__main__":
    main()
