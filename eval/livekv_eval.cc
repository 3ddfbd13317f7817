// livekv_eval: accuracy of every KV-cache policy against full attention on a trained model (docs/accuracy.md).
//
// For each task family and document length it evaluates `--docs` documents (the committed evaluation sets
// <eval_dir>/<task>_<bytes>.jsonl, which PyTorch evaluated too, or --source=generated: eval/tasks.h from --seed)
// with full attention and with streaming, quest, clusterkv and clusterkv with speculative recall at each budget
// (protocol: eval/policy_eval.h). It prints, and writes to --out_dir: accuracy.md (a table per task and length:
// accuracy / attention mass covered / output error against full, per policy and budget; a summary; and, with
// --pytorch, the agreement of the C++ full-attention answers with PyTorch's on the same documents), accuracy.csv
// (one row per task, length, policy, budget), accuracy_vs_budget.png (accuracy over the tasks against budget,
// one panel per length) and answers_full.json (every document's full-attention answer and the expected one).
//
//   bazel run -c opt //eval:livekv_eval -- --out_dir=/tmp/eval --lengths=2048,4096 --docs=20
//       --pytorch=models/tiny/eval_pytorch.json --jobs=2   (one command line)
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/file.h"
#include "common/status_macros.h"
#include "engine/cpu/cpu_backend.h"
#include "eval/plot.h"
#include "eval/png.h"
#include "eval/policy_eval.h"
#include "eval/tasks.h"
#include "nlohmann/json.hpp"

ABSL_FLAG(std::string, model, "models/tiny", "Model directory (Hugging Face files).");
ABSL_FLAG(std::string, eval_dir, "models/tiny/eval", "Directory of <task>_<bytes>.jsonl evaluation sets.");
ABSL_FLAG(std::string, source, "files", "files: the evaluation sets in --eval_dir; generated: eval/tasks.h.");
ABSL_FLAG(uint64_t, seed, 0, "Seed of --source=generated.");
ABSL_FLAG(std::string, tasks, "passkey,multikey,vartrack,multivalue,commonword",
          "Task families: passkey, multikey, vartrack, multivalue, commonword.");
ABSL_FLAG(std::string, lengths, "1024,2048,4096", "Document lengths in bytes (= tokens of the byte model).");
ABSL_FLAG(int32_t, docs, 20, "Documents per task and length.");
ABSL_FLAG(std::string, policies, "full,streaming,quest,clusterkv,clusterkv+spec",
          "Policies; full is always evaluated (the reference).");
ABSL_FLAG(std::string, budgets, "128,256,512,1024,2048", "KV budgets (tokens per layer and KV head).");
ABSL_FLAG(std::string, out_dir, "", "Where to write accuracy.md, accuracy.csv and accuracy_vs_budget.png.");
ABSL_FLAG(std::string, pytorch, "", "eval_pytorch.json of tools/train/train_tiny.py, for the agreement table.");
ABSL_FLAG(int32_t, jobs, 1,
          "Documents evaluated at once, each by its own CPU backend and copy of the model (results do not depend "
          "on it).");
ABSL_FLAG(int32_t, threads, 0, "CPU threads of each job's backend (0: all cores divided among the jobs).");

namespace livekv {
namespace {

struct Cell {
  int correct = 0, total = 0;
  double mass = 0, error = 0;
  bool mass_defined = true;
  void Add(const DocResult& r) {
    correct += r.correct;
    ++total;
    error += r.output_error;
    if (r.attention_mass < 0) mass_defined = false;
    mass += r.attention_mass;
  }
  double accuracy() const { return total > 0 ? double(correct) / total : 0; }
};

absl::StatusOr<std::vector<int32_t>> ParseInts(const std::string& list, const char* what) {
  std::vector<int32_t> out;
  for (absl::string_view s : absl::StrSplit(list, ',', absl::SkipWhitespace())) {
    int32_t v;
    if (!absl::SimpleAtoi(s, &v) || v <= 0) {
      return absl::InvalidArgumentError(absl::StrCat(what, " must be positive integers, saw \"", s, "\""));
    }
    out.push_back(v);
  }
  if (out.empty()) return absl::InvalidArgumentError(absl::StrCat("no ", what, " in \"", list, "\""));
  return out;
}

absl::StatusOr<std::vector<EvalConfig>> Configs(const std::string& policies, const std::vector<int32_t>& budgets) {
  std::vector<EvalConfig> out = {FullConfig()};
  for (absl::string_view p : absl::StrSplit(policies, ',', absl::SkipWhitespace())) {
    if (p == "full") continue;
    const bool spec = absl::EndsWith(p, "+spec");
    LIVEKV_ASSIGN_OR_RETURN(PolicyKind kind, ParsePolicyKind(spec ? p.substr(0, p.size() - 5) : p));
    if (spec && kind != PolicyKind::kClusterKv) {
      return absl::InvalidArgumentError(absl::StrCat("speculative recall is clusterkv's, saw \"", p, "\""));
    }
    for (int32_t b : budgets) out.push_back(PolicyConfig(kind, b, spec));
  }
  return out;
}

std::string Key(const std::string& task, int32_t length) { return absl::StrCat(task, "_", length); }

// One document of one task and length, and its results once evaluated.
struct WorkItem {
  std::string key;
  EvalDoc doc;
  std::vector<DocResult> results;
};

// Evaluates every item with `jobs` workers, each with its own CPU backend and model (an evaluator runs one
// document at a time). The first error stops the workers and is returned.
absl::Status EvaluateAll(const std::string& model_dir, int jobs, int threads_per_job,
                         const std::vector<EvalConfig>& configs, std::vector<WorkItem>& items) {
  std::atomic<size_t> next{0};
  std::atomic<size_t> done{0};
  std::mutex mu;
  absl::Status first_error;
  const auto t0 = std::chrono::steady_clock::now();
  auto worker = [&] {
    CpuBackendOptions options;
    options.num_threads = threads_per_job;
    CpuBackend backend(options);
    absl::StatusOr<LoadedModel> model = LoadModel(model_dir, &backend);
    if (!model.ok()) {
      std::lock_guard<std::mutex> lock(mu);
      if (first_error.ok()) first_error = model.status();
      next = items.size();
      return;
    }
    PolicyEvaluator evaluator(&*model);
    for (size_t i = next++; i < items.size(); i = next++) {
      absl::StatusOr<std::vector<DocResult>> r = evaluator.Evaluate(items[i].doc, configs);
      std::lock_guard<std::mutex> lock(mu);
      if (!r.ok()) {
        if (first_error.ok()) first_error = r.status();
        next = items.size();
        return;
      }
      items[i].results = *std::move(r);
      std::fprintf(stderr, "%s: document %zu of %zu done [%.0f s]\n", items[i].key.c_str(), ++done, items.size(),
                   std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
  };
  std::vector<std::thread> workers;
  for (int j = 0; j < jobs; ++j) workers.emplace_back(worker);
  for (std::thread& t : workers) t.join();
  return first_error;
}

int Run() {
  const std::string model_dir = absl::GetFlag(FLAGS_model);
  auto fail = [](const absl::Status& s) {
    std::fprintf(stderr, "livekv_eval: %s\n", s.ToString().c_str());
    return 1;
  };
  const int jobs = absl::GetFlag(FLAGS_jobs);
  if (jobs < 1 || absl::GetFlag(FLAGS_threads) < 0) {
    return fail(absl::InvalidArgumentError("--jobs must be at least 1 and --threads not negative"));
  }
  const int threads_per_job = absl::GetFlag(FLAGS_threads) > 0
                                  ? absl::GetFlag(FLAGS_threads)
                                  : std::max(1, static_cast<int>(std::thread::hardware_concurrency()) / jobs);
  absl::StatusOr<std::vector<TaskFamily>> tasks = ParseTaskFamilies(absl::GetFlag(FLAGS_tasks));
  absl::StatusOr<std::vector<int32_t>> lengths = ParseInts(absl::GetFlag(FLAGS_lengths), "lengths");
  absl::StatusOr<std::vector<int32_t>> budgets = ParseInts(absl::GetFlag(FLAGS_budgets), "budgets");
  if (!tasks.ok()) return fail(tasks.status());
  if (!lengths.ok()) return fail(lengths.status());
  if (!budgets.ok()) return fail(budgets.status());
  absl::StatusOr<std::vector<EvalConfig>> configs = Configs(absl::GetFlag(FLAGS_policies), *budgets);
  if (!configs.ok()) return fail(configs.status());
  const std::string source = absl::GetFlag(FLAGS_source);
  if (source != "files" && source != "generated") {
    return fail(absl::InvalidArgumentError(absl::StrCat("--source must be files or generated, saw ", source)));
  }
  nlohmann::json pytorch;
  if (!absl::GetFlag(FLAGS_pytorch).empty()) {
    absl::StatusOr<std::string> text = ReadFileToString(absl::GetFlag(FLAGS_pytorch));
    if (!text.ok()) return fail(text.status());
    pytorch = nlohmann::json::parse(*text, nullptr, false);
    if (pytorch.is_discarded() || !pytorch.contains("answers")) {
      return fail(absl::InvalidArgumentError(absl::GetFlag(FLAGS_pytorch) + " is not an eval_pytorch.json"));
    }
  }

  // Every document first (so that the jobs share one queue), in task, length, document order.
  std::vector<WorkItem> items;
  std::map<std::string, size_t> docs_per_key;
  for (TaskFamily family : *tasks) {
    const std::string task(TaskFamilyName(family));
    for (int32_t length : *lengths) {
      const std::string key = Key(task, length);
      absl::StatusOr<std::vector<EvalDoc>> docs =
          source == "files"
              ? ReadEvalDocs(absl::StrCat(absl::GetFlag(FLAGS_eval_dir), "/", key, ".jsonl"), absl::GetFlag(FLAGS_docs))
              : MakeEvalDocs(family, length, absl::GetFlag(FLAGS_docs), absl::GetFlag(FLAGS_seed));
      if (!docs.ok()) return fail(docs.status());
      docs_per_key[key] = docs->size();
      for (EvalDoc& doc : *docs) items.push_back({key, std::move(doc), {}});
    }
  }
  absl::Status evaluated = EvaluateAll(model_dir, jobs, threads_per_job, *configs, items);
  if (!evaluated.ok()) return fail(evaluated);
  // [task_length][config index]
  std::map<std::string, std::vector<Cell>> cells;
  std::map<std::string, std::vector<std::string>> full_answers;
  std::map<std::string, std::vector<std::string>> expected;
  std::map<std::string, double> mean_tokens;
  for (const auto& [key, n] : docs_per_key) cells[key].assign(configs->size(), Cell{});
  for (const WorkItem& item : items) {
    for (size_t c = 0; c < item.results.size(); ++c) cells[item.key][c].Add(item.results[c]);
    full_answers[item.key].push_back(item.results[0].answer);
    expected[item.key].push_back(item.doc.answer);
    mean_tokens[item.key] += double(item.results[0].context_tokens) / docs_per_key[item.key];
  }
  for (const auto& [key, n] : docs_per_key) {
    std::fprintf(stderr, "%s: %zu documents, full %.2f\n", key.c_str(), n, cells[key][0].accuracy());
  }

  std::string md = absl::StrFormat(
      "Model `%s`; documents: %s (%d per task and length); CPU engine, fp32. Protocol: document prefilled densely "
      "once, question decoded token by token under the policy, answer greedy, exact match. Sink 16, recent window "
      "32, pages and clusters of 32 tokens, clusterkv clusters every 64 tokens past the window, layers 0-1 dense. "
      "Cells: accuracy / attention mass covered (sparse layers, mean over heads and decode steps; n/a for "
      "streaming, which drops tokens) / output error (relative L2 distance of the logits to full attention's on "
      "the same inputs).\n\n",
      model_dir, source == "files" ? absl::StrCat("`", absl::GetFlag(FLAGS_eval_dir), "`") : "eval/tasks.h",
      absl::GetFlag(FLAGS_docs));
  std::string csv = "task,length_bytes,mean_tokens,policy,budget,docs,accuracy,attention_mass,output_error\n";
  // Full attention per task and length, with PyTorch's figure on the same documents when given.
  md += "### Full attention\n\n| task | length (bytes) | mean tokens | C++ accuracy |";
  if (!pytorch.is_null()) md += " PyTorch accuracy | same answer as PyTorch |";
  md += "\n|---|---|---|---|";
  if (!pytorch.is_null()) md += "---|---|";
  md += "\n";
  for (TaskFamily family : *tasks) {
    for (int32_t length : *lengths) {
      const std::string task(TaskFamilyName(family)), key = Key(task, length);
      md += absl::StrFormat("| %s | %d | %.0f | %.2f |", task, length, mean_tokens[key], cells[key][0].accuracy());
      if (!pytorch.is_null()) {
        if (pytorch["answers"].contains(key)) {
          const std::vector<std::string> py = pytorch["answers"][key].get<std::vector<std::string>>();
          int same = 0, py_correct = 0, n = 0;
          for (size_t i = 0; i < full_answers[key].size() && i < py.size(); ++i, ++n) {
            same += py[i] == full_answers[key][i];
            py_correct += py[i] == expected[key][i];
          }
          md += absl::StrFormat(" %.2f | %d/%d |", n > 0 ? double(py_correct) / n : 0.0, same, n);
        } else {
          md += " n/a | n/a |";
        }
      }
      md += "\n";
    }
  }
  // Per task and length: policy x budget.
  auto cell_text = [](const Cell& c) {
    return c.mass_defined ? absl::StrFormat("%.2f / %.3f / %.3f", c.accuracy(), c.mass / c.total, c.error / c.total)
                          : absl::StrFormat("%.2f / n/a / %.3f", c.accuracy(), c.error / c.total);
  };
  std::vector<std::string> policy_names;
  for (const EvalConfig& c : *configs) {
    if (c.budget > 0 && std::find(policy_names.begin(), policy_names.end(), c.policy) == policy_names.end()) {
      policy_names.push_back(c.policy);
    }
  }
  auto grid_header = [&] {
    std::string h = "| policy |";
    for (int32_t b : *budgets) h += absl::StrCat(" ", b, " |");
    h += "\n|---|";
    for (size_t i = 0; i < budgets->size(); ++i) h += "---|";
    return h + "\n";
  };
  // Accuracy over the tasks, per length (the plot's data).
  md += "\n### Accuracy over the tasks, by length and budget\n\n";
  std::vector<PlotPanel> panels;
  for (int32_t length : *lengths) {
    PlotPanel panel;
    panel.title = absl::StrCat(length, " bytes");
    md += absl::StrFormat("%d bytes:\n\n", length) + grid_header();
    int full_correct = 0, full_total = 0;
    for (TaskFamily family : *tasks) {
      full_correct += cells[Key(std::string(TaskFamilyName(family)), length)][0].correct;
      full_total += cells[Key(std::string(TaskFamilyName(family)), length)][0].total;
    }
    panel.reference = full_total > 0 ? double(full_correct) / full_total : 0;
    md += absl::StrFormat("| full | %.2f (every budget) |%s\n", panel.reference,
                          std::string(3 * (budgets->size() - 1), ' '));
    for (const std::string& p : policy_names) {
      PlotSeries series{p, {}};
      md += absl::StrCat("| ", p, " |");
      for (int32_t b : *budgets) {
        int correct = 0, total = 0;
        for (size_t c = 0; c < configs->size(); ++c) {
          if ((*configs)[c].policy != p || (*configs)[c].budget != b) continue;
          for (TaskFamily family : *tasks) {
            correct += cells[Key(std::string(TaskFamilyName(family)), length)][c].correct;
            total += cells[Key(std::string(TaskFamilyName(family)), length)][c].total;
          }
        }
        const double acc = total > 0 ? double(correct) / total : 0;
        series.points.push_back({double(b), acc});
        md += absl::StrFormat(" %.2f |", acc);
      }
      md += "\n";
      panel.series.push_back(series);
    }
    md += "\n";
    panels.push_back(panel);
  }
  md += "### Per task and length (accuracy / attention mass / output error)\n\n";
  for (TaskFamily family : *tasks) {
    for (int32_t length : *lengths) {
      const std::string task(TaskFamilyName(family)), key = Key(task, length);
      md += absl::StrFormat("%s, %d bytes (~%.0f tokens), %d documents; full attention %.2f\n\n", task, length,
                            mean_tokens[key], cells[key][0].total, cells[key][0].accuracy());
      md += grid_header();
      csv += absl::StrFormat("%s,%d,%.0f,full,0,%d,%.4f,1,0\n", task, length, mean_tokens[key], cells[key][0].total,
                             cells[key][0].accuracy());
      for (const std::string& p : policy_names) {
        md += absl::StrCat("| ", p, " |");
        for (int32_t b : *budgets) {
          for (size_t c = 0; c < configs->size(); ++c) {
            if ((*configs)[c].policy != p || (*configs)[c].budget != b) continue;
            const Cell& cell = cells[key][c];
            md += absl::StrCat(" ", cell_text(cell), " |");
            csv += absl::StrFormat("%s,%d,%.0f,%s,%d,%d,%.4f,%s,%.5f\n", task, length, mean_tokens[key], p, b,
                                   cell.total, cell.accuracy(),
                                   cell.mass_defined ? absl::StrFormat("%.4f", cell.mass / cell.total) : "",
                                   cell.error / cell.total);
          }
        }
        md += "\n";
      }
      md += "\n";
    }
  }
  std::printf("%s", md.c_str());
  const std::string out_dir = absl::GetFlag(FLAGS_out_dir);
  if (!out_dir.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(out_dir, ec);
    if (ec) return fail(absl::InternalError(absl::StrCat("cannot create ", out_dir, ": ", ec.message())));
    const RgbImage image = RenderAccuracyPlot(panels, std::vector<int>(budgets->begin(), budgets->end()));
    absl::StatusOr<std::string> png = EncodePng(image.width, image.height, image.rgb);
    if (!png.ok()) return fail(png.status());
    // Every document's full-attention answer next to the expected one, to compare with another engine's.
    nlohmann::json answers = nlohmann::json::object();
    for (const auto& [key, got] : full_answers) answers[key] = {{"full", got}, {"expected", expected[key]}};
    for (const auto& [name, data] : std::vector<std::pair<std::string, std::string>>{
             {"accuracy.md", md},
             {"accuracy.csv", csv},
             {"accuracy_vs_budget.png", *png},
             {"answers_full.json", answers.dump(1) + "\n"}}) {
      absl::Status s = WriteFileAtomically(out_dir + "/" + name, data);
      if (!s.ok()) return fail(s);
    }
    std::fprintf(stderr, "wrote %s/accuracy.md, accuracy.csv, accuracy_vs_budget.png, answers_full.json\n",
                 out_dir.c_str());
  }
  return 0;
}

}  // namespace
}  // namespace livekv

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return livekv::Run();
}
