// livekv session create|list|get|delete, livekv append, livekv ask, livekv stats: the SDK from the command line,
// against running services (--kvstore/--prefill/--decode, or --cluster_dir of `livekv up --dir DIR`).
#include <fstream>
#include <iostream>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "client/cli/client_flags.h"
#include "client/cli/commands.h"
#include "client/cli/generate_flags.h"
#include "common/status_macros.h"

ABSL_FLAG(std::string, tenant, "", "session create/list: the tenant (empty: the default; list: every tenant).");
ABSL_FLAG(std::string, session_id, "", "session create: the id (empty: a random one).");
ABSL_FLAG(std::string, model_name, "",
          "session create: the model's name on the services (default: --model's last part).");
ABSL_FLAG(absl::Duration, ttl, absl::ZeroDuration(),
          "session create: idle time before the store deletes it (0: its default).");
ABSL_FLAG(std::string, bos, "auto",
          "append: start the text with the beginning-of-sequence token: auto (when the session is empty), yes, no.");
ABSL_FLAG(bool, append_turn, false, "ask: append the question and the answer to the session afterwards.");
ABSL_FLAG(std::vector<std::string>, stop, {}, "ask: stop when the answer ends with one of these (comma-separated).");

namespace livekv::cli {
namespace {

int Fail(const absl::Status& s) {
  std::cerr << "error: " << s << "\n";
  return 1;
}

int Usage(const std::string& message) {
  std::cerr << "error: " << message << "\n";
  return 2;
}

std::string PolicyName(const v1::PolicyConfig& p) {
  const std::string full = v1::PolicyKind_Name(p.kind());
  absl::string_view name = full;
  absl::ConsumePrefix(&name, "POLICY_");
  return absl::AsciiStrToLower(name);
}

std::string Expiry(int64_t expires_unix_ms) {
  if (expires_unix_ms == 0) return "never";
  const absl::Duration left = absl::FromUnixMillis(expires_unix_ms) - absl::Now();
  if (left <= absl::ZeroDuration()) return "expired";
  return "in " + absl::FormatDuration(absl::Trunc(left, absl::Seconds(1)));
}

absl::Status CreateSession(std::ostream& out) {
  LIVEKV_ASSIGN_OR_RETURN(std::unique_ptr<sdk::Client> client, ConnectFromFlags());
  sdk::SessionOptions so;
  so.model_dir = ModelDirFromFlags();
  so.model_name = absl::GetFlag(FLAGS_model_name);
  LIVEKV_ASSIGN_OR_RETURN(so.policy, PolicyOptionsFromFlags());
  so.ttl = absl::GetFlag(FLAGS_ttl);
  so.tenant = absl::GetFlag(FLAGS_tenant);
  so.session_id = absl::GetFlag(FLAGS_session_id);
  LIVEKV_ASSIGN_OR_RETURN(v1::Session session, client->CreateSession(so));
  out << session.session_id() << "\n";
  return absl::OkStatus();
}

absl::Status ListSessions(std::ostream& out) {
  LIVEKV_ASSIGN_OR_RETURN(std::unique_ptr<sdk::Client> client, ConnectFromFlags());
  LIVEKV_ASSIGN_OR_RETURN(std::vector<v1::Session> sessions, client->ListSessions(absl::GetFlag(FLAGS_tenant)));
  if (sessions.empty()) {
    out << "no sessions\n";
    return absl::OkStatus();
  }
  out << absl::StrFormat("%-20s %-10s %-8s %-10s %7s %8s %10s  %s\n", "SESSION", "TENANT", "MODEL", "POLICY", "BUDGET",
                         "TOKENS", "BYTES", "EXPIRES");
  for (const v1::Session& s : sessions) {
    out << absl::StrFormat("%-20s %-10s %-8s %-10s %7d %8d %10s  %s%s\n", s.session_id(),
                           s.tenant().empty() ? "-" : s.tenant(), s.model(), PolicyName(s.policy()),
                           s.policy().budget(), s.num_tokens(), FormatBytes(s.bytes()), Expiry(s.expires_unix_ms()),
                           s.append_open() ? " (append open)" : "");
  }
  return absl::OkStatus();
}

absl::Status GetSession(const std::string& id, std::ostream& out) {
  LIVEKV_ASSIGN_OR_RETURN(std::unique_ptr<sdk::Client> client, ConnectFromFlags());
  LIVEKV_ASSIGN_OR_RETURN(v1::Session s, client->GetSession(id));
  out << s.DebugString();
  return absl::OkStatus();
}

absl::Status DeleteSession(const std::string& id, std::ostream& out) {
  LIVEKV_ASSIGN_OR_RETURN(std::unique_ptr<sdk::Client> client, ConnectFromFlags());
  LIVEKV_RETURN_IF_ERROR(client->DeleteSession(id));
  out << "deleted " << id << "\n";
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadInput(const std::string& path) {
  if (path.empty() || path == "-") {
    return std::string(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

absl::Status Append(const std::string& session_id, const std::string& path, std::ostream& out) {
  const std::string bos = absl::GetFlag(FLAGS_bos);
  if (bos != "auto" && bos != "yes" && bos != "no") {
    return absl::InvalidArgumentError(absl::StrCat("--bos must be auto, yes or no, saw \"", bos, "\""));
  }
  LIVEKV_ASSIGN_OR_RETURN(std::string text, ReadInput(path));
  LIVEKV_ASSIGN_OR_RETURN(std::unique_ptr<sdk::Client> client, ConnectFromFlags());
  bool add_bos = bos == "yes";
  if (bos == "auto") {
    LIVEKV_ASSIGN_OR_RETURN(v1::Session session, client->GetSession(session_id));
    add_bos = session.num_tokens() == 0;
  }
  LIVEKV_ASSIGN_OR_RETURN(v1::AppendTextResponse r, client->Append(session_id, text, add_bos));
  out << absl::StrFormat(
      "appended %d tokens (session: %d tokens, version %d)\n"
      "timings: prefill %.1f ms (%.0f tokens/s) | context recall %.1f ms | clustering %.1f ms | store write %.1f ms\n",
      r.tokens_appended(), r.session_tokens(), r.session_version(), r.prefill_ms(),
      r.prefill_ms() > 0 ? r.tokens_appended() / (r.prefill_ms() / 1e3) : 0.0, r.recall_ms(), r.cluster_ms(),
      r.write_ms());
  return absl::OkStatus();
}

absl::Status Ask(const std::string& session_id, const std::string& question, std::ostream& out) {
  LIVEKV_ASSIGN_OR_RETURN(std::unique_ptr<sdk::Client> client, ConnectFromFlags());
  sdk::GenerateRequest request;
  request.session_id = session_id;
  request.prompt = question;
  request.max_tokens = static_cast<int>(absl::GetFlag(FLAGS_max_tokens));
  request.sampling.temperature = absl::GetFlag(FLAGS_temperature);
  request.sampling.top_p = absl::GetFlag(FLAGS_top_p);
  request.sampling.top_k = absl::GetFlag(FLAGS_top_k);
  request.sampling.seed = absl::GetFlag(FLAGS_seed);
  request.stop = absl::GetFlag(FLAGS_stop);
  request.append_turn = absl::GetFlag(FLAGS_append_turn);
  LIVEKV_ASSIGN_OR_RETURN(sdk::GenerateResult r,
                          client->Generate(request, [&](const sdk::Piece& p) { out << p.text << std::flush; }));
  out << "\n\n"
      << "timings: " << FormatTimings(r.timings) << " | finish: " << r.finish_reason << "\n";
  if (r.retries > 0) out << "(resumed after " << r.retries << " failed decode attempt(s))\n";
  return absl::OkStatus();
}

absl::Status Stats(std::ostream& out) {
  LIVEKV_ASSIGN_OR_RETURN(std::unique_ptr<sdk::Client> client, ConnectFromFlags());
  LIVEKV_ASSIGN_OR_RETURN(v1::StatsResponse s, client->Stats());
  out << absl::StrFormat(
      "sessions %d | leases %d | open appends %d\n"
      "pool %s of %s used | recalled %s since start\n"
      "expired sessions %d | expired leases %d | aborted appends %d\n",
      s.sessions(), s.leases(), s.open_appends(), FormatBytes(s.pool_used_bytes()),
      FormatBytes(s.pool_capacity_bytes()), FormatBytes(s.recall_bytes()), s.expired_sessions(), s.expired_leases(),
      s.aborted_appends());
  return absl::OkStatus();
}

int Run(const absl::Status& s) { return s.ok() ? 0 : Fail(s); }

}  // namespace

int SessionCommand(const std::vector<std::string>& args) {
  const std::string sub = args.empty() ? "" : args[0];
  if (sub == "create" && args.size() == 1) return Run(CreateSession(std::cout));
  if (sub == "list" && args.size() == 1) return Run(ListSessions(std::cout));
  if (sub == "get" && args.size() == 2) return Run(GetSession(args[1], std::cout));
  if (sub == "delete" && args.size() == 2) return Run(DeleteSession(args[1], std::cout));
  return Usage(
      "usage: livekv session create [--policy P --budget N --tenant T --ttl 1h --model DIR] | list "
      "[--tenant T] | get ID | delete ID");
}

int AppendCommand(const std::vector<std::string>& args) {
  if (args.empty() || args.size() > 2) return Usage("usage: livekv append SESSION [FILE|-] [--bos auto|yes|no]");
  return Run(Append(args[0], args.size() == 2 ? args[1] : "-", std::cout));
}

int AskCommand(const std::vector<std::string>& args) {
  if (args.size() < 2) return Usage("usage: livekv ask SESSION \"question\" [--max_tokens N] [--append_turn]");
  const std::vector<std::string> words(args.begin() + 1, args.end());
  return Run(Ask(args[0], absl::StrJoin(words, " "), std::cout));
}

int StatsCommand(const std::vector<std::string>& args) {
  if (!args.empty()) return Usage(absl::StrCat("unexpected argument \"", args[0], "\""));
  return Run(Stats(std::cout));
}

}  // namespace livekv::cli
