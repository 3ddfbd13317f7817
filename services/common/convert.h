// File: services/common/convert.h
//
// The one module that converts between livekv's C++ domain types and their protobuf messages. Proto types stay at
// the service edge; everything inside uses the domain types. Conversions from protos validate and return
// INVALID_ARGUMENT naming the field.
#ifndef LIVEKV_SERVICES_COMMON_CONVERT_H_
#define LIVEKV_SERVICES_COMMON_CONVERT_H_

#include "absl/status/statusor.h"
#include "engine/model_config.h"
#include "engine/sampler.h"
#include "kvcache/policy_options.h"
#include "kvcache/sequence_kv.h"
#include "proto/livekv/v1/common.pb.h"
#include "proto/livekv/v1/kvstore.pb.h"

namespace livekv {

v1::DType ToProto(DType t);
absl::StatusOr<DType> FromProto(v1::DType t, absl::string_view field);

v1::KvGeometry ToProto(const KvGeometry& g);
// Validates (positive sizes, float dtype).
absl::StatusOr<KvGeometry> FromProto(const v1::KvGeometry& g);

v1::PolicyConfig ToProto(const PolicyOptions& p);
// Zero fields take PolicyOptions' defaults. Does not validate against a model (Validate does that).
absl::StatusOr<PolicyOptions> FromProto(const v1::PolicyConfig& p, DType kv_dtype, int32_t sink_tokens,
                                        int32_t page_tokens);

absl::StatusOr<SamplingParams> FromProto(const v1::SamplingParams& s);

// ---- KV store (kvstore.proto) ----

v1::ClusterUpdate ToProto(const HeadClustering& c);
// Checks the shape only (num_pages >= 0); the store checks the clustering against the session.
absl::StatusOr<HeadClustering> FromProto(const v1::ClusterUpdate& c);

// Blocks of (layer, kv_head) as BlockSets whose Recall response lists them in exactly the order given: a BlockSet
// returns its sink, then its clusters, then its pages, so a new set starts wherever `blocks` would break that order.
std::vector<v1::BlockSet> ToBlockSets(int32_t layer, int32_t kv_head, const std::vector<BlockRef>& blocks);
// A BlockSet's blocks in response order: the sink, the clusters, the pages.
std::vector<BlockRef> FromProto(const v1::BlockSet& set);

}  // namespace livekv

#endif  // LIVEKV_SERVICES_COMMON_CONVERT_H_
