#include "common/metrics/metrics.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace livekv {
namespace {

using ::testing::HasSubstr;

// A minimal HTTP GET over loopback.
std::string HttpGet(int port, const std::string& path) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ::close(fd);
    return "";
  }
  const std::string req = "GET " + path + " HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
  (void)!::write(fd, req.data(), req.size());
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = ::read(fd, buf, sizeof(buf))) > 0) out.append(buf, n);
  ::close(fd);
  return out;
}

TEST(ServiceMetricsTest, ServesNamedMetricsOverHttp) {
  ServiceMetrics m("kvstore");
  ASSERT_TRUE(m.Serve("127.0.0.1:0").ok());
  ASSERT_GT(m.port(), 0);
  m.RecordRpc("Recall", 0, 0.002);
  m.RecordRpc("Recall", 5, 0.001);
  m.Gauge("livekv_sessions", "Live sessions").Set(3);
  m.Counter("livekv_recall_bytes_total", "Bytes recalled").Increment(4096);
  const std::string body = HttpGet(m.port(), "/metrics");
  EXPECT_THAT(body, HasSubstr("livekv_requests_total{code=\"0\",method=\"Recall\",service=\"kvstore\"} 1"));
  EXPECT_THAT(body, HasSubstr("livekv_requests_total{code=\"5\",method=\"Recall\",service=\"kvstore\"} 1"));
  EXPECT_THAT(body, HasSubstr("livekv_sessions{service=\"kvstore\"} 3"));
  EXPECT_THAT(body, HasSubstr("livekv_recall_bytes_total{service=\"kvstore\"} 4096"));
  EXPECT_THAT(body, HasSubstr("livekv_request_duration_seconds_count{method=\"Recall\",service=\"kvstore\"} 2"));
  EXPECT_EQ(RenderMetrics(m.registry()).find("livekv_sessions") != std::string::npos, true);
  EXPECT_THAT(HttpGet(m.port(), "/other"), HasSubstr("404"));
}

TEST(ServiceMetricsTest, ServesFromAThreadWithARealStack) {
  // glibc's positional printf path (taken once any printf hook exists) needs more than 100 KiB of stack.
  ServiceMetrics m("decode");
  ASSERT_TRUE(m.Serve("127.0.0.1:0").ok());
  for (int i = 0; i < 50; ++i) m.Counter("livekv_c" + std::to_string(i), "c").Increment(i);
  EXPECT_THAT(HttpGet(m.port(), "/metrics"), HasSubstr("livekv_c49{service=\"decode\"} 49"));
  ServiceMetrics other("x");
  EXPECT_EQ(other.Serve("not-an-address").code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace livekv
