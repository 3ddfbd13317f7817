// File: common/rpc/server.h
//
// Starting a livekv gRPC server the same way everywhere: the standard health service and server reflection on
// every server, large messages allowed (recall chunks are up to 4 MiB), the bound port reported (so tests and
// `livekv up` can bind port 0), and a graceful shutdown that gives in-flight calls a deadline to finish.
//
//   GrpcServer server;
//   LIVEKV_RETURN_IF_ERROR(server.Start("127.0.0.1:0", {&my_service}));
//   std::cout << server.port();
//   ...
//   server.Shutdown(absl::Seconds(5));
//
// Thread-safety: Start and Shutdown from one thread; port() and address() from any after Start.
#ifndef LIVEKV_COMMON_RPC_SERVER_H_
#define LIVEKV_COMMON_RPC_SERVER_H_

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace livekv {

class GrpcServer {
 public:
  GrpcServer() = default;
  ~GrpcServer();  // shuts down with a zero deadline if still running
  GrpcServer(const GrpcServer&) = delete;
  GrpcServer& operator=(const GrpcServer&) = delete;

  // Binds `address` ("127.0.0.1:0" for any free port) insecurely and serves `services` (borrowed; they must
  // outlive the server). UNAVAILABLE naming the address when it cannot be bound.
  absl::Status Start(const std::string& address, const std::vector<grpc::Service*>& services);

  int port() const { return port_; }
  // "127.0.0.1:<port>".
  std::string address() const;

  // Marks the server NOT_SERVING in the health service, stops accepting calls, waits up to `grace` for
  // in-flight calls, then cancels what remains.
  void Shutdown(absl::Duration grace);

  grpc::Server* server() { return server_.get(); }

 private:
  std::unique_ptr<grpc::Server> server_;
  std::string host_;
  int port_ = 0;
};

// Writes `port` to `path` atomically (for parents that started the process with port 0).
absl::Status WritePortFile(const std::string& path, int port);

}  // namespace livekv

#endif  // LIVEKV_COMMON_RPC_SERVER_H_
