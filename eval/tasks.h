// File: eval/tasks.h
//
// The synthetic long-context task families livekv's small models are trained and evaluated on, generated in C++
// from a seed: the same families, vocabulary, templates and answer formats as tools/train/synthetic_tasks.py (the
// generator the models are trained with), not the same random draws. eval/testdata/synthetic_tasks_fixture.json,
// written by that script, pins the two together (eval/tasks_test.cc).
//
// A document is filler prose ("The river crossed the long bridge after a long day. ") of at least the requested
// number of bytes with facts inserted before random sentences, followed by a question starting "What is" whose
// greedy continuation must be the answer exactly (answers start with a space and end with "."):
//   passkey     "The pass key is 71432. Remember it. 71432 is the pass key. " ... " 71432."
//   multikey    2-6 "The value of key <word> is <number>. " (shuffled); the question names one   ... " 12345."
//   vartrack    "VAR ab = 12345. " then "VAR cd = VAR ab. " ... (2-4 variables); asks for the last ... " 12345."
//   multivalue  2-4 "The value of key <word> is <number>. " for one word; asks for every value, in document order:
//               " 12345, 67890."
//   commonword  no filler: a list of words ("apple, lotus, apple, ... . ") in which 3 words each occur strictly
//               more often than any other; asks for those 3 in alphabetical order: " apple, cobalt, lotus."
//
//   TaskRng rng(42);
//   EvalDoc doc = MakeDocument(&rng, /*n_bytes=*/2048, TaskFamily::kPasskey);
//   LIVEKV_ASSIGN_OR_RETURN(std::vector<EvalDoc> docs, MakeEvalDocs(TaskFamily::kVartrack, 4096, 10, /*seed=*/0));
//
// Thread-safety: the functions are pure; a TaskRng is used by one thread at a time.
#ifndef LIVEKV_EVAL_TASKS_H_
#define LIVEKV_EVAL_TASKS_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "models/eval_set.h"

namespace livekv {

enum class TaskFamily { kPasskey, kMultikey, kVartrack, kMultivalue, kCommonword };

// "passkey", "multikey", "vartrack", "multivalue", "commonword".
absl::string_view TaskFamilyName(TaskFamily family);
// INVALID_ARGUMENT naming the value and the valid names otherwise.
absl::StatusOr<TaskFamily> ParseTaskFamily(absl::string_view name);
// A comma-separated list of names (at least one; duplicates kept as given).
absl::StatusOr<std::vector<TaskFamily>> ParseTaskFamilies(absl::string_view names);

// The families models/tiny was trained on (passkey, multikey, vartrack), and all of them.
const std::vector<TaskFamily>& TrainedTaskFamilies();
const std::vector<TaskFamily>& AllTaskFamilies();

// The vocabulary and templates (identical to tools/train/synthetic_tasks.py). Templates have {name} placeholders.
namespace task_text {
extern const std::vector<absl::string_view> kSubjects, kVerbs, kObjects, kEndings, kWords;
extern const absl::string_view kLetters;
// (name, template), the names of synthetic_tasks.TEMPLATES.
const std::vector<std::pair<absl::string_view, absl::string_view>>& Templates();
// Templates() entry `name`; REQUIRES: it exists.
absl::string_view Template(absl::string_view name);
// `tmpl` with each {key} replaced by its value. Placeholders without a value stay as they are.
std::string Fill(absl::string_view tmpl, absl::Span<const std::pair<absl::string_view, std::string>> values);
}  // namespace task_text

// Deterministic random source (xoshiro256**, seeded through splitmix64), with the draws the generator needs in
// the shape of Python's random module. The same seed gives the same sequence on every platform.
class TaskRng {
 public:
  explicit TaskRng(uint64_t seed);
  // Seeded from several values (e.g. a run's seed, a hash of the task name, the length, the document index).
  static TaskRng FromParts(absl::Span<const uint64_t> parts);

  uint64_t Next();
  // Uniform in [lo, hi], both inclusive (Python's randint). REQUIRES: lo <= hi.
  int64_t UniformInt(int64_t lo, int64_t hi);
  // Uniform in [0, 1) (Python's random()).
  double Uniform();
  // Uniform index in [0, n) (Python's randrange). REQUIRES: n > 0.
  size_t Index(size_t n) { return static_cast<size_t>(UniformInt(0, static_cast<int64_t>(n) - 1)); }

  template <typename T>
  const T& Choice(const std::vector<T>& items) {
    return items[Index(items.size())];
  }
  // `k` distinct elements in random order (Python's sample). REQUIRES: k <= items.size().
  template <typename T>
  std::vector<T> Sample(const std::vector<T>& items, size_t k) {
    std::vector<T> pool = items;
    for (size_t i = 0; i < k; ++i) std::swap(pool[i], pool[i + Index(pool.size() - i)]);
    pool.resize(k);
    return pool;
  }
  template <typename T>
  void Shuffle(std::vector<T>* items) {
    for (size_t i = items->size(); i > 1; --i) std::swap((*items)[i - 1], (*items)[Index(i)]);
  }

 private:
  uint64_t s_[4];
};

// One document of `family` with at least `n_bytes` bytes of filler (or of word list). REQUIRES: n_bytes >= 0.
EvalDoc MakeDocument(TaskRng* rng, int64_t n_bytes, TaskFamily family);
// The family drawn from `families` first (Python's make_document without a task). REQUIRES: families non-empty.
EvalDoc MakeDocument(TaskRng* rng, int64_t n_bytes, absl::Span<const TaskFamily> families, TaskFamily* drawn);

// `count` documents of `family`, document i seeded by (seed, family, n_bytes, i): any one can be regenerated
// alone, and documents of other families or lengths do not shift. INVALID_ARGUMENT for n_bytes outside
// [1, 1 << 26] or a negative count.
absl::StatusOr<std::vector<EvalDoc>> MakeEvalDocs(TaskFamily family, int64_t n_bytes, int count, uint64_t seed);

}  // namespace livekv

#endif  // LIVEKV_EVAL_TASKS_H_
