#include "common/metrics/metrics.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <prometheus/text_serializer.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace livekv {

ServiceMetrics::ServiceMetrics(const std::string& service)
    : service_(service),
      registry_(std::make_shared<prometheus::Registry>()),
      requests_(prometheus::BuildCounter()
                    .Name("livekv_requests_total")
                    .Help("RPCs handled, by method and gRPC status code")
                    .Register(*registry_)),
      durations_(prometheus::BuildHistogram()
                     .Name("livekv_request_duration_seconds")
                     .Help("RPC handling time, by method")
                     .Register(*registry_)) {}

ServiceMetrics::~ServiceMetrics() {
  stopping_ = true;
  if (listen_fd_ >= 0) ::shutdown(listen_fd_, SHUT_RDWR);
  if (server_.joinable()) server_.join();
  if (listen_fd_ >= 0) ::close(listen_fd_);
}

absl::Status ServiceMetrics::Serve(const std::string& address) {
  const size_t colon = address.rfind(':');
  int port = 0;
  if (colon == std::string::npos || !absl::SimpleAtoi(address.substr(colon + 1), &port) || port < 0 || port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("metrics address \"", address, "\" is not HOST:PORT"));
  }
  std::string host = address.substr(0, colon);
  if (host.empty() || host == "localhost") host = "127.0.0.1";
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  if (::inet_pton(AF_INET, host.c_str(), &addr.sin_addr) != 1) {
    return absl::InvalidArgumentError(absl::StrCat("metrics host \"", host, "\" is not an IPv4 address"));
  }
  listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (listen_fd_ < 0 || ::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::listen(listen_fd_, 16) != 0) {
    const std::string err = std::strerror(errno);
    if (listen_fd_ >= 0) ::close(listen_fd_);
    listen_fd_ = -1;
    return absl::UnavailableError(absl::StrCat("cannot serve metrics on ", address, ": ", err));
  }
  socklen_t len = sizeof(addr);
  ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len);
  port_ = ntohs(addr.sin_port);
  server_ = std::thread([this] { ServeLoop(); });
  return absl::OkStatus();
}

void ServiceMetrics::ServeLoop() {
  while (!stopping_) {
    const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR) continue;
      return;  // the socket was shut down
    }
    // One short request at a time: a scraper sends "GET /metrics HTTP/1.x" and reads to the end.
    std::string request;
    char buf[2048];
    pollfd p{fd, POLLIN, 0};
    while (request.find("\r\n\r\n") == std::string::npos && request.size() < 8192 && ::poll(&p, 1, 2000) > 0) {
      const ssize_t n = ::read(fd, buf, sizeof(buf));
      if (n <= 0) break;
      request.append(buf, n);
    }
    std::string body, status = "200 OK", type = "text/plain; version=0.0.4; charset=utf-8";
    if (absl::StartsWith(request, "GET /metrics ") || absl::StartsWith(request, "GET /metrics?")) {
      body = RenderMetrics(*registry_);
    } else {
      status = "404 Not Found";
      body = "livekv serves /metrics only\n";
      type = "text/plain";
    }
    const std::string response = absl::StrCat("HTTP/1.0 ", status, "\r\nContent-Type: ", type,
                                              "\r\nContent-Length: ", body.size(), "\r\nConnection: close\r\n\r\n", body);
    size_t done = 0;
    while (done < response.size()) {
      const ssize_t n = ::send(fd, response.data() + done, response.size() - done, MSG_NOSIGNAL);
      if (n <= 0) break;
      done += n;
    }
    ::close(fd);
  }
}

std::map<std::string, std::string> ServiceMetrics::Labels(const std::map<std::string, std::string>& extra) const {
  std::map<std::string, std::string> labels = extra;
  labels["service"] = service_;
  return labels;
}

void ServiceMetrics::RecordRpc(const std::string& method, int grpc_code, double seconds) {
  requests_.Add(Labels({{"method", method}, {"code", std::to_string(grpc_code)}})).Increment();
  durations_.Add(Labels({{"method", method}}), LatencyBuckets()).Observe(seconds);
}

prometheus::Counter& ServiceMetrics::Counter(const std::string& name, const std::string& help,
                                             const std::map<std::string, std::string>& labels) {
  return prometheus::BuildCounter().Name(name).Help(help).Register(*registry_).Add(Labels(labels));
}

prometheus::Gauge& ServiceMetrics::Gauge(const std::string& name, const std::string& help,
                                         const std::map<std::string, std::string>& labels) {
  return prometheus::BuildGauge().Name(name).Help(help).Register(*registry_).Add(Labels(labels));
}

prometheus::Histogram& ServiceMetrics::Histogram(const std::string& name, const std::string& help,
                                                 const prometheus::Histogram::BucketBoundaries& buckets,
                                                 const std::map<std::string, std::string>& labels) {
  return prometheus::BuildHistogram().Name(name).Help(help).Register(*registry_).Add(Labels(labels), buckets);
}

prometheus::Histogram::BucketBoundaries ServiceMetrics::LatencyBuckets() {
  return {1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
}

std::string RenderMetrics(prometheus::Registry& registry) {
  prometheus::TextSerializer serializer;
  return serializer.Serialize(registry.Collect());
}

}  // namespace livekv
