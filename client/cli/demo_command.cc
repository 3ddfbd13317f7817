// livekv demo: the README's main job. Reads a document with facts hidden in it and asks a question about one of
// them, answered by the embedded model livekv trains itself (models/tiny) twice: with full attention, and through
// the clusterkv policy at a budget well below the document's length.
//
// By default the whole pipeline runs as it does in production: the three services start as local processes
// (client/cli/local_cluster.h), the document is appended to a session through the prefill service (its KV lands in
// the store, clustered), and the question is answered by the decode service, which recalls the clusters it
// selects from the store; the answer streams back through the SDK with per-stage timings. With --in_process the
// same question is answered inside this process, with the policy's per-layer counters.
#include <algorithm>
#include <iostream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "client/cli/client_flags.h"
#include "client/cli/commands.h"
#include "client/cli/generate_flags.h"
#include "client/cli/generation.h"
#include "client/cli/local_cluster.h"
#include "client/sdk/client.h"
#include "common/file.h"
#include "common/status_macros.h"
#include "models/eval_set.h"

ABSL_FLAG(std::string, demo_model, "models/tiny", "Model directory of the demo.");
ABSL_FLAG(std::string, demo_document, "models/tiny/eval/multikey_4096.jsonl",
          "A JSON-lines file of {\"prompt\", \"answer\"}; the demo uses its first line.");
ABSL_FLAG(bool, in_process, false, "demo: run the model inside this process instead of through the services.");

namespace livekv::cli {
namespace {

// The two ways the demo answers: full attention, and clusterkv at a budget well below the document.
std::vector<PolicyOptions> DemoPolicies() {
  PolicyOptions full;
  full.kind = PolicyKind::kFull;
  PolicyOptions clusterkv;
  clusterkv.kind = PolicyKind::kClusterKv;
  clusterkv.budget = 512;
  return {full, clusterkv};
}

std::string DescribePolicy(const PolicyOptions& policy) {
  if (policy.kind == PolicyKind::kFull) return "full attention";
  return absl::StrFormat("clusterkv, budget %d tokens per KV head (sink %d + window %d + clusters)", policy.budget,
                         policy.sink, policy.window);
}

// Prints whether the generated text starts with the expected answer.
void ReportAnswer(std::ostream& out, const std::string& text, const std::string& expected) {
  const bool correct = text.rfind(expected, 0) == 0;
  out << absl::StrFormat("\n          (expected%s: %s)\n", correct ? ", correct" : ", WRONG", expected);
}

absl::Status RunInProcessDemo(std::ostream& out) {
  CpuBackend backend;
  LIVEKV_ASSIGN_OR_RETURN(LoadedModel model, LoadModel(absl::GetFlag(FLAGS_demo_model), &backend));
  LIVEKV_ASSIGN_OR_RETURN(EvalDoc doc, ReadEvalDoc(absl::GetFlag(FLAGS_demo_document), 0));
  GenerateOptions options;
  options.max_new_tokens = 16;
  options.stop_ids = model.config.eos_token_ids;

  out << absl::StrFormat(
      "livekv demo (in process): model %s (%.1fM parameters, trained by tools/train/train_tiny.py), CPU\n",
      absl::GetFlag(FLAGS_demo_model), model.config.NumParameters() / 1e6);
  out << absl::StrFormat("document: %d bytes of prose with facts hidden in it, starting \"%s...\"\n",
                         doc.document().size(), doc.document().substr(0, 60));
  out << "question: " << doc.question() << "\n";
  for (const PolicyOptions& policy : DemoPolicies()) {
    out << "policy:   " << DescribePolicy(policy) << "\n";
    out << "answer:  " << std::flush;
    LIVEKV_ASSIGN_OR_RETURN(GenerationResult r,
                            GenerateText(model, &backend, doc.document() + doc.question(), options, policy,
                                         [&](absl::string_view p) { out << p << std::flush; }));
    ReportAnswer(out, r.text, doc.answer);
    const double decode_s = r.stats.decode_seconds - r.maintenance_seconds;
    out << absl::StrFormat(
        "timings:  prefill %d tokens %.0f ms (%.0f tokens/s) | clustering the document %.0f ms | decode %d tokens "
        "%.1f ms each (%.0f tokens/s)\n",
        r.stats.prompt_tokens, r.stats.prefill_seconds * 1e3, r.stats.prefill_tokens_per_second(),
        r.maintenance_seconds * 1e3, r.stats.generated_tokens - 1,
        decode_s * 1e3 / std::max<int64_t>(1, r.stats.generated_tokens - 1),
        (r.stats.generated_tokens - 1) / std::max(1e-9, decode_s));
    if (policy.kind != PolicyKind::kFull) {
      out << "attended per KV head and decode step (layers 0-1 dense), cluster hit rate vs the previous step:\n"
          << FormatCounters(r.counters, /*with_mass=*/false);
    }
  }
  return absl::OkStatus();
}

absl::Status RunPipelineDemo(std::ostream& out) {
  const std::string model_dir = absl::GetFlag(FLAGS_demo_model);
  LIVEKV_ASSIGN_OR_RETURN(EvalDoc doc, ReadEvalDoc(absl::GetFlag(FLAGS_demo_document), 0));
  LIVEKV_ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(model_dir));
  out << absl::StrFormat("livekv demo: model %s (%.1fM parameters, trained by tools/train/train_tiny.py), CPU\n",
                         model_dir, config.NumParameters() / 1e6);

  LocalClusterOptions cluster_options;
  cluster_options.model_dir = model_dir;
  cluster_options.services_dir = absl::GetFlag(FLAGS_services_dir);
  cluster_options.threads = absl::GetFlag(FLAGS_threads);
  absl::Time t = absl::Now();
  absl::StatusOr<std::unique_ptr<LocalCluster>> started = LocalCluster::Start(cluster_options);
  if (!started.ok()) {
    return absl::Status(started.status().code(),
                        absl::StrCat("starting the services: ", started.status().message(),
                                     "\n(`livekv demo --in_process` answers the same question without the services)"));
  }
  std::unique_ptr<LocalCluster> cluster = std::move(started).value();
  out << absl::StrFormat("services: kvstore %s | prefill %s | decode %s (started in %.1f s)\n",
                         cluster->kvstore().address, cluster->prefill().address, cluster->decode()[0]->address,
                         absl::ToDoubleSeconds(absl::Now() - t));

  sdk::ClientOptions client_options = cluster->client_options();
  client_options.timeout = absl::GetFlag(FLAGS_timeout);
  LIVEKV_ASSIGN_OR_RETURN(std::unique_ptr<sdk::Client> client, sdk::Client::Connect(client_options));
  out << "question: " << doc.question() << "\n";
  for (const PolicyOptions& policy : DemoPolicies()) {
    sdk::SessionOptions session_options;
    session_options.model_dir = model_dir;
    session_options.policy = policy;
    session_options.policy.sparse_prefill = policy.kind != PolicyKind::kFull;  // the question retrieves too
    LIVEKV_ASSIGN_OR_RETURN(v1::Session session, client->CreateSession(session_options));
    out << absl::StrFormat("session:  %s, %s\n", session.session_id(), DescribePolicy(policy));

    LIVEKV_ASSIGN_OR_RETURN(v1::AppendTextResponse appended,
                            client->Append(session.session_id(), doc.document(), /*add_bos=*/true));
    out << absl::StrFormat(
        "document: %d bytes of prose with facts hidden in it -> %d tokens: prefill %.0f ms (%.0f tokens/s), "
        "clustering %.0f ms, store write %.1f ms\n",
        doc.document().size(), appended.tokens_appended(), appended.prefill_ms(),
        appended.prefill_ms() > 0 ? appended.tokens_appended() / (appended.prefill_ms() / 1e3) : 0.0,
        appended.cluster_ms(), appended.write_ms());

    out << "answer:   " << std::flush;
    sdk::GenerateRequest request;
    request.session_id = session.session_id();
    request.prompt = doc.question();
    request.max_tokens = 16;
    LIVEKV_ASSIGN_OR_RETURN(sdk::GenerateResult r,
                            client->Generate(request, [&](const sdk::Piece& p) { out << p.text << std::flush; }));
    ReportAnswer(out, r.text, doc.answer);
    const v1::Timings& tm = r.timings;
    out << absl::StrFormat(
        "timings:  question prefill %.0f ms (%d tokens) | recall from the store %.1f ms, %s | first token %.0f ms "
        "| %d tokens at %.0f tokens/s\n",
        tm.prefill_ms(), tm.prompt_tokens(), tm.recall_ms(), FormatBytes(tm.recall_bytes()), tm.first_token_ms(),
        tm.generated_tokens(), tm.tokens_per_second());
    LIVEKV_RETURN_IF_ERROR(client->DeleteSession(session.session_id()));
  }
  // Close our connections first: a service waits out its whole shutdown grace while a client holds one open.
  client.reset();
  LIVEKV_RETURN_IF_ERROR(cluster->Stop());
  out << "services stopped cleanly (livekv demo --in_process runs the model in this process instead)\n";
  return absl::OkStatus();
}

}  // namespace

int DemoCommand(const std::vector<std::string>& args) {
  if (!args.empty()) {
    std::cerr << "error: unexpected argument \"" << args[0] << "\"\n";
    return 2;
  }
  absl::Status s = absl::GetFlag(FLAGS_in_process) ? RunInProcessDemo(std::cout) : RunPipelineDemo(std::cout);
  if (!s.ok()) {
    std::cerr << "error: " << s << "\n";
    return 1;
  }
  return 0;
}

}  // namespace livekv::cli
