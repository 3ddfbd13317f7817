// File: client/cli/generate_flags.h
//
// Flags shared by the commands that generate text, and the generation routine they share.
#ifndef LIVEKV_CLIENT_CLI_GENERATE_FLAGS_H_
#define LIVEKV_CLIENT_CLI_GENERATE_FLAGS_H_

#include <cstdint>
#include <ostream>
#include <string>

#include "absl/flags/declare.h"
#include "absl/status/status.h"

ABSL_DECLARE_FLAG(int64_t, max_tokens);
ABSL_DECLARE_FLAG(uint64_t, seed);
ABSL_DECLARE_FLAG(float, temperature);
ABSL_DECLARE_FLAG(float, top_p);
ABSL_DECLARE_FLAG(int32_t, top_k);
ABSL_DECLARE_FLAG(int32_t, threads);

namespace livekv::cli {

// Loads `model_dir` on the CPU backend, prints the prompt, streams the generated text to `out`, and ends with a
// line of timings.
absl::Status RunGeneration(const std::string& model_dir, const std::string& prompt, std::ostream& out);

}  // namespace livekv::cli

#endif  // LIVEKV_CLIENT_CLI_GENERATE_FLAGS_H_
