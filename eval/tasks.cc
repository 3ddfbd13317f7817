#include "eval/tasks.h"

#include <algorithm>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace livekv {

namespace task_text {

const std::vector<absl::string_view> kSubjects = {
    "The river",    "A farmer",   "The old clock", "Every child",       "The quiet town", "Her brother",     "The ship",
    "A small bird", "The teacher", "The market",   "Our neighbor",      "The mountain road", "The library",  "A gentle wind",
    "The baker",    "The young doctor", "The garden", "Each morning",   "The captain",    "A distant bell"};
const std::vector<absl::string_view> kVerbs = {
    "walked past", "looked at", "remembered", "carried", "followed",     "painted", "listened to",
    "found",       "opened",    "waited near", "talked about", "cleaned", "built",  "watched",
    "visited",     "described", "repaired",  "counted", "crossed",      "forgot"};
const std::vector<absl::string_view> kObjects = {
    "the green field", "an empty house", "the long bridge",  "a wooden box",    "the busy station",
    "the blue door",   "a heavy stone",  "the narrow street", "an old letter",  "the warm kitchen",
    "the high tower",  "a broken cart",  "the silver lake",  "the evening train", "a paper map",
    "the stone wall",  "the open window", "a quiet song",    "the northern hill", "a basket of apples"};
const std::vector<absl::string_view> kEndings = {
    "before the rain began", "while the sun went down", "after a long day",  "without a word",
    "in the early light",    "as the bells rang",       "on the way home",   "during the winter",
    "with great care",       "for the last time",       "near the harbor",   "under the old trees"};
const std::vector<absl::string_view> kWords = {
    "apple",  "river",   "stone",   "cloud",   "tiger",   "piano",  "maple",   "candle", "orbit",  "violet",
    "copper", "lantern", "meadow",  "falcon",  "harbor",  "willow", "ember",   "glacier", "saffron", "quartz",
    "thistle", "juniper", "cobalt", "marble", "sparrow", "tundra", "walnut", "zephyr", "canyon", "lotus"};
const absl::string_view kLetters = "abcdefghijklmnopqrstuvwxyz";

const std::vector<std::pair<absl::string_view, absl::string_view>>& Templates() {
  static const auto* templates = new std::vector<std::pair<absl::string_view, absl::string_view>>{
      {"sentence", "{subject} {verb} {object} {ending}. "},
      {"passkey_needle", "The pass key is {key}. Remember it. {key} is the pass key. "},
      {"passkey_question", "What is the pass key? The pass key is"},
      {"passkey_answer", " {key}."},
      {"multikey_needle", "The value of key {name} is {value}. "},
      {"multikey_question", "What is the value of key {name}? The value of key {name} is"},
      {"multikey_answer", " {value}."},
      {"vartrack_first", "VAR {var} = {value}. "},
      {"vartrack_next", "VAR {var} = VAR {previous}. "},
      {"vartrack_question", "What is the value of VAR {var}? VAR {var} ="},
      {"vartrack_answer", " {value}."},
      {"multivalue_needle", "The value of key {name} is {value}. "},
      {"multivalue_question", "What is the list of values of key {name}? The values of key {name} are"},
      {"multivalue_answer", " {values}."},
      {"commonword_question", "What is the list of the {k} most common words above? The {k} most common words are"},
      {"commonword_answer", " {words}."},
      {"list_separator", ", "},
      {"list_end", ". "},
  };
  return *templates;
}

absl::string_view Template(absl::string_view name) {
  for (const auto& [n, t] : Templates()) {
    if (n == name) return t;
  }
  std::abort();  // a typo in this file
}

std::string Fill(absl::string_view tmpl, absl::Span<const std::pair<absl::string_view, std::string>> values) {
  std::string out;
  size_t i = 0;
  while (i < tmpl.size()) {
    if (tmpl[i] == '{') {
      const size_t close = tmpl.find('}', i);
      if (close != absl::string_view::npos) {
        const absl::string_view key = tmpl.substr(i + 1, close - i - 1);
        const auto it = std::find_if(values.begin(), values.end(), [&](const auto& kv) { return kv.first == key; });
        if (it != values.end()) {
          out += it->second;
          i = close + 1;
          continue;
        }
      }
    }
    out.push_back(tmpl[i++]);
  }
  return out;
}

}  // namespace task_text

namespace {

using task_text::Fill;
using task_text::Template;

constexpr int kMultivalueMin = 2, kMultivalueMax = 4;  // synthetic_tasks.MULTIVALUE_VALUES
constexpr int kCommonwordK = 3;                         // synthetic_tasks.COMMONWORD_K
constexpr double kCommonwordP = 0.4;                    // synthetic_tasks.COMMONWORD_P

uint64_t SplitMix64(uint64_t* x) {
  uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

uint64_t Fnv1a(absl::string_view s) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ULL;
  return h;
}

std::string Sentence(TaskRng* rng) {
  using namespace task_text;  // NOLINT
  // Draw order as in Python: subject, verb, object, ending.
  const std::string subject(rng->Choice(kSubjects)), verb(rng->Choice(kVerbs)), object(rng->Choice(kObjects)),
      ending(rng->Choice(kEndings));
  return Fill(Template("sentence"), {{"subject", subject}, {"verb", verb}, {"object", object}, {"ending", ending}});
}

std::vector<std::string> Filler(TaskRng* rng, int64_t n_bytes) {
  std::vector<std::string> out;
  int64_t size = 0;
  while (size < n_bytes) {
    out.push_back(Sentence(rng));
    size += static_cast<int64_t>(out.back().size());
  }
  return out;
}

std::string Number(TaskRng* rng) { return absl::StrCat(rng->UniformInt(10000, 99999)); }

// Each needle goes before a random sentence; the needles keep their relative order.
std::string InsertNeedles(TaskRng* rng, const std::vector<std::string>& sentences,
                          const std::vector<std::string>& needles) {
  std::vector<int64_t> slots;
  for (size_t i = 0; i < needles.size(); ++i) slots.push_back(rng->UniformInt(0, sentences.size()));
  std::sort(slots.begin(), slots.end());
  std::string out;
  size_t next = 0;
  for (size_t s = 0; s <= sentences.size(); ++s) {
    while (next < needles.size() && slots[next] == static_cast<int64_t>(s)) out += needles[next++];
    if (s < sentences.size()) out += sentences[s];
  }
  return out;
}

std::vector<std::string> Words() { return {task_text::kWords.begin(), task_text::kWords.end()}; }

EvalDoc CommonWord(TaskRng* rng, int64_t n_bytes) {
  const std::vector<std::string> words = Words();
  const std::vector<std::string> common = rng->Sample(words, kCommonwordK);
  std::vector<std::string> others;
  for (const std::string& w : words) {
    if (std::find(common.begin(), common.end(), w) == common.end()) others.push_back(w);
  }
  const std::string sep(Template("list_separator"));
  std::vector<std::string> list;
  std::map<std::string, int> counts;
  int64_t size = 0;
  while (size < n_bytes) {
    const std::string& w = rng->Uniform() < kCommonwordP ? rng->Choice(common) : rng->Choice(others);
    list.push_back(w);
    ++counts[w];
    size += static_cast<int64_t>(w.size() + sep.size());
  }
  // The frequent words must be strictly the most frequent: top up the rarest of them (the first on ties).
  auto least_common = [&] {
    size_t best = 0;
    for (size_t i = 1; i < common.size(); ++i) {
      if (counts[common[i]] < counts[common[best]]) best = i;
    }
    return best;
  };
  auto most_other = [&] {
    int m = 0;
    for (const std::string& w : others) m = std::max(m, counts[w]);
    return m;
  };
  for (size_t i = least_common(); counts[common[i]] <= most_other(); i = least_common()) {
    list.push_back(common[i]);
    ++counts[common[i]];
  }
  std::vector<std::string> first = common;
  std::sort(first.begin(), first.end());  // alphabetical, as synthetic_tasks.word_list
  EvalDoc doc;
  doc.prompt = absl::StrJoin(list, sep) + std::string(Template("list_end")) +
               Fill(Template("commonword_question"), {{"k", absl::StrCat(first.size())}});
  doc.answer = Fill(Template("commonword_answer"), {{"words", absl::StrJoin(first, sep)}});
  return doc;
}

}  // namespace

absl::string_view TaskFamilyName(TaskFamily family) {
  switch (family) {
    case TaskFamily::kPasskey: return "passkey";
    case TaskFamily::kMultikey: return "multikey";
    case TaskFamily::kVartrack: return "vartrack";
    case TaskFamily::kMultivalue: return "multivalue";
    case TaskFamily::kCommonword: return "commonword";
  }
  return "unknown";
}

absl::StatusOr<TaskFamily> ParseTaskFamily(absl::string_view name) {
  for (TaskFamily f : AllTaskFamilies()) {
    if (TaskFamilyName(f) == name) return f;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown task \"", name, "\"; expected one of passkey, multikey, vartrack, multivalue, commonword"));
}

absl::StatusOr<std::vector<TaskFamily>> ParseTaskFamilies(absl::string_view names) {
  std::vector<TaskFamily> out;
  for (absl::string_view name : absl::StrSplit(names, ',', absl::SkipWhitespace())) {
    absl::StatusOr<TaskFamily> f = ParseTaskFamily(absl::StripAsciiWhitespace(name));
    if (!f.ok()) return f.status();
    out.push_back(*f);
  }
  if (out.empty()) return absl::InvalidArgumentError(absl::StrCat("no task in \"", names, "\""));
  return out;
}

const std::vector<TaskFamily>& TrainedTaskFamilies() {
  static const auto* f =
      new std::vector<TaskFamily>{TaskFamily::kPasskey, TaskFamily::kMultikey, TaskFamily::kVartrack};
  return *f;
}

const std::vector<TaskFamily>& AllTaskFamilies() {
  static const auto* f = new std::vector<TaskFamily>{TaskFamily::kPasskey, TaskFamily::kMultikey, TaskFamily::kVartrack,
                                                     TaskFamily::kMultivalue, TaskFamily::kCommonword};
  return *f;
}

TaskRng::TaskRng(uint64_t seed) {
  for (uint64_t& s : s_) s = SplitMix64(&seed);
}

TaskRng TaskRng::FromParts(absl::Span<const uint64_t> parts) {
  uint64_t h = 0x5eed;
  for (uint64_t p : parts) {
    uint64_t x = h ^ p;
    h = SplitMix64(&x);
  }
  return TaskRng(h);
}

uint64_t TaskRng::Next() {
  auto rotl = [](uint64_t x, int k) { return (x << k) | (x >> (64 - k)); };
  const uint64_t result = rotl(s_[1] * 5, 7) * 9;
  const uint64_t t = s_[1] << 17;
  s_[2] ^= s_[0];
  s_[3] ^= s_[1];
  s_[1] ^= s_[2];
  s_[0] ^= s_[3];
  s_[2] ^= t;
  s_[3] = rotl(s_[3], 45);
  return result;
}

int64_t TaskRng::UniformInt(int64_t lo, int64_t hi) {
  const uint64_t range = static_cast<uint64_t>(hi) - static_cast<uint64_t>(lo);  // hi - lo, as unsigned
  if (range == ~uint64_t{0}) return static_cast<int64_t>(Next());
  const uint64_t n = range + 1;
  // Rejection sampling: no modulo bias.
  const uint64_t limit = ~uint64_t{0} - (~uint64_t{0} % n + 1) % n;
  uint64_t x;
  do {
    x = Next();
  } while (x > limit);
  return lo + static_cast<int64_t>(x % n);
}

double TaskRng::Uniform() { return static_cast<double>(Next() >> 11) * 0x1.0p-53; }

EvalDoc MakeDocument(TaskRng* rng, int64_t n_bytes, TaskFamily family) {
  if (family == TaskFamily::kCommonword) return CommonWord(rng, n_bytes);
  const std::vector<std::string> body = Filler(rng, n_bytes);
  EvalDoc doc;
  switch (family) {
    case TaskFamily::kPasskey: {
      const std::string key = Number(rng);
      doc.prompt = InsertNeedles(rng, body, {Fill(Template("passkey_needle"), {{"key", key}})}) +
                   std::string(Template("passkey_question"));
      doc.answer = Fill(Template("passkey_answer"), {{"key", key}});
      break;
    }
    case TaskFamily::kMultikey: {
      const std::vector<std::string> names = rng->Sample(Words(), rng->UniformInt(2, 6));
      std::vector<std::string> values, needles;
      for (size_t i = 0; i < names.size(); ++i) values.push_back(Number(rng));
      for (size_t i = 0; i < names.size(); ++i) {
        needles.push_back(Fill(Template("multikey_needle"), {{"name", names[i]}, {"value", values[i]}}));
      }
      rng->Shuffle(&needles);
      const std::string text = InsertNeedles(rng, body, needles);
      const size_t i = rng->Index(names.size());
      doc.prompt = text + Fill(Template("multikey_question"), {{"name", names[i]}});
      doc.answer = Fill(Template("multikey_answer"), {{"value", values[i]}});
      break;
    }
    case TaskFamily::kMultivalue: {
      const std::string name = rng->Choice(Words());
      const int64_t count = rng->UniformInt(kMultivalueMin, kMultivalueMax);
      std::vector<std::string> values, needles;
      while (static_cast<int64_t>(values.size()) < count) {
        std::string v = Number(rng);
        if (std::find(values.begin(), values.end(), v) == values.end()) values.push_back(std::move(v));
      }
      for (const std::string& v : values) {
        needles.push_back(Fill(Template("multivalue_needle"), {{"name", name}, {"value", v}}));
      }
      doc.prompt = InsertNeedles(rng, body, needles) + Fill(Template("multivalue_question"), {{"name", name}});
      doc.answer =
          Fill(Template("multivalue_answer"), {{"values", absl::StrJoin(values, Template("list_separator"))}});
      break;
    }
    case TaskFamily::kVartrack:
    default: {
      std::vector<char> letters(task_text::kLetters.begin(), task_text::kLetters.end());
      std::vector<std::string> chain(rng->UniformInt(2, 4));
      for (std::string& var : chain) {
        const std::vector<char> two = rng->Sample(letters, 2);
        var = std::string(two.begin(), two.end());
      }
      const std::string value = Number(rng);
      std::vector<std::string> needles = {Fill(Template("vartrack_first"), {{"var", chain[0]}, {"value", value}})};
      for (size_t j = 1; j < chain.size(); ++j) {
        needles.push_back(Fill(Template("vartrack_next"), {{"var", chain[j]}, {"previous", chain[j - 1]}}));
      }
      doc.prompt = InsertNeedles(rng, body, needles) + Fill(Template("vartrack_question"), {{"var", chain.back()}});
      doc.answer = Fill(Template("vartrack_answer"), {{"value", value}});
      break;
    }
  }
  return doc;
}

EvalDoc MakeDocument(TaskRng* rng, int64_t n_bytes, absl::Span<const TaskFamily> families, TaskFamily* drawn) {
  const TaskFamily f = families[rng->Index(families.size())];
  if (drawn != nullptr) *drawn = f;
  return MakeDocument(rng, n_bytes, f);
}

absl::StatusOr<std::vector<EvalDoc>> MakeEvalDocs(TaskFamily family, int64_t n_bytes, int count, uint64_t seed) {
  if (n_bytes < 1 || n_bytes > (int64_t{1} << 26)) {
    return absl::InvalidArgumentError(absl::StrCat("document length must be in [1, 67108864] bytes, saw ", n_bytes));
  }
  if (count < 0) return absl::InvalidArgumentError(absl::StrCat("document count must be >= 0, saw ", count));
  std::vector<EvalDoc> docs;
  docs.reserve(count);
  for (int i = 0; i < count; ++i) {
    TaskRng rng = TaskRng::FromParts(
        {seed, Fnv1a(TaskFamilyName(family)), static_cast<uint64_t>(n_bytes), static_cast<uint64_t>(i)});
    docs.push_back(MakeDocument(&rng, n_bytes, family));
  }
  return docs;
}

}  // namespace livekv
