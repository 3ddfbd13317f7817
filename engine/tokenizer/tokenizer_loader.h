// File: engine/tokenizer/tokenizer_loader.h
//
// Picks and loads the tokenizer of a model directory:
//   1. tokenizer.json (Hugging Face) -> BpeTokenizer, with tokenizer_config.json when present beside it;
//   2. otherwise livekv_tokenizer.json: {"type": "byte"} -> ByteTokenizer;
//   3. otherwise NOT_FOUND naming the directory.
#ifndef LIVEKV_ENGINE_TOKENIZER_TOKENIZER_LOADER_H_
#define LIVEKV_ENGINE_TOKENIZER_TOKENIZER_LOADER_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "engine/tokenizer/tokenizer.h"

namespace livekv {

// INVALID_ARGUMENT (naming the file and field) for a malformed or unsupported file; NOT_FOUND when the
// directory has neither file; other codes for I/O failures.
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizer(const std::string& model_dir);

}  // namespace livekv

#endif  // LIVEKV_ENGINE_TOKENIZER_TOKENIZER_LOADER_H_
