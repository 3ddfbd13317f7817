#include "common/logging.h"

namespace livekv {

void InitLogging(const char* argv0) {
  FLAGS_logtostderr = true;
  if (!google::IsGoogleLoggingInitialized()) google::InitGoogleLogging(argv0);
}

}  // namespace livekv
