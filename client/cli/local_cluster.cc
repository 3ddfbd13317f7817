#include "client/cli/local_cluster.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "common/file.h"
#include "common/rpc/client.h"
#include "common/status_macros.h"
#include "proto/grpc/health/v1/health.grpc.pb.h"

namespace livekv::cli {
namespace {

constexpr char kWorkspace[] = "livekv";

bool IsExecutableFile(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) && access(path.c_str(), X_OK) == 0;
}

std::string Dirname(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

std::string SelfExe() {
  char buf[4096];
  const ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  return n > 0 ? std::string(buf, n) : std::string();
}

std::string DescribeExit(int status) {
  if (WIFEXITED(status)) return absl::StrCat("exited with status ", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    return absl::StrCat("was killed by signal ", WTERMSIG(status), " (", strsignal(WTERMSIG(status)), ")");
  }
  return absl::StrCat("ended with wait status ", status);
}

// The last lines of a log, for error messages.
std::string LogTail(const std::string& path) {
  absl::StatusOr<std::string> log = ReadFileToString(path);
  if (!log.ok()) return absl::StrCat("(no log: ", log.status().message(), ")");
  std::string text = *log;
  if (text.empty()) return absl::StrCat(path, " is empty");
  size_t start = text.size();
  for (int lines = 0; lines < 12 && start > 0;) {
    --start;
    if (text[start] == '\n' && start + 1 < text.size()) ++lines;
  }
  if (start > 0) ++start;
  return absl::StrCat("the end of ", path, ":\n", text.substr(start));
}

// A port file's port; 0 while the file is absent (or half-written: the services write them atomically, but be
// lenient).
int ReadPort(const std::string& path) {
  absl::StatusOr<std::string> text = ReadFileToString(path, 64);
  int port = 0;
  if (!text.ok() || !absl::SimpleAtoi(absl::StripAsciiWhitespace(*text), &port) || port <= 0 || port > 65535) {
    return 0;
  }
  return port;
}

std::string ServiceKind(const std::string& name) { return name.rfind("decode", 0) == 0 ? "decode" : name; }

// fork + exec with the child in its own process group (so a terminal's Ctrl-C reaches only the parent, which
// then stops the children in order), SIGTERM when the parent thread dies, stdout and stderr to `log_path`.
absl::StatusOr<pid_t> Spawn(const std::vector<std::string>& args, const std::string& log_path) {
  // Everything the child needs is prepared here: between fork and exec only async-signal-safe calls are allowed.
  std::vector<char*> argv;
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  const int log_fd = open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (log_fd < 0) return ErrnoStatus(absl::StrCat("open ", log_path), errno);
  const int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  int exec_error[2];
  if (null_fd < 0 || pipe2(exec_error, O_CLOEXEC) != 0) {
    const int err = errno;
    close(log_fd);
    if (null_fd >= 0) close(null_fd);
    return ErrnoStatus("pipe2", err);
  }
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid == 0) {
    setpgid(0, 0);
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent) _exit(127);  // the parent died before prctl
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);  // the parent may block SIGTERM/SIGINT to sigwait for them
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    signal(SIGPIPE, SIG_DFL);
    dup2(null_fd, 0);
    dup2(log_fd, 1);
    dup2(log_fd, 2);
    execv(argv[0], argv.data());
    const int err = errno;
    (void)!write(exec_error[1], &err, sizeof(err));
    _exit(127);
  }
  const int fork_errno = errno;
  close(exec_error[1]);
  close(log_fd);
  close(null_fd);
  if (pid < 0) {
    close(exec_error[0]);
    return ErrnoStatus("fork", fork_errno);
  }
  int err = 0;
  ssize_t n;
  do {
    n = read(exec_error[0], &err, sizeof(err));
  } while (n < 0 && errno == EINTR);
  close(exec_error[0]);
  if (n == sizeof(err)) {  // exec failed; the pipe closes on exec otherwise
    waitpid(pid, nullptr, 0);
    return ErrnoStatus(absl::StrCat("exec ", args[0]), err);
  }
  return pid;
}

std::string MakeTempDir() {
  const char* base = getenv("TEST_TMPDIR");
  if (base == nullptr || *base == '\0') base = getenv("TMPDIR");
  if (base == nullptr || *base == '\0') base = "/tmp";
  std::string tmpl = JoinPath(base, "livekv-cluster-XXXXXX");
  if (mkdtemp(tmpl.data()) == nullptr) return "";
  return tmpl;
}

}  // namespace

absl::StatusOr<std::string> FindServiceBinary(const std::string& service, const std::string& services_dir) {
  const std::string binary = "livekv_" + service;
  const std::string rel = JoinPath(JoinPath("services", service), binary);
  std::vector<std::string> candidates;
  if (!services_dir.empty()) {
    candidates = {JoinPath(services_dir, binary), JoinPath(services_dir, rel)};
  } else {
    for (const char* var : {"RUNFILES_DIR", "TEST_SRCDIR"}) {
      const char* dir = getenv(var);
      if (dir != nullptr && *dir != '\0') candidates.push_back(JoinPath(JoinPath(dir, kWorkspace), rel));
    }
    const std::string exe = SelfExe();
    std::vector<std::string> programs = {exe};
    if (program_invocation_name != nullptr && strchr(program_invocation_name, '/') != nullptr) {
      programs.push_back(program_invocation_name);
    }
    for (const std::string& program : programs) {
      if (program.empty()) continue;
      candidates.push_back(JoinPath(JoinPath(program + ".runfiles", kWorkspace), rel));
    }
    // bazel-bin/client/cli/livekv -> bazel-bin/services/<service>/livekv_<service>.
    if (!exe.empty()) {
      std::string dir = Dirname(exe);
      for (int up = 0; up < 4 && dir != "/"; ++up, dir = Dirname(dir)) candidates.push_back(JoinPath(dir, rel));
    }
    candidates.push_back(JoinPath("bazel-bin", rel));
  }
  std::vector<std::string> looked;
  for (const std::string& c : candidates) {
    if (std::find(looked.begin(), looked.end(), c) != looked.end()) continue;
    if (IsExecutableFile(c)) return c;
    looked.push_back(c);
  }
  return absl::NotFoundError(
      absl::StrCat("cannot find the ", binary, " binary; looked in:\n  ", absl::StrJoin(looked, "\n  "),
                   "\nbuild it with `bazel build //services/", service, ":", binary,
                   "` (it is a data dependency of //client/cli:livekv), or pass --services_dir"));
}

absl::StatusOr<ClusterAddresses> ReadClusterAddresses(const std::string& dir) {
  auto address = [&](const std::string& name) -> absl::StatusOr<std::string> {
    const std::string path = JoinPath(dir, name + ".port");
    const int port = ReadPort(path);
    if (port == 0) {
      return absl::NotFoundError(absl::StrCat("no port in ", path, " (is `livekv up --dir ", dir, "` running?)"));
    }
    return absl::StrCat("127.0.0.1:", port);
  };
  ClusterAddresses a;
  LIVEKV_ASSIGN_OR_RETURN(a.kvstore, address("kvstore"));
  LIVEKV_ASSIGN_OR_RETURN(a.prefill, address("prefill"));
  LIVEKV_ASSIGN_OR_RETURN(std::string decode, address("decode"));
  a.decode.push_back(decode);
  for (int i = 1;; ++i) {
    absl::StatusOr<std::string> more = address(absl::StrCat("decode-", i));
    if (!more.ok()) break;
    a.decode.push_back(*more);
  }
  return a;
}

LocalCluster::LocalCluster(const LocalClusterOptions& options, std::string dir, bool own_dir)
    : options_(options), dir_(std::move(dir)), own_dir_(own_dir) {}

LocalCluster::~LocalCluster() { Stop().IgnoreError(); }

absl::StatusOr<std::unique_ptr<LocalCluster>> LocalCluster::Start(const LocalClusterOptions& options) {
  if (options.num_decode < 1) {
    return absl::InvalidArgumentError(absl::StrCat("num_decode must be at least 1, saw ", options.num_decode));
  }
  // Find every binary before starting anything.
  for (const char* kind : {"kvstore", "prefill", "decode"}) {
    LIVEKV_RETURN_IF_ERROR(FindServiceBinary(kind, options.services_dir).status());
  }
  std::string dir = options.dir;
  const bool own_dir = dir.empty();
  if (own_dir) {
    dir = MakeTempDir();
    if (dir.empty()) return ErrnoStatus("mkdtemp", errno);
  } else {
    LIVEKV_RETURN_IF_ERROR(MakeDirectories(dir));
  }
  std::unique_ptr<LocalCluster> cluster(new LocalCluster(options, dir, own_dir));
  absl::Status s = [&]() -> absl::Status {
    LIVEKV_RETURN_IF_ERROR(cluster->StartService("kvstore", options.kvstore_flags));
    const std::string kvstore = "--kvstore=" + cluster->kvstore().address;
    std::vector<std::string> prefill = {kvstore, "--model=" + options.model_dir};
    if (options.threads > 0) prefill.push_back(absl::StrCat("--threads=", options.threads));
    prefill.insert(prefill.end(), options.prefill_flags.begin(), options.prefill_flags.end());
    LIVEKV_RETURN_IF_ERROR(cluster->StartService("prefill", prefill));
    std::vector<std::string> decode = {kvstore, "--prefill=" + cluster->prefill().address,
                                       "--model=" + options.model_dir};
    if (options.threads > 0) decode.push_back(absl::StrCat("--threads=", options.threads));
    decode.insert(decode.end(), options.decode_flags.begin(), options.decode_flags.end());
    for (int i = 0; i < options.num_decode; ++i) {
      LIVEKV_RETURN_IF_ERROR(cluster->StartService(i == 0 ? "decode" : absl::StrCat("decode-", i), decode));
    }
    return absl::OkStatus();
  }();
  if (!s.ok()) {
    cluster->keep_dir_ = true;  // the error names logs in it
    cluster->Stop().IgnoreError();
    return s;
  }
  return cluster;
}

absl::Status LocalCluster::StartService(const std::string& name, const std::vector<std::string>& flags) {
  LIVEKV_ASSIGN_OR_RETURN(std::string binary, FindServiceBinary(ServiceKind(name), options_.services_dir));
  LocalService service;
  service.name = name;
  service.binary = binary;
  service.log_path = JoinPath(dir_, name + ".log");
  const std::string port_file = JoinPath(dir_, name + ".port");
  const std::string metrics_port_file = JoinPath(dir_, name + ".metrics_port");
  // A port file left by an earlier run must not be mistaken for this one's.
  unlink(port_file.c_str());
  unlink(metrics_port_file.c_str());
  std::vector<std::string> args = {binary, "--listen=127.0.0.1:0", "--port_file=" + port_file,
                                   "--metrics_listen=127.0.0.1:0", "--metrics_port_file=" + metrics_port_file};
  args.insert(args.end(), flags.begin(), flags.end());
  LIVEKV_ASSIGN_OR_RETURN(service.pid, Spawn(args, service.log_path));
  services_.push_back(service);
  return WaitReady(&services_.back(), absl::Now() + options_.start_timeout);
}

bool LocalCluster::Reap(LocalService* service) {
  if (service->exited) return true;
  if (service->pid <= 0) return false;
  int status = 0;
  const pid_t r = waitpid(service->pid, &status, WNOHANG);
  if (r == service->pid) {
    service->exited = true;
    service->exit_status = status;
  } else if (r < 0 && errno == ECHILD) {  // reaped by someone else: gone, its status unknown
    service->exited = true;
    service->exit_status = W_EXITCODE(255, 0);
  }
  return service->exited;
}

absl::Status LocalCluster::Kill(const std::string& name, int signal) {
  for (LocalService& s : services_) {
    if (s.name != name) continue;
    if (Reap(&s)) return absl::OkStatus();
    if (kill(s.pid, signal) != 0) return ErrnoStatus(absl::StrCat("kill ", s.name), errno);
    if (signal == SIGKILL) {
      waitpid(s.pid, &s.exit_status, 0);
      s.exited = true;
    }
    return absl::OkStatus();
  }
  return absl::NotFoundError(absl::StrCat("no service called \"", name, "\" in the local cluster"));
}

absl::Status LocalCluster::WaitReady(LocalService* service, absl::Time deadline) {
  const std::string port_file = JoinPath(dir_, service->name + ".port");
  std::unique_ptr<grpc::health::v1::Health::Stub> health;
  std::string last_problem = absl::StrCat("no port in ", port_file, " yet");
  while (true) {
    if (Reap(service)) {
      return absl::FailedPreconditionError(absl::StrCat("livekv_", ServiceKind(service->name), " (", service->name,
                                                        ") ", DescribeExit(service->exit_status),
                                                        " before it was ready; ", LogTail(service->log_path)));
    }
    if (service->port == 0) {
      service->port = ReadPort(port_file);
      if (service->port != 0) {
        service->address = absl::StrCat("127.0.0.1:", service->port);
        health = grpc::health::v1::Health::NewStub(MakeChannel(service->address));
      }
    }
    if (health != nullptr) {
      grpc::ClientContext context;
      SetDeadline(&context, std::max(absl::Milliseconds(100), std::min(absl::Seconds(1), deadline - absl::Now())));
      grpc::health::v1::HealthCheckRequest request;
      grpc::health::v1::HealthCheckResponse response;
      const grpc::Status s = health->Check(&context, request, &response);
      if (s.ok() && response.status() == grpc::health::v1::HealthCheckResponse::SERVING) break;
      last_problem = s.ok() ? absl::StrCat("health is ",
                                           grpc::health::v1::HealthCheckResponse::ServingStatus_Name(response.status()))
                            : absl::StrCat("health check: ", s.error_message());
    }
    if (absl::Now() > deadline) {
      return absl::DeadlineExceededError(absl::StrCat(
          "livekv_", ServiceKind(service->name), " (", service->name, ") was not ready within ",
          absl::FormatDuration(options_.start_timeout), " (", last_problem, "); ", LogTail(service->log_path)));
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  // The metrics port file is written right after the gRPC one; it is optional.
  const std::string metrics_port_file = JoinPath(dir_, service->name + ".metrics_port");
  const absl::Time metrics_deadline = std::min(deadline, absl::Now() + absl::Seconds(2));
  while ((service->metrics_port = ReadPort(metrics_port_file)) == 0 && absl::Now() < metrics_deadline) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  return absl::OkStatus();
}

std::vector<const LocalService*> LocalCluster::decode() const {
  std::vector<const LocalService*> out;
  for (size_t i = 2; i < services_.size(); ++i) out.push_back(&services_[i]);
  return out;
}

sdk::ClientOptions LocalCluster::client_options() const {
  sdk::ClientOptions o;
  o.kvstore = kvstore().address;
  o.prefill = prefill().address;
  for (const LocalService* d : decode()) o.decode.push_back(d->address);
  return o;
}

absl::Status LocalCluster::CheckAlive() {
  for (LocalService& s : services_) {
    if (Reap(&s)) {
      return absl::FailedPreconditionError(absl::StrCat("livekv_", ServiceKind(s.name), " (", s.name, ") ",
                                                        DescribeExit(s.exit_status), "; ", LogTail(s.log_path)));
    }
  }
  return absl::OkStatus();
}

absl::Status LocalCluster::Stop() {
  if (stopped_) return stop_status_;
  stopped_ = true;
  std::vector<std::string> failures;
  // Reverse start order: decode and prefill drain against a store that is still up.
  for (auto it = services_.rbegin(); it != services_.rend(); ++it) {
    LocalService& s = *it;
    if (!Reap(&s)) {
      kill(s.pid, SIGTERM);
      const absl::Time deadline = absl::Now() + options_.stop_timeout;
      while (!Reap(&s) && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(10));
      if (!s.exited) {
        kill(s.pid, SIGKILL);
        waitpid(s.pid, &s.exit_status, 0);
        s.exited = true;
        failures.push_back(absl::StrCat(s.name, " did not exit within ", absl::FormatDuration(options_.stop_timeout),
                                        " of SIGTERM and was killed (log: ", s.log_path, ")"));
        continue;
      }
    }
    if (!WIFEXITED(s.exit_status) || WEXITSTATUS(s.exit_status) != 0) {
      failures.push_back(absl::StrCat(s.name, " ", DescribeExit(s.exit_status), " (log: ", s.log_path, ")"));
    }
  }
  stop_status_ = failures.empty()
                     ? absl::OkStatus()
                     : absl::InternalError(absl::StrCat("stopping the local cluster: ", absl::StrJoin(failures, "; ")));
  if (stop_status_.ok() && own_dir_ && !keep_dir_) {
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
  }
  return stop_status_;
}

}  // namespace livekv::cli
