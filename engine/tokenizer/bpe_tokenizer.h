// File: engine/tokenizer/bpe_tokenizer.h
//
// Byte-level BPE from a Hugging Face `tokenizer.json` (GPT-2, Llama-3, Qwen2 and their relatives), producing the
// same ids as Hugging Face's `tokenizers` library. bpe_tokenizer_test checks GPT-2 against the ids of the npm
// package gpt-3-encoder on a 759-text corpus, and four configurations on GPT-2's vocabulary (plain, prefix space,
// Llama-3 Split + ignore_merges + BOS template, Qwen2 Split + NFC) against `tokenizers` 0.23.2 (ids written by
// tools/tokenizer/hf_reference.py).
//
// Encode pipeline, as in `tokenizers`:
//   1. split the text on added tokens (longest match first; lstrip/rstrip honoured). Tokens with
//      "normalized": false are matched in the raw text, those with "normalized": true after normalization.
//      Special tokens take part only when parse_special is true; otherwise their text is ordinary text.
//   2. normalizer: null, NFC (ICU), or a Sequence of those.
//   3. pre_tokenizer: ByteLevel {add_prefix_space, use_regex -> GPT-2's split regex}, or a Sequence of Split
//      {pattern: {Regex | String}, behavior: "Isolated", invert: false} and Digits {individual_digits} steps
//      ending in ByteLevel {use_regex: false} (Llama-3, Qwen2).
//   4. model BPE: each piece's bytes start as byte-level symbols and are merged by rank, lowest rank first
//      (leftmost first among equal ranks). With ignore_merges (Llama-3) a piece that is itself in the vocab is
//      emitted directly.
// Decoding maps each token back through GPT-2's bytes_to_unicode table (the ByteLevel decoder).
//
// EncodeWithSpecials applies post_processor TemplateProcessing's "single" template (Llama-3: prepend
// <|begin_of_text|>); ByteLevel post-processors change nothing about ids. BOS/EOS come from
// tokenizer_config.json (`bos_token` / `eos_token`, a string or {"content": ...}); its `added_tokens_decoder`
// adds tokens missing from tokenizer.json. When no bos_token is named there, bos_id() is the template's prefix
// token if the prefix is exactly one token. eos_id() comes only from eos_token.
//
// Unsupported parts of the format are rejected at load time with INVALID_ARGUMENT naming the field and type:
// other normalizers (NFKC, Lowercase, ...), pre-tokenizers (Metaspace, Whitespace, ...), Split behaviours
// other than Isolated, decoders other than ByteLevel, post-processors other than ByteLevel / TemplateProcessing,
// BPE dropout, byte_fallback, subword prefixes/suffixes, added tokens with single_word.
#ifndef LIVEKV_ENGINE_TOKENIZER_BPE_TOKENIZER_H_
#define LIVEKV_ENGINE_TOKENIZER_BPE_TOKENIZER_H_

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "engine/tokenizer/regex_splitter.h"
#include "engine/tokenizer/tokenizer.h"

namespace livekv {

class AddedTokenMatcher;  // bpe_tokenizer.cc

// Speed: about 27 ms per MiB of English prose (cold word cache; 21 ms warm) on one core of the 2-core build VM,
// -O2; see bpe_tokenizer_benchmark. Loading GPT-2's 1.4 MB tokenizer.json takes about 50 ms.
//
// Thread-safety: immutable after Create except for an internal word cache guarded by a mutex; all methods may be
// called concurrently.
class BpeTokenizer final : public Tokenizer {
 public:
  struct Source {
    absl::string_view tokenizer_json;                    // contents of tokenizer.json
    std::string tokenizer_json_name = "tokenizer.json";  // for error messages (e.g. its path)
    absl::string_view tokenizer_config_json;             // contents of tokenizer_config.json; empty: the model has none
    std::string tokenizer_config_json_name = "tokenizer_config.json";  // for error messages
  };

  // Parses and validates the files. INVALID_ARGUMENT naming the file and the JSON field when either is malformed
  // or uses an unsupported feature (see the file comment). Never throws.
  static absl::StatusOr<std::unique_ptr<BpeTokenizer>> Create(const Source& source);

  ~BpeTokenizer() override;
  BpeTokenizer(const BpeTokenizer&) = delete;
  BpeTokenizer& operator=(const BpeTokenizer&) = delete;

  absl::StatusOr<std::vector<int32_t>> Encode(absl::string_view text, bool parse_special = false) const override;
  // Encode plus the TemplateProcessing prefix and suffix (nothing when the file has no template).
  absl::StatusOr<std::vector<int32_t>> EncodeWithSpecials(absl::string_view text,
                                                          bool parse_special = false) const override;
  bool adds_bos() const override;
  absl::StatusOr<std::string> DecodeBytes(absl::Span<const int32_t> ids) const override;
  int32_t vocab_size() const override { return static_cast<int32_t>(token_bytes_.size()); }
  std::optional<int32_t> bos_id() const override { return bos_id_; }
  std::optional<int32_t> eos_id() const override { return eos_id_; }
  // Added tokens by their text; failing that, model vocabulary entries by their byte-level spelling
  // (e.g. "Ġthe" for " the").
  absl::StatusOr<int32_t> TokenId(absl::string_view token) const override;

  // The template's tokens around the text in EncodeWithSpecials.
  const std::vector<int32_t>& template_prefix() const { return template_prefix_; }
  const std::vector<int32_t>& template_suffix() const { return template_suffix_; }

 private:
  class Builder;  // parses the JSON (bpe_tokenizer.cc)

  // One pre-tokenizer step: a regex split, or the final ByteLevel step.
  struct PreTokenizerStep {
    std::unique_ptr<RegexSplitter> split;  // set: a Split / Digits step
    bool byte_level = false;               // the ByteLevel step (always last)
    bool add_prefix_space = false;         // ByteLevel only
  };
  struct Merge {
    int32_t rank;
    int32_t new_id;
  };

  BpeTokenizer();

  // Steps 2-4 of the pipeline for text between added tokens.
  absl::Status EncodeSegment(absl::string_view segment, std::vector<int32_t>* ids) const;
  absl::Status PreTokenize(size_t step, absl::string_view piece, std::vector<int32_t>* ids) const;
  void EncodePiece(absl::string_view piece, std::vector<int32_t>* ids) const;
  void MergePiece(absl::string_view piece, std::vector<int32_t>* ids) const;

  static uint64_t PairKey(int32_t left, int32_t right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
  }

  // Model.
  absl::flat_hash_map<std::string, int32_t> vocab_;      // byte-level spelling -> id (model vocab only)
  absl::flat_hash_map<uint64_t, Merge> merges_;          // PairKey(left, right) -> rank and merged id
  absl::flat_hash_map<std::string, int32_t> piece_ids_;  // raw bytes -> id, for ignore_merges
  std::array<int32_t, 256> byte_ids_;                    // id of each single byte's symbol, -1 when absent
  bool ignore_merges_ = false;

  // Added tokens.
  std::unique_ptr<AddedTokenMatcher> raw_added_;         // "normalized": false
  std::unique_ptr<AddedTokenMatcher> normalized_added_;  // "normalized": true
  absl::flat_hash_map<std::string, int32_t> added_ids_;  // content -> id

  bool nfc_ = false;
  std::vector<PreTokenizerStep> pre_tokenizer_;

  // Decoding: the bytes of each id; `defined_[id]` is false for ids no token has.
  std::vector<std::string> token_bytes_;
  std::vector<bool> defined_;

  std::vector<int32_t> template_prefix_;
  std::vector<int32_t> template_suffix_;
  std::optional<int32_t> bos_id_;
  std::optional<int32_t> eos_id_;

  // Ids of recently merged pieces (raw bytes). Bounded; once full, new pieces are merged but not cached.
  static constexpr size_t kCacheCapacity = 1 << 16;
  static constexpr size_t kMaxCachedPieceBytes = 64;
  mutable absl::Mutex cache_mu_;
  mutable absl::flat_hash_map<std::string, std::vector<int32_t>> cache_ ABSL_GUARDED_BY(cache_mu_);
};

// GPT-2's bytes_to_unicode(): the code point that stands for each byte in byte-level vocabularies. Printable
// Latin-1 bytes stand for themselves; the other 68 map to U+0100.. in byte order (space -> U+0120 'Ġ').
const std::array<uint32_t, 256>& ByteLevelCodePoints();

}  // namespace livekv

#endif  // LIVEKV_ENGINE_TOKENIZER_BPE_TOKENIZER_H_
