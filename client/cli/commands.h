// File: client/cli/commands.h
//
// The subcommands of the `livekv` command-line tool. Each takes the positional arguments after its name (flags
// are already parsed), prints to stdout, reports errors to stderr, and returns the process exit code.
#ifndef LIVEKV_CLIENT_CLI_COMMANDS_H_
#define LIVEKV_CLIENT_CLI_COMMANDS_H_

#include <string>
#include <vector>

namespace livekv::cli {

int GenerateCommand(const std::vector<std::string>& args);
int MakeModelCommand(const std::vector<std::string>& args);
int DemoCommand(const std::vector<std::string>& args);

// Against running services (client/cli/client_flags.h).
int UpCommand(const std::vector<std::string>& args);
int SessionCommand(const std::vector<std::string>& args);
int AppendCommand(const std::vector<std::string>& args);
int AskCommand(const std::vector<std::string>& args);
int StatsCommand(const std::vector<std::string>& args);

}  // namespace livekv::cli

#endif  // LIVEKV_CLIENT_CLI_COMMANDS_H_
