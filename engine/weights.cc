#include "engine/weights.h"

#include <cmath>
#include <functional>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "common/thread_pool.h"

namespace livekv {
namespace {

std::string LayerName(int64_t l, absl::string_view rest) { return absl::StrCat("model.layers.", l, ".", rest); }

// Where a checkpoint tensor lands: a destination tensor and the row offset inside it.
struct Placement {
  Tensor* dst;
  int64_t row0;
};

// Allocates the fused layout and says, for every HF tensor, where it goes.
absl::StatusOr<std::vector<Placement>> AllocateLayout(const ModelConfig& c, Backend* backend, ModelWeights* w) {
  const DType t = backend->weight_dtype();
  const int64_t h = c.hidden_size, qkv = c.q_dim() + 2 * c.kv_dim(), inter = c.intermediate_size;
  auto alloc = [&](Tensor* dst, Shape shape) -> absl::Status {
    LIVEKV_ASSIGN_OR_RETURN(*dst, backend->Allocate(t, shape));
    return absl::OkStatus();
  };
  LIVEKV_RETURN_IF_ERROR(alloc(&w->embed, {c.vocab_size, h}));
  w->layers.resize(c.num_layers);
  for (LayerWeights& l : w->layers) {
    LIVEKV_RETURN_IF_ERROR(alloc(&l.attn_norm, {h}));
    LIVEKV_RETURN_IF_ERROR(alloc(&l.wqkv, {qkv, h}));
    if (c.attention_bias) LIVEKV_RETURN_IF_ERROR(alloc(&l.bqkv, {qkv}));
    LIVEKV_RETURN_IF_ERROR(alloc(&l.wo, {h, c.q_dim()}));
    if (c.output_bias) LIVEKV_RETURN_IF_ERROR(alloc(&l.bo, {h}));
    LIVEKV_RETURN_IF_ERROR(alloc(&l.mlp_norm, {h}));
    LIVEKV_RETURN_IF_ERROR(alloc(&l.w_gate_up, {2 * inter, h}));
    LIVEKV_RETURN_IF_ERROR(alloc(&l.w_down, {h, inter}));
  }
  LIVEKV_RETURN_IF_ERROR(alloc(&w->final_norm, {h}));
  if (!c.tie_word_embeddings) LIVEKV_RETURN_IF_ERROR(alloc(&w->lm_head, {c.vocab_size, h}));

  // Same order as HfTensorSpecs.
  std::vector<Placement> p;
  p.push_back({&w->embed, 0});
  for (LayerWeights& l : w->layers) {
    p.push_back({&l.attn_norm, 0});
    p.push_back({&l.wqkv, 0});
    p.push_back({&l.wqkv, c.q_dim()});
    p.push_back({&l.wqkv, c.q_dim() + c.kv_dim()});
    if (c.attention_bias) {
      p.push_back({&l.bqkv, 0});
      p.push_back({&l.bqkv, c.q_dim()});
      p.push_back({&l.bqkv, c.q_dim() + c.kv_dim()});
    }
    p.push_back({&l.wo, 0});
    if (c.output_bias) p.push_back({&l.bo, 0});
    p.push_back({&l.mlp_norm, 0});
    p.push_back({&l.w_gate_up, 0});
    p.push_back({&l.w_gate_up, inter});
    p.push_back({&l.w_down, 0});
  }
  p.push_back({&w->final_norm, 0});
  if (!c.tie_word_embeddings) p.push_back({&w->lm_head, 0});
  return p;
}

TensorView Destination(const Placement& p, int64_t rows) {
  const TensorView& v = p.dst->view();
  if (v.rank() == 1) {
    TensorView out = v;
    out.data = static_cast<char*>(v.data) + p.row0 * DTypeSize(v.dtype);
    out.shape = Shape{rows};
    return out;
  }
  return v.Rows(p.row0, rows);
}

// SplitMix64: a counter-based generator, so every element can be produced independently and in parallel.
inline uint64_t SplitMix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

}  // namespace

size_t ModelWeights::nbytes() const {
  size_t n = embed.nbytes() + final_norm.nbytes() + lm_head.nbytes();
  for (const LayerWeights& l : layers) {
    n += l.attn_norm.nbytes() + l.wqkv.nbytes() + l.bqkv.nbytes() + l.wo.nbytes() + l.bo.nbytes() +
         l.mlp_norm.nbytes() +
         l.w_gate_up.nbytes() + l.w_down.nbytes();
  }
  return n;
}

std::vector<HfTensorSpec> HfTensorSpecs(const ModelConfig& c) {
  const int64_t h = c.hidden_size, inter = c.intermediate_size;
  std::vector<HfTensorSpec> s;
  s.push_back({"model.embed_tokens.weight", {c.vocab_size, h}});
  for (int64_t l = 0; l < c.num_layers; ++l) {
    s.push_back({LayerName(l, "input_layernorm.weight"), {h}, true});
    s.push_back({LayerName(l, "self_attn.q_proj.weight"), {c.q_dim(), h}});
    s.push_back({LayerName(l, "self_attn.k_proj.weight"), {c.kv_dim(), h}});
    s.push_back({LayerName(l, "self_attn.v_proj.weight"), {c.kv_dim(), h}});
    if (c.attention_bias) {
      s.push_back({LayerName(l, "self_attn.q_proj.bias"), {c.q_dim()}});
      s.push_back({LayerName(l, "self_attn.k_proj.bias"), {c.kv_dim()}});
      s.push_back({LayerName(l, "self_attn.v_proj.bias"), {c.kv_dim()}});
    }
    s.push_back({LayerName(l, "self_attn.o_proj.weight"), {h, c.q_dim()}});
    if (c.output_bias) s.push_back({LayerName(l, "self_attn.o_proj.bias"), {h}});
    s.push_back({LayerName(l, "post_attention_layernorm.weight"), {h}, true});
    s.push_back({LayerName(l, "mlp.gate_proj.weight"), {inter, h}});
    s.push_back({LayerName(l, "mlp.up_proj.weight"), {inter, h}});
    s.push_back({LayerName(l, "mlp.down_proj.weight"), {h, inter}});
  }
  s.push_back({"model.norm.weight", {h}, true});
  if (!c.tie_word_embeddings) s.push_back({"lm_head.weight", {c.vocab_size, h}});
  return s;
}

absl::StatusOr<ModelWeights> LoadWeights(const ModelConfig& config, const SafetensorsSet& files, Backend* backend) {
  LIVEKV_RETURN_IF_ERROR(config.Validate());
  ModelWeights w;
  LIVEKV_ASSIGN_OR_RETURN(std::vector<Placement> places, AllocateLayout(config, backend, &w));
  const std::vector<HfTensorSpec> specs = HfTensorSpecs(config);
  // A tensor the config does not account for means the config and the weights disagree (a bias the config does
  // not declare, say); ignoring it would silently compute something else.
  absl::flat_hash_set<std::string> expected;
  for (const HfTensorSpec& spec : specs) expected.insert(spec.name);
  for (const std::string& name : files.names()) {
    const bool harmless = absl::EndsWith(name, "rotary_emb.inv_freq") ||
                          (config.tie_word_embeddings && name == "lm_head.weight");
    if (!expected.contains(name) && !harmless) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor ", name, " is in the checkpoint but not used by its config (",
                       ArchitectureName(config.architecture), "); the config and the weights disagree"));
    }
  }
  for (size_t i = 0; i < specs.size(); ++i) {
    const HfTensorSpec& spec = specs[i];
    LIVEKV_ASSIGN_OR_RETURN(const TensorInfo* info, files.Get(spec.name));
    if (info->shape != spec.shape) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor ", spec.name, " has shape ", ShapeToString(Shape(info->shape.begin(), info->shape.end())),
          ", the config needs ", ShapeToString(Shape(spec.shape.begin(), spec.shape.end()))));
    }
    if (info->dtype != DType::kF32 && info->dtype != DType::kBF16 && info->dtype != DType::kF16) {
      return absl::InvalidArgumentError(absl::StrCat("tensor ", spec.name, " has dtype ", DTypeName(info->dtype),
                                                     "; weights must be F32, BF16 or F16"));
    }
    LIVEKV_RETURN_IF_ERROR(
        backend->CopyFromHost(info->data, info->dtype, Destination(places[i], spec.shape[0])));
  }
  return w;
}

absl::StatusOr<std::vector<TensorView>> AllocateWeightLayout(const ModelConfig& config, Backend* backend,
                                                             ModelWeights* weights) {
  LIVEKV_RETURN_IF_ERROR(config.Validate());
  *weights = ModelWeights();
  LIVEKV_ASSIGN_OR_RETURN(std::vector<Placement> places, AllocateLayout(config, backend, weights));
  const std::vector<HfTensorSpec> specs = HfTensorSpecs(config);
  std::vector<TensorView> views;
  views.reserve(specs.size());
  for (size_t i = 0; i < specs.size(); ++i) views.push_back(Destination(places[i], specs[i].shape[0]));
  return views;
}

uint64_t DummyTensorStream(uint64_t seed, size_t spec_index) { return SplitMix64(seed ^ SplitMix64(spec_index + 1)); }

std::vector<float> DummyHfTensor(const ModelConfig& config, uint64_t seed, size_t spec_index, float stddev) {
  const std::vector<HfTensorSpec> specs = HfTensorSpecs(config);
  const HfTensorSpec& spec = specs[spec_index];
  int64_t n = 1;
  for (int64_t d : spec.shape) n *= d;
  std::vector<float> out(n);
  if (spec.is_norm) {
    std::fill(out.begin(), out.end(), 1.0f);
    return out;
  }
  // Uniform on [-a, a] has standard deviation a / sqrt(3).
  const float a = stddev * std::sqrt(3.0f);
  const uint64_t stream = DummyTensorStream(seed, spec_index);
  ThreadPool::Default()->ParallelFor(
      n,
      [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) {
          const double u = static_cast<double>(SplitMix64(stream + static_cast<uint64_t>(i)) >> 11) * 0x1.0p-53;
          out[i] = static_cast<float>((2.0 * u - 1.0) * a);
        }
      },
      /*min_grain=*/1 << 16);
  return out;
}

absl::StatusOr<ModelWeights> DummyWeights(const ModelConfig& config, uint64_t seed, Backend* backend,
                                          float stddev) {
  LIVEKV_RETURN_IF_ERROR(config.Validate());
  ModelWeights w;
  LIVEKV_ASSIGN_OR_RETURN(std::vector<Placement> places, AllocateLayout(config, backend, &w));
  const std::vector<HfTensorSpec> specs = HfTensorSpecs(config);
  for (size_t i = 0; i < specs.size(); ++i) {
    const std::vector<float> values = DummyHfTensor(config, seed, i, stddev);
    LIVEKV_RETURN_IF_ERROR(backend->CopyFromHost(values.data(), DType::kF32, Destination(places[i], specs[i].shape[0])));
  }
  return w;
}

}  // namespace livekv
