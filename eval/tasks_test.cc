// Pins the C++ task generator (eval/tasks.h) to the Python one the models are trained with
// (tools/train/synthetic_tasks.py) through eval/testdata/synthetic_tasks_fixture.json: the same vocabulary and
// templates, and documents of both generators accepted by one reference reader, which parses a prompt sentence by
// sentence and works the answer out from the facts it finds.
#include "eval/tasks.h"

#include <algorithm>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/file.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace livekv {
namespace {

const char kFixture[] = "eval/testdata/synthetic_tasks_fixture.json";

nlohmann::json Fixture() { return nlohmann::json::parse(ReadFileToString(kFixture).value()); }

std::vector<std::string> Strings(const std::vector<absl::string_view>& v) { return {v.begin(), v.end()}; }

bool In(const std::vector<absl::string_view>& vocab, absl::string_view s) {
  return std::find(vocab.begin(), vocab.end(), s) != vocab.end();
}

// A filler sentence "{subject} {verb} {object} {ending}. " made of the vocabulary.
bool IsFillerSentence(absl::string_view s) {
  using namespace task_text;  // NOLINT
  for (absl::string_view subject : kSubjects) {
    if (!absl::StartsWith(s, absl::StrCat(subject, " "))) continue;
    absl::string_view rest = s.substr(subject.size() + 1);
    for (absl::string_view verb : kVerbs) {
      if (!absl::StartsWith(rest, absl::StrCat(verb, " "))) continue;
      absl::string_view r2 = rest.substr(verb.size() + 1);
      for (absl::string_view object : kObjects) {
        if (!absl::StartsWith(r2, absl::StrCat(object, " "))) continue;
        if (In(kEndings, r2.substr(object.size() + 1))) return true;
      }
    }
  }
  return false;
}

// The reference reader: the answer a prompt of `family` asks for, worked out from its facts; "" when the prompt
// contains anything the family's templates do not produce.
std::string Solve(TaskFamily family, absl::string_view prompt) {
  const size_t q = prompt.rfind("What is");
  if (q == absl::string_view::npos) return "";
  const absl::string_view body = prompt.substr(0, q), question = prompt.substr(q);
  if (family == TaskFamily::kCommonword) {
    if (!absl::EndsWith(body, ". ")) return "";
    std::map<std::string, int> counts;
    for (absl::string_view w : absl::StrSplit(body.substr(0, body.size() - 2), ", ")) {
      if (!In(task_text::kWords, w)) return "";
      ++counts[std::string(w)];
    }
    std::vector<std::pair<int, std::string>> by_count;
    for (const auto& [w, n] : counts) by_count.push_back({-n, w});
    std::sort(by_count.begin(), by_count.end());
    if (by_count.size() < 3) return "";
    if (by_count.size() > 3 && by_count[2].first == by_count[3].first) return "";  // top 3 not strict
    std::vector<std::string> top = {by_count[0].second, by_count[1].second, by_count[2].second};
    std::sort(top.begin(), top.end());
    if (question != "What is the list of the 3 most common words above? The 3 most common words are") return "";
    return absl::StrCat(" ", absl::StrJoin(top, ", "), ".");
  }
  // Facts: every sentence that is not filler. Sentences end in ". " (a passkey needle is two of them).
  std::vector<std::string> facts;
  for (absl::string_view s : absl::StrSplit(body, absl::ByString(". "), absl::SkipEmpty())) {
    if (!IsFillerSentence(s)) facts.emplace_back(s);
  }
  auto after = [](absl::string_view s, absl::string_view prefix) -> std::string {
    return absl::StartsWith(s, prefix) ? std::string(s.substr(prefix.size())) : "";
  };
  switch (family) {
    case TaskFamily::kPasskey: {
      if (facts.size() != 3 || question != "What is the pass key? The pass key is") return "";
      const std::string key = after(facts[0], "The pass key is ");
      if (facts[1] != "Remember it" || facts[2] != absl::StrCat(key, " is the pass key")) return "";
      return absl::StrCat(" ", key, ".");
    }
    case TaskFamily::kMultikey:
    case TaskFamily::kMultivalue: {
      std::vector<std::pair<std::string, std::string>> kv;
      for (const std::string& f : facts) {
        std::vector<std::string> p = absl::StrSplit(after(f, "The value of key "), " is ");
        if (p.size() != 2) return "";
        kv.push_back({p[0], p[1]});
      }
      std::vector<std::string> name_parts =
          absl::StrSplit(after(question, family == TaskFamily::kMultikey ? "What is the value of key "
                                                                          : "What is the list of values of key "),
                         "? ");
      if (name_parts.size() != 2) return "";
      const std::string& name = name_parts[0];
      std::vector<std::string> values;
      for (const auto& [k, v] : kv) {
        if (k == name) values.push_back(v);
      }
      if (family == TaskFamily::kMultikey) {
        if (values.size() != 1 || kv.size() < 2 || kv.size() > 6) return "";
        if (name_parts[1] != absl::StrCat("The value of key ", name, " is")) return "";
      } else {
        if (values.size() != kv.size() || values.size() < 2 || values.size() > 4) return "";
        if (name_parts[1] != absl::StrCat("The values of key ", name, " are")) return "";
      }
      return absl::StrCat(" ", absl::StrJoin(values, ", "), ".");
    }
    case TaskFamily::kVartrack: {
      std::map<std::string, std::string> value;  // variable -> value, following the chain in order
      for (const std::string& f : facts) {
        std::vector<std::string> p = absl::StrSplit(after(f, "VAR "), " = ");
        if (p.size() != 2) return "";
        const std::string from = after(p[1], "VAR ");
        value[p[0]] = from.empty() ? p[1] : value[from];
      }
      std::vector<std::string> v = absl::StrSplit(after(question, "What is the value of VAR "), "? ");
      if (v.size() != 2 || v[1] != absl::StrCat("VAR ", v[0], " =") || value[v[0]].empty()) return "";
      return absl::StrCat(" ", value[v[0]], ".");
    }
    case TaskFamily::kCommonword: break;
  }
  return "";
}

TEST(TasksTest, VocabularyAndTemplatesAreThePythonOnes) {
  const nlohmann::json f = Fixture();
  EXPECT_EQ(f["subjects"].get<std::vector<std::string>>(), Strings(task_text::kSubjects));
  EXPECT_EQ(f["verbs"].get<std::vector<std::string>>(), Strings(task_text::kVerbs));
  EXPECT_EQ(f["objects"].get<std::vector<std::string>>(), Strings(task_text::kObjects));
  EXPECT_EQ(f["endings"].get<std::vector<std::string>>(), Strings(task_text::kEndings));
  EXPECT_EQ(f["words"].get<std::vector<std::string>>(), Strings(task_text::kWords));
  EXPECT_EQ(f["letters"].get<std::string>(), std::string(task_text::kLetters));
  std::map<std::string, std::string> cc;
  for (const auto& [name, text] : task_text::Templates()) cc[std::string(name)] = std::string(text);
  const auto py = f["templates"].get<std::map<std::string, std::string>>();
  EXPECT_EQ(py, cc);
  std::vector<std::string> families;
  for (TaskFamily t : AllTaskFamilies()) families.emplace_back(TaskFamilyName(t));
  EXPECT_EQ(f["families"].get<std::vector<std::string>>(), families);
}

TEST(TasksTest, ReferenceReaderSolvesEveryPythonDocument) {
  const nlohmann::json f = Fixture();
  ASSERT_EQ(f["documents"].size(), 2 * AllTaskFamilies().size());
  for (const nlohmann::json& d : f["documents"]) {
    const TaskFamily family = ParseTaskFamily(d["task"].get<std::string>()).value();
    const std::string prompt = d["prompt"];
    EXPECT_EQ(Solve(family, prompt), d["answer"].get<std::string>()) << prompt;
    // The C++ generator's document of the same family and length has the same size, to within the few facts
    // and one sentence either may add past the requested length.
    TaskRng rng(7);
    const EvalDoc doc = MakeDocument(&rng, d["bytes"].get<int64_t>(), family);
    EXPECT_NEAR(static_cast<double>(doc.prompt.size()), static_cast<double>(prompt.size()), 400) << doc.prompt;
  }
}

TEST(TasksTest, ReferenceReaderRejectsAlteredDocuments) {
  // The reader is strict enough to notice a wrong template or fact (so the tests above can fail).
  TaskRng rng(3);
  EvalDoc doc = MakeDocument(&rng, 500, TaskFamily::kMultikey);
  ASSERT_EQ(Solve(TaskFamily::kMultikey, doc.prompt), doc.answer);
  std::string altered = doc.prompt;
  altered.replace(altered.find("The value of key"), 16, "The value of pin");
  EXPECT_EQ(Solve(TaskFamily::kMultikey, altered), "");
  doc = MakeDocument(&rng, 500, TaskFamily::kPasskey);
  altered = doc.prompt;
  altered.replace(altered.find(" the "), 5, " a ");
  EXPECT_EQ(Solve(TaskFamily::kPasskey, altered), "");
  doc = MakeDocument(&rng, 500, TaskFamily::kCommonword);
  EXPECT_NE(Solve(TaskFamily::kMultivalue, doc.prompt), doc.answer);
}

TEST(TasksTest, GeneratedDocumentsOfEveryFamilyAreSolvable) {
  for (TaskFamily family : AllTaskFamilies()) {
    for (int64_t n_bytes : {1, 300, 2048, 9000}) {
      const std::vector<EvalDoc> docs = MakeEvalDocs(family, n_bytes, 12, /*seed=*/5).value();
      ASSERT_EQ(docs.size(), 12u);
      std::set<std::string> answers;
      for (const EvalDoc& doc : docs) {
        EXPECT_GE(static_cast<int64_t>(doc.prompt.size()), n_bytes);
        EXPECT_EQ(Solve(family, doc.prompt), doc.answer) << TaskFamilyName(family) << " " << doc.prompt;
        answers.insert(doc.answer);
      }
      EXPECT_GE(answers.size(), 6u) << "answers barely vary for " << TaskFamilyName(family);
    }
  }
}

TEST(TasksTest, DocumentsAreDeterministicAndIndependent) {
  const std::vector<EvalDoc> a = MakeEvalDocs(TaskFamily::kVartrack, 1000, 5, 11).value();
  const std::vector<EvalDoc> b = MakeEvalDocs(TaskFamily::kVartrack, 1000, 3, 11).value();
  for (int i = 0; i < 3; ++i) EXPECT_EQ(a[i].prompt, b[i].prompt);
  const std::vector<EvalDoc> c = MakeEvalDocs(TaskFamily::kVartrack, 1000, 3, 12).value();
  EXPECT_NE(a[0].prompt, c[0].prompt);
  // A fixed seed gives a fixed sequence on every platform (xoshiro256** seeded through splitmix64).
  TaskRng r1(42), r2(42);
  for (int i = 0; i < 100; ++i) ASSERT_EQ(r1.Next(), r2.Next());
  TaskRng r(0);
  EXPECT_EQ(r.Next(), 0x99ec5f36cb75f2b4ULL);
}

TEST(TasksTest, RngDrawsAreUniformAndInRange) {
  TaskRng rng(1);
  std::vector<int> hist(5);
  for (int i = 0; i < 50000; ++i) {
    const int64_t x = rng.UniformInt(10, 14);
    ASSERT_GE(x, 10);
    ASSERT_LE(x, 14);
    ++hist[x - 10];
  }
  for (int h : hist) EXPECT_NEAR(h, 10000, 400);
  const std::vector<int> items = {1, 2, 3, 4, 5, 6};
  std::vector<int> s = rng.Sample(items, 6);
  std::sort(s.begin(), s.end());
  EXPECT_EQ(s, items);
  for (int i = 0; i < 1000; ++i) {
    const double u = rng.Uniform();
    ASSERT_GE(u, 0.0);
    ASSERT_LT(u, 1.0);
  }
}

TEST(TasksTest, ParsesFamilyNames) {
  EXPECT_EQ(ParseTaskFamily("multivalue").value(), TaskFamily::kMultivalue);
  EXPECT_EQ(ParseTaskFamily("needle").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseTaskFamilies("passkey, commonword").value(),
            (std::vector<TaskFamily>{TaskFamily::kPasskey, TaskFamily::kCommonword}));
  EXPECT_EQ(ParseTaskFamilies(",").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MakeEvalDocs(TaskFamily::kPasskey, 0, 1, 0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MakeEvalDocs(TaskFamily::kPasskey, 10, -1, 0).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace livekv
