#include <grpcpp/health_check_service_interface.h>

#include "common/rpc/client.h"
#include "common/rpc/server.h"
#include "common/rpc/status.h"
#include "gtest/gtest.h"
#include "proto/grpc/health/v1/health.grpc.pb.h"

namespace livekv {
namespace {

TEST(RpcStatusTest, CodesAndMessagesRoundTrip) {
  for (absl::StatusCode code : {absl::StatusCode::kNotFound, absl::StatusCode::kInvalidArgument,
                                absl::StatusCode::kResourceExhausted, absl::StatusCode::kAborted,
                                absl::StatusCode::kUnavailable, absl::StatusCode::kDeadlineExceeded}) {
    const absl::Status s(code, "session x: nope");
    const grpc::Status g = ToGrpcStatus(s);
    EXPECT_EQ(static_cast<int>(g.error_code()), static_cast<int>(code));
    EXPECT_EQ(g.error_message(), "session x: nope");
    EXPECT_EQ(FromGrpcStatus(g), s);
  }
  EXPECT_TRUE(ToGrpcStatus(absl::OkStatus()).ok());
}

TEST(RetryTest, RetriesOnlyUnavailable) {
  int calls = 0;
  RetryPolicy fast{4, absl::Milliseconds(1), absl::Milliseconds(2), 2.0};
  absl::Status s = RetryOnUnavailable(fast, [&] {
    ++calls;
    return calls < 3 ? absl::UnavailableError("down") : absl::OkStatus();
  });
  EXPECT_TRUE(s.ok());
  EXPECT_EQ(calls, 3);
  calls = 0;
  s = RetryOnUnavailable(fast, [&] {
    ++calls;
    return absl::NotFoundError("gone");
  });
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(calls, 1);
  calls = 0;
  s = RetryOnUnavailable(fast, [&] {
    ++calls;
    return absl::UnavailableError("down");
  });
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(calls, 4);
}

TEST(GrpcServerTest, ServesHealthOnAnEphemeralPortAndShutsDown) {
  GrpcServer server;
  ASSERT_TRUE(server.Start("127.0.0.1:0", {}).ok());
  ASSERT_GT(server.port(), 0);
  auto stub = grpc::health::v1::Health::NewStub(MakeChannel(server.address()));
  grpc::ClientContext ctx;
  SetDeadline(&ctx, absl::Seconds(5));
  grpc::health::v1::HealthCheckRequest req;
  grpc::health::v1::HealthCheckResponse resp;
  ASSERT_TRUE(stub->Check(&ctx, req, &resp).ok());
  EXPECT_EQ(resp.status(), grpc::health::v1::HealthCheckResponse::SERVING);
  server.Shutdown(absl::Milliseconds(100));
  grpc::ClientContext ctx2;
  SetDeadline(&ctx2, absl::Milliseconds(500));
  EXPECT_FALSE(stub->Check(&ctx2, req, &resp).ok());
}

TEST(GrpcServerTest, UnbindableAddressIsUnavailable) {
  GrpcServer a, b;
  ASSERT_TRUE(a.Start("127.0.0.1:0", {}).ok());
  EXPECT_EQ(b.Start(a.address(), {}).code(), absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace livekv
