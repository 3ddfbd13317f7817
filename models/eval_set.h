// File: models/eval_set.h
//
// Reading the evaluation documents of livekv's trained models (models/<name>/eval/<task>_<bytes>.jsonl, written by
// tools/train/make_eval_set.py): each line is {"prompt": ..., "answer": ...}; the prompt is a document followed by
// a question that starts with "What is".
#ifndef LIVEKV_MODELS_EVAL_SET_H_
#define LIVEKV_MODELS_EVAL_SET_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace livekv {

struct EvalDoc {
  std::string prompt;  // document + question
  std::string answer;  // what the model should continue with (e.g. " 71432.")
  std::string document() const;  // the prompt up to its last "What is"
  std::string question() const;  // from the last "What is"
};

// The first `limit` documents of `path` (all when negative). NOT_FOUND for a missing file; INVALID_ARGUMENT naming
// the line for a malformed one.
absl::StatusOr<std::vector<EvalDoc>> ReadEvalDocs(const std::string& path, int limit = -1);

// The `index`-th document (0-based); OUT_OF_RANGE when the file is shorter.
absl::StatusOr<EvalDoc> ReadEvalDoc(const std::string& path, int index);

}  // namespace livekv

#endif  // LIVEKV_MODELS_EVAL_SET_H_
