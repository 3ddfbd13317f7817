#include "engine/tokenizer/tokenizer_loader.h"

#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/file.h"
#include "common/status_macros.h"
#include "engine/tokenizer/bpe_tokenizer.h"
#include "engine/tokenizer/byte_tokenizer.h"
#include "engine/tokenizer/json_util.h"

namespace livekv {
namespace {

// Tokenizer files are a few MB (Llama-3's tokenizer.json is 9 MB); anything near this is a mistake.
constexpr size_t kMaxTokenizerFileBytes = size_t{256} << 20;

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadLivekvTokenizer(const std::string& path) {
  LIVEKV_ASSIGN_OR_RETURN(const std::string text, ReadFileToString(path, kMaxTokenizerFileBytes));
  LIVEKV_ASSIGN_OR_RETURN(const nlohmann::json root, ParseJson(text, path));
  const JsonFields fields(path);
  LIVEKV_ASSIGN_OR_RETURN(const std::string type, fields.RequiredString(root, "", "type"));
  if (type == "byte") return std::unique_ptr<Tokenizer>(new ByteTokenizer());
  return fields.Error("type", absl::StrCat("unsupported tokenizer type \"", type, "\" (supported: \"byte\")"));
}

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizer(const std::string& model_dir) {
  const std::string hf_path = JoinPath(model_dir, "tokenizer.json");
  if (FileExists(hf_path)) {
    LIVEKV_ASSIGN_OR_RETURN(const std::string tokenizer_json, ReadFileToString(hf_path, kMaxTokenizerFileBytes));
    const std::string config_path = JoinPath(model_dir, "tokenizer_config.json");
    std::string config_json;
    if (FileExists(config_path)) {
      LIVEKV_ASSIGN_OR_RETURN(config_json, ReadFileToString(config_path, kMaxTokenizerFileBytes));
    }
    BpeTokenizer::Source source;
    source.tokenizer_json = tokenizer_json;
    source.tokenizer_json_name = hf_path;
    source.tokenizer_config_json = config_json;
    source.tokenizer_config_json_name = config_path;
    LIVEKV_ASSIGN_OR_RETURN(std::unique_ptr<BpeTokenizer> bpe, BpeTokenizer::Create(source));
    return std::unique_ptr<Tokenizer>(std::move(bpe));
  }
  const std::string livekv_path = JoinPath(model_dir, "livekv_tokenizer.json");
  if (FileExists(livekv_path)) return LoadLivekvTokenizer(livekv_path);
  return absl::NotFoundError(
      absl::StrCat("no tokenizer in ", model_dir, ": neither tokenizer.json nor livekv_tokenizer.json exists"));
}

}  // namespace livekv
