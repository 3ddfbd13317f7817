// The livekv command-line tool.
//
//   livekv demo [--in-process]   (run from the workspace root, or through `bazel run //:livekv -- demo`)
//   livekv make-model --out DIR [--preset tiny] [--dtype f32] [--weights-seed 1]
//   livekv generate --model DIR --prompt TEXT [--max-tokens 32] [--seed 0] [--temperature 0] [--top-p 1]
//   livekv up [--model models/tiny] [--dir DIR]
//   livekv session create [--policy clusterkv --budget 512] | list | get ID | delete ID
//   livekv append SESSION [FILE|-]
//   livekv ask SESSION "question"
//   livekv stats
// The last four reach the services at --kvstore/--prefill/--decode, or at those `livekv up --dir DIR` started
// (--cluster-dir DIR).
//
// Flags may be spelled with dashes or underscores (--max-tokens or --max_tokens).
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "client/cli/commands.h"
#include "common/logging.h"

namespace {

constexpr char kUsage[] =
    "livekv <command> [flags]\n"
    "commands:\n"
    "  demo        start the services, append a long document to a session and ask a question about it\n"
    "              (the embedded trained model, CPU, clusterkv); --in-process: the same in this process\n"
    "  up          run the KV store, prefill and decode services locally until Ctrl-C: [--model DIR] [--dir DIR]\n"
    "  session     create [--policy P --budget N --tenant T --ttl D] | list [--tenant T] | get ID | delete ID\n"
    "  append      append text to a session: SESSION [FILE|-] [--bos auto|yes|no]\n"
    "  ask         stream an answer from a session: SESSION \"question\" [--max-tokens N] [--append-turn]\n"
    "  stats       the KV store's counters\n"
    "  generate    generate text from a prompt in this process: --model DIR --prompt TEXT [--max-tokens N]\n"
    "  make-model  write a model with seeded dummy weights: --out DIR [--preset tiny|small-100m|llama3-8b]\n"
    "session, append, ask and stats reach the services at --kvstore, --prefill, --decode (default\n"
    "127.0.0.1:7101/7102/7103), or at those of `livekv up --dir DIR` with --cluster-dir DIR\n"
    "run `livekv --helpfull` for every flag";

// absl flag names are identifiers; accept the dashed spelling users expect by rewriting "--a-b" to "--a_b".
std::vector<std::string> NormaliseFlagNames(int argc, char** argv) {
  std::vector<std::string> out;
  for (int i = 0; i < argc; ++i) {
    std::string a = argv[i];
    if (i > 0 && a.size() > 2 && a.compare(0, 2, "--") == 0) {
      const size_t end = std::min(a.find('='), a.size());
      for (size_t j = 2; j < end; ++j) {
        if (a[j] == '-') a[j] = '_';
      }
    }
    out.push_back(a);
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  livekv::InitLogging(argv[0]);
  absl::SetProgramUsageMessage(kUsage);
  std::vector<std::string> normalised = NormaliseFlagNames(argc, argv);
  std::vector<char*> args;
  for (std::string& a : normalised) args.push_back(a.data());
  std::vector<char*> positional = absl::ParseCommandLine(static_cast<int>(args.size()), args.data());
  if (positional.size() < 2) {
    std::cerr << kUsage << "\n";
    return 2;
  }
  const std::string command = positional[1];
  const std::vector<std::string> rest(positional.begin() + 2, positional.end());
  if (command == "generate") return livekv::cli::GenerateCommand(rest);
  if (command == "make-model") return livekv::cli::MakeModelCommand(rest);
  if (command == "demo") return livekv::cli::DemoCommand(rest);
  if (command == "up") return livekv::cli::UpCommand(rest);
  if (command == "session") return livekv::cli::SessionCommand(rest);
  if (command == "append") return livekv::cli::AppendCommand(rest);
  if (command == "ask") return livekv::cli::AskCommand(rest);
  if (command == "stats") return livekv::cli::StatsCommand(rest);
  std::cerr << "error: unknown command \"" << command << "\"\n" << kUsage << "\n";
  return 2;
}
