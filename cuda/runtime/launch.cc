#include "cuda/runtime/launch.h"

namespace livekv {
namespace cuda {
namespace {

thread_local bool pdl_enabled = false;

}  // namespace

bool PdlEnabled() { return pdl_enabled; }
void SetPdlEnabled(bool on) { pdl_enabled = on; }

}  // namespace cuda
}  // namespace livekv
