// File: common/metrics/metrics.h
//
// Prometheus metrics for livekv's services, named livekv_*: prometheus-cpp's registry and text format, served at
// /metrics by a small HTTP/1.0 loop of our own. (prometheus-cpp's civetweb exposer runs its workers on fixed
// 100 KiB stacks, which overflow in every livekv service: OpenBLAS pulls in libquadmath, whose printf hooks send
// every vsnprintf down glibc's deep positional path.)
// Each service owns one ServiceMetrics; RPC handlers record every call's method, gRPC code and latency through it.
//
//   ServiceMetrics metrics("kvstore");
//   LIVEKV_RETURN_IF_ERROR(metrics.Serve("127.0.0.1:0"));   // GET http://127.0.0.1:<port>/metrics
//   metrics.RecordRpc("Recall", grpc::StatusCode::OK, seconds);
//
// Thread-safety: all methods are thread-safe (prometheus-cpp's metrics are).
#ifndef LIVEKV_COMMON_METRICS_METRICS_H_
#define LIVEKV_COMMON_METRICS_METRICS_H_

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/status.h"

namespace livekv {

class ServiceMetrics {
 public:
  explicit ServiceMetrics(const std::string& service);
  ~ServiceMetrics();  // stops serving
  // Starts serving /metrics on `address` ("127.0.0.1:0" for any port). UNAVAILABLE when it cannot bind.
  absl::Status Serve(const std::string& address);
  int port() const { return port_; }

  // livekv_requests_total{service, method, code} and livekv_request_duration_seconds{service, method}.
  void RecordRpc(const std::string& method, int grpc_code, double seconds);

  // A counter, gauge or histogram of this service (labels: service plus `labels`), created on first use.
  prometheus::Counter& Counter(const std::string& name, const std::string& help,
                               const std::map<std::string, std::string>& labels = {});
  prometheus::Gauge& Gauge(const std::string& name, const std::string& help,
                           const std::map<std::string, std::string>& labels = {});
  prometheus::Histogram& Histogram(const std::string& name, const std::string& help,
                                   const prometheus::Histogram::BucketBoundaries& buckets,
                                   const std::map<std::string, std::string>& labels = {});

  // Latency buckets from 100 µs to 60 s.
  static prometheus::Histogram::BucketBoundaries LatencyBuckets();

  prometheus::Registry& registry() { return *registry_; }

 private:
  std::map<std::string, std::string> Labels(const std::map<std::string, std::string>& extra) const;

  const std::string service_;
  std::shared_ptr<prometheus::Registry> registry_;
  void ServeLoop();

  int listen_fd_ = -1;
  std::thread server_;
  std::atomic<bool> stopping_{false};
  int port_ = 0;
  prometheus::Family<prometheus::Counter>& requests_;
  prometheus::Family<prometheus::Histogram>& durations_;
};

// Renders the registry in the Prometheus text format (what /metrics serves), for tests and `livekv stats`.
std::string RenderMetrics(prometheus::Registry& registry);

}  // namespace livekv

#endif  // LIVEKV_COMMON_METRICS_METRICS_H_
