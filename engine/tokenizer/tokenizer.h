// File: engine/tokenizer/tokenizer.h
//
// Text <-> token ids. Two implementations: ByteTokenizer (bytes are tokens, for small models) and BpeTokenizer
// (Hugging Face tokenizer.json byte-level BPE: GPT-2, Llama-3, Qwen2). LoadTokenizer (tokenizer_loader.h) picks
// one from a model directory.
//
//   LIVEKV_ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tok, LoadTokenizer("/models/llama3"));
//   LIVEKV_ASSIGN_OR_RETURN(std::vector<int32_t> prompt, tok->EncodeWithSpecials(text));
//   StreamingDecoder detok(tok.get());
//   for each generated id: LIVEKV_ASSIGN_OR_RETURN(std::string piece, detok.Push(id)); send(piece);
//   send(detok.Flush());
#ifndef LIVEKV_ENGINE_TOKENIZER_TOKENIZER_H_
#define LIVEKV_ENGINE_TOKENIZER_TOKENIZER_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace livekv {

// Thread-safety: implementations are immutable after construction; every method may be called concurrently.
class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Token ids of `text`. INVALID_ARGUMENT, naming the byte offset, when text is not valid UTF-8. The text of a
  // special token (e.g. "<|endoftext|>") that appears in `text` becomes that token only when parse_special is
  // true; otherwise it is encoded like any other text, so user input cannot forge control tokens. No BOS or
  // other template tokens are added (see EncodeWithSpecials).
  virtual absl::StatusOr<std::vector<int32_t>> Encode(absl::string_view text, bool parse_special = false) const = 0;

  // Encode, then the model's post-processing template: for Llama-3 that prepends <|begin_of_text|>. Use this for
  // a prompt that starts a sequence. The default has no template and returns Encode(text, parse_special).
  virtual absl::StatusOr<std::vector<int32_t>> EncodeWithSpecials(absl::string_view text,
                                                                  bool parse_special = false) const {
    return Encode(text, parse_special);
  }

  // True when EncodeWithSpecials puts bos_id() in front of the text's tokens.
  virtual bool adds_bos() const { return false; }

  // The concatenated bytes of the tokens, special tokens included as their text. May end (or, for byte-level
  // vocabularies, even contain) a partial UTF-8 sequence; StreamingDecoder repairs that for display.
  // INVALID_ARGUMENT, naming the id, for an id outside [0, vocab_size()) or one no token is assigned to.
  virtual absl::StatusOr<std::string> DecodeBytes(absl::Span<const int32_t> ids) const = 0;

  // One more than the largest token id.
  virtual int32_t vocab_size() const = 0;
  virtual std::optional<int32_t> bos_id() const = 0;
  virtual std::optional<int32_t> eos_id() const = 0;

  // The id of a special or added token given by its text (e.g. "<|eot_id|>"); implementations may also accept
  // other vocabulary entries (documented there). NOT_FOUND naming the token otherwise.
  virtual absl::StatusOr<int32_t> TokenId(absl::string_view token) const = 0;
};

// Turns a stream of token ids into valid UTF-8 text pieces for streamed generation. Byte-level tokens can end
// in the middle of a UTF-8 sequence (an emoji is often 2-4 tokens); the decoder holds back an incomplete trailing
// sequence until the bytes that complete it arrive. Ill-formed bytes become U+FFFD, one per maximal ill-formed
// subpart (Unicode's recommended practice, as Python's and Rust's decoders do).
//
// Thread-safety: one decoder per stream; not safe for concurrent use. The tokenizer is borrowed and must
// outlive the decoder.
class StreamingDecoder {
 public:
  explicit StreamingDecoder(const Tokenizer* tokenizer);

  // Appends the token's bytes and returns the text that is now complete (possibly empty). On error (an id out
  // of range) the decoder is unchanged.
  absl::StatusOr<std::string> Push(int32_t id);

  // Returns what is held back, an incomplete sequence becoming U+FFFD, and resets the decoder for reuse.
  std::string Flush();

  // Bytes held back by the last Push (0..3).
  size_t pending_bytes() const { return pending_.size(); }

 private:
  const Tokenizer* const tokenizer_;
  std::string pending_;
};

}  // namespace livekv

#endif  // LIVEKV_ENGINE_TOKENIZER_TOKENIZER_H_
