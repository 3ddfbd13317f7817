#!/usr/bin/env python3
"""Writes the evaluation documents livekv's accuracy tests and benchmarks read (no Python needed at test time).

Each line of OUT/<task>_<bytes>.jsonl is {"prompt": ..., "answer": ...}: the model reads the prompt (after
<|bos|>) and should continue with the answer. Seeds differ from training's.

--fixture PATH instead writes the JSON fixture that pins livekv's C++ task generator (eval/tasks.h) to this one:
the vocabulary, the templates, and a few small documents of every family.

Usage: python3 tools/train/make_eval_set.py models/tiny/eval [--docs 20] [--tasks passkey,multikey,vartrack]
       python3 tools/train/make_eval_set.py --fixture eval/testdata/synthetic_tasks_fixture.json
"""
import argparse
import json
import os
import random
import sys

sys.path.insert(0, os.path.dirname(__file__))
import synthetic_tasks  # noqa: E402


def write_fixture(path):
    fixture = {
        "subjects": synthetic_tasks.SUBJECTS,
        "verbs": synthetic_tasks.VERBS,
        "objects": synthetic_tasks.OBJECTS,
        "endings": synthetic_tasks.ENDINGS,
        "words": synthetic_tasks.WORDS,
        "letters": synthetic_tasks.LETTERS,
        "templates": synthetic_tasks.TEMPLATES,
        "trained_families": list(synthetic_tasks.TRAINED_FAMILIES),
        "families": list(synthetic_tasks.ALL_FAMILIES),
        "documents": [],
    }
    for task in synthetic_tasks.ALL_FAMILIES:
        rng = random.Random(f"fixture-{task}")
        for n_bytes in [300, 700]:
            prompt, answer = synthetic_tasks.make_document(rng, n_bytes, task)
            fixture["documents"].append({"task": task, "bytes": n_bytes, "prompt": prompt, "answer": answer})
    with open(path, "w") as f:
        json.dump(fixture, f, indent=1)
        f.write("\n")
    print("wrote", path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out", nargs="?")
    ap.add_argument("--docs", type=int, default=20)
    ap.add_argument("--tasks", default=",".join(synthetic_tasks.TRAINED_FAMILIES),
                    help="comma-separated, from " + ",".join(synthetic_tasks.ALL_FAMILIES))
    ap.add_argument("--lengths", default="1024,2048,4096", help="document bytes, comma-separated")
    ap.add_argument("--fixture", help="write the C++ generator's fixture to this path instead")
    args = ap.parse_args()
    if args.fixture:
        write_fixture(args.fixture)
        return
    if not args.out:
        ap.error("OUT (the directory to write) is required without --fixture")
    tasks = args.tasks.split(",")
    for task in tasks:
        if task not in synthetic_tasks.ALL_FAMILIES:
            ap.error(f"unknown task {task!r}; expected one of {', '.join(synthetic_tasks.ALL_FAMILIES)}")
    os.makedirs(args.out, exist_ok=True)
    for task in tasks:
        for n_bytes in [int(x) for x in args.lengths.split(",")]:
            rng = random.Random(f"eval-{task}-{n_bytes}")
            path = os.path.join(args.out, f"{task}_{n_bytes}.jsonl")
            with open(path, "w") as f:
                for _ in range(args.docs):
                    prompt, answer = synthetic_tasks.make_document(rng, n_bytes, task)
                    f.write(json.dumps({"prompt": prompt, "answer": answer}) + "\n")
            print("wrote", path)


if __name__ == "__main__":
    main()
