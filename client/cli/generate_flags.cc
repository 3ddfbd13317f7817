#include "client/cli/generate_flags.h"

#include "absl/flags/flag.h"

ABSL_FLAG(int64_t, max_tokens, 32, "Most tokens to generate.");
ABSL_FLAG(uint64_t, seed, 0, "Sampling seed.");
ABSL_FLAG(float, temperature, 0.0f, "Sampling temperature; 0 is greedy.");
ABSL_FLAG(float, top_p, 1.0f, "Nucleus sampling: keep the most likely tokens up to this probability mass.");
ABSL_FLAG(int32_t, top_k, 0, "Keep only the k most likely tokens; 0 keeps all.");
ABSL_FLAG(int32_t, threads, 0, "CPU threads; 0 uses every hardware thread.");
