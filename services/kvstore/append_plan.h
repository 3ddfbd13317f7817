// File: services/kvstore/append_plan.h
//
// What a staged append will do to a session, worked out before anything touches the session: the positional
// pages it will have, whether the append's clusterings fit them, the pool bytes it will hold, and whether the pool
// can take the clusterings' runs. CommitAppend uses these to reject a bad append with the session unchanged, and to
// make the one step that cannot be rolled back (ApplyClustering after Commit) unable to fail (session_store.h,
// "Atomic appends").
//
// Every function mirrors what kvcache/sequence_kv.cc does (Append's page layout, ValidateClustering's rules,
// ApplyClustering's allocation order); append_plan_test.cc checks each prediction against a real SequenceKv.
//
// Thread-safety: free functions; the caller keeps `kv` from changing during a call.
#ifndef LIVEKV_SERVICES_KVSTORE_APPEND_PLAN_H_
#define LIVEKV_SERVICES_KVSTORE_APPEND_PLAN_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "kvcache/page_pool.h"
#include "kvcache/policy.h"
#include "kvcache/sequence_kv.h"

namespace livekv {

// A positional page after the append.
struct PlannedPage {
  int64_t first_position = 0;
  int32_t count = 0;  // committed rows
};

// The positional pages of (layer, kv_head) after appending n tokens to `kv` and committing, before maintenance.
// REQUIRES: layer and kv_head inside the geometry; n >= 0.
std::vector<PlannedPage> PagesAfterAppend(const SequenceKv& kv, int32_t layer, int32_t kv_head, int64_t n);

// Checks one clustering against the pages its head will have after appending n tokens, as ApplyClustering would
// check it then: (layer, kv_head) inside the geometry, 0 <= num_pages <= those pages, no empty cluster, centroids
// of head_dim values, positions exactly the tokens of the first num_pages pages (each once). INVALID_ARGUMENT
// naming the head, the cluster and the value otherwise.
absl::Status ValidateClusteringAfterAppend(const SequenceKv& kv, int64_t n, const HeadClustering& clustering);

// Checks a whole maintenance after appending n tokens: every clustering as above; each (layer, kv_head) at most
// once (ApplyClustering would apply a second one to pages the first already replaced); the heads of a layer
// clustered over the same number of pages; every head of a clustered layer present (heads of a layer keep
// identical positional pages); drop_pages >= 0. INVALID_ARGUMENT naming what is wrong.
absl::Status ValidateMaintenanceAfterAppend(const SequenceKv& kv, int64_t n, const Maintenance& maintenance);

// The pool bytes `kv` will hold after appending n tokens, committing and applying `maintenance`.
// REQUIRES: ValidateMaintenanceAfterAppend(kv, n, maintenance) is OK.
size_t PoolBytesAfterAppend(const SequenceKv& kv, int64_t n, const Maintenance& maintenance);

// Whether `pool` can hold the runs ApplyClustering(clusterings) will allocate: allocates them in the same order
// ApplyClustering does and frees them again, leaving the pool's free space exactly as it was. RESOURCE_EXHAUSTED
// naming the run that does not fit.
// Because the pool's placement is a deterministic function of its free pages (best fit, owned entries only), an
// OK answer means ApplyClustering's allocations succeed, PROVIDED no other allocation or free happens in `pool`
// between this call and them (the caller holds the pool's exclusive allocation lock) and the pool holds no
// evictable entries.
absl::Status TryClusterRuns(PagePool* pool, const PageLayout& layout, const std::vector<HeadClustering>& clusterings);

}  // namespace livekv

#endif  // LIVEKV_SERVICES_KVSTORE_APPEND_PLAN_H_
