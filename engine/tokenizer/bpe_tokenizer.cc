#include "engine/tokenizer/bpe_tokenizer.h"

#include <unicode/bytestream.h>
#include <unicode/normalizer2.h>
#include <unicode/stringpiece.h>
#include <unicode/utypes.h>

#include <algorithm>
#include <bitset>
#include <exception>
#include <nlohmann/json.hpp>
#include <queue>
#include <utility>

#include "absl/container/inlined_vector.h"
#include "absl/functional/function_ref.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"
#include "engine/tokenizer/json_util.h"
#include "engine/tokenizer/utf8.h"

namespace livekv {

using Json = nlohmann::json;

const std::array<uint32_t, 256>& ByteLevelCodePoints() {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    uint32_t next = 256;
    for (uint32_t b = 0; b < 256; ++b) {
      const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      t[b] = printable ? b : next++;
    }
    return t;
  }();
  return table;
}

namespace {

// The byte a byte-level code point stands for, or -1.
int ByteOfCodePoint(uint32_t cp) {
  static const std::array<int16_t, 0x144> table = [] {
    std::array<int16_t, 0x144> t;
    t.fill(-1);
    for (int b = 0; b < 256; ++b) t[ByteLevelCodePoints()[b]] = static_cast<int16_t>(b);
    return t;
  }();
  return cp < table.size() ? table[cp] : -1;
}

// Decodes a byte-level spelling ("Ġthe") into its bytes (" the"). False when a character is not one of the 256
// byte symbols. REQUIRES: spelling is valid UTF-8 (nlohmann::json validates strings while parsing).
bool ByteLevelDecode(absl::string_view spelling, std::string* out) {
  out->clear();
  size_t pos = 0;
  while (pos < spelling.size()) {
    if (ScanUtf8(spelling, pos).kind != Utf8Sequence::Kind::kValid) return false;
    const int b = ByteOfCodePoint(DecodeUtf8(spelling, &pos));
    if (b < 0) return false;
    out->push_back(static_cast<char>(b));
  }
  return true;
}

// What Hugging Face's ByteLevel decoder turns one token into: its bytes when every character is a byte symbol,
// otherwise its text unchanged (e.g. an added token such as "<｜begin▁of▁sentence｜>").
std::string DecodedTokenBytes(absl::string_view spelling) {
  std::string out;
  if (ByteLevelDecode(spelling, &out)) return out;
  return std::string(spelling);
}

std::string ByteLevelSpelling(uint8_t byte) {
  std::string s;
  AppendUtf8(ByteLevelCodePoints()[byte], &s);
  return s;
}

bool IsAscii(absl::string_view s) {
  for (const char c : s) {
    if (static_cast<uint8_t>(c) >= 0x80) return false;
  }
  return true;
}

// NFC via ICU. ASCII text is already NFC.
absl::Status NormalizeNfc(absl::string_view text, std::string* out) {
  UErrorCode err = U_ZERO_ERROR;
  const icu::Normalizer2* nfc = icu::Normalizer2::getNFCInstance(err);
  if (U_FAILURE(err)) return absl::InternalError(absl::StrCat("ICU NFC normalizer unavailable: ", u_errorName(err)));
  out->clear();
  icu::StringByteSink<std::string> sink(out, static_cast<int32_t>(text.size()));
  nfc->normalizeUTF8(0, icu::StringPiece(text.data(), static_cast<int32_t>(text.size())), sink, nullptr, err);
  if (U_FAILURE(err)) return absl::InternalError(absl::StrCat("ICU NFC normalization failed: ", u_errorName(err)));
  return absl::OkStatus();
}

// A printable rendering of a token for error messages.
std::string Quote(absl::string_view s) { return absl::StrCat("\"", absl::Utf8SafeCHexEscape(s), "\""); }

struct AddedToken {
  int32_t id = 0;
  std::string content;
  bool special = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = false;
};

}  // namespace

// Finds added tokens in text: leftmost match first, the longest one at a position (like the Aho-Corasick
// LeftmostLongest automaton of `tokenizers`), with lstrip / rstrip swallowing adjacent whitespace.
// Thread-safety: immutable after construction.
class AddedTokenMatcher {
 public:
  struct Entry {
    std::string text;
    int32_t id;
    bool special;
    bool lstrip;
    bool rstrip;
  };

  explicit AddedTokenMatcher(std::vector<Entry> entries) : entries_(std::move(entries)) {
    nodes_.emplace_back();
    for (size_t e = 0; e < entries_.size(); ++e) {
      const std::string& t = entries_[e].text;
      if (t.empty()) continue;
      first_bytes_.set(static_cast<uint8_t>(t[0]));
      int32_t node = 0;
      for (const char c : t) {
        int32_t child = Child(node, static_cast<uint8_t>(c));
        if (child < 0) {
          child = static_cast<int32_t>(nodes_.size());
          nodes_[node].children.emplace_back(static_cast<uint8_t>(c), child);
          nodes_.emplace_back();
        }
        node = child;
      }
      nodes_[node].entry = static_cast<int32_t>(e);
    }
  }

  bool empty() const { return entries_.empty(); }

  // Calls on_text for each non-empty run of text between matches and on_token for each match, in order.
  // REQUIRES: text is valid UTF-8.
  void ForEach(absl::string_view text, bool parse_special, absl::FunctionRef<void(absl::string_view)> on_text,
               absl::FunctionRef<void(int32_t)> on_token) const {
    const size_t n = text.size();
    size_t emitted = 0;  // text before this offset has been handed out
    size_t i = 0;
    while (i < n) {
      if (!first_bytes_.test(static_cast<uint8_t>(text[i]))) {
        ++i;
        continue;
      }
      int32_t best = -1;
      size_t best_end = 0;
      int32_t node = 0;
      for (size_t j = i; j < n; ++j) {
        node = Child(node, static_cast<uint8_t>(text[j]));
        if (node < 0) break;
        const int32_t e = nodes_[node].entry;
        if (e >= 0 && (parse_special || !entries_[e].special)) {
          best = e;
          best_end = j + 1;
        }
      }
      if (best < 0) {
        ++i;
        continue;
      }
      const Entry& entry = entries_[best];
      size_t start = i;
      size_t end = best_end;
      if (entry.lstrip) {
        while (start > emitted) {
          size_t k = start - 1;
          while (k > emitted && (static_cast<uint8_t>(text[k]) & 0xC0) == 0x80) --k;
          size_t p = k;
          if (!IsWhiteSpace(DecodeUtf8(text, &p))) break;
          start = k;
        }
      }
      if (entry.rstrip) {
        while (end < n) {
          size_t p = end;
          if (!IsWhiteSpace(DecodeUtf8(text, &p))) break;
          end = p;
        }
      }
      if (start > emitted) on_text(text.substr(emitted, start - emitted));
      on_token(entry.id);
      emitted = end;
      i = end;
    }
    if (emitted < n) on_text(text.substr(emitted));
  }

 private:
  struct Node {
    std::vector<std::pair<uint8_t, int32_t>> children;
    int32_t entry = -1;
  };

  int32_t Child(int32_t node, uint8_t byte) const {
    for (const auto& [b, child] : nodes_[node].children) {
      if (b == byte) return child;
    }
    return -1;
  }

  std::vector<Entry> entries_;
  std::vector<Node> nodes_;
  std::bitset<256> first_bytes_;
};

// ---------------------------------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------------------------------

class BpeTokenizer::Builder {
 public:
  Builder(const Source& source, BpeTokenizer* t)
      : source_(source), f_(source.tokenizer_json_name), cf_(source.tokenizer_config_json_name), t_(t) {}

  absl::Status Build() {
    LIVEKV_ASSIGN_OR_RETURN(const Json root, ParseJson(source_.tokenizer_json, f_.file()));
    if (!root.is_object()) return f_.Error("(root)", absl::StrCat("expected an object, got ", root.type_name()));
    LIVEKV_ASSIGN_OR_RETURN(const Json* model, f_.Required(root, "", "model"));
    LIVEKV_RETURN_IF_ERROR(ParseModel(*model));
    if (const Json* added = JsonFields::Find(root, "added_tokens")) LIVEKV_RETURN_IF_ERROR(ParseAddedTokens(*added));
    LIVEKV_RETURN_IF_ERROR(ParseNormalizer(JsonFields::Find(root, "normalizer"), "normalizer"));
    const Json* pre = JsonFields::Find(root, "pre_tokenizer");
    if (pre == nullptr) {
      return f_.Error("pre_tokenizer", "missing; byte-level BPE needs a ByteLevel pre-tokenizer");
    }
    LIVEKV_RETURN_IF_ERROR(ParsePreTokenizer(*pre, "pre_tokenizer"));
    LIVEKV_RETURN_IF_ERROR(CheckPreTokenizer());
    LIVEKV_RETURN_IF_ERROR(ParseDecoder(JsonFields::Find(root, "decoder")));
    Json config;
    if (!source_.tokenizer_config_json.empty()) {
      LIVEKV_ASSIGN_OR_RETURN(config, ParseJson(source_.tokenizer_config_json, cf_.file()));
      if (!config.is_object()) {
        return cf_.Error("(root)", absl::StrCat("expected an object, got ", config.type_name()));
      }
      if (const Json* decoder = JsonFields::Find(config, "added_tokens_decoder")) {
        LIVEKV_RETURN_IF_ERROR(ParseConfigAddedTokens(*decoder));
      }
    }
    LIVEKV_RETURN_IF_ERROR(BuildTables());
    // The template's token ids are checked against the final vocabulary.
    if (const Json* post = JsonFields::Find(root, "post_processor")) {
      LIVEKV_RETURN_IF_ERROR(ParsePostProcessor(*post, "post_processor"));
    }
    if (config.is_object()) {
      LIVEKV_ASSIGN_OR_RETURN(t_->bos_id_, ConfigToken(config, "bos_token"));
      LIVEKV_ASSIGN_OR_RETURN(t_->eos_id_, ConfigToken(config, "eos_token"));
    }
    if (!t_->bos_id_.has_value() && t_->template_prefix_.size() == 1) t_->bos_id_ = t_->template_prefix_[0];
    return absl::OkStatus();
  }

 private:
  absl::Status ParseModel(const Json& model) {
    const std::string path = "model";
    if (!model.is_object()) return f_.Error(path, absl::StrCat("expected an object, got ", model.type_name()));
    LIVEKV_ASSIGN_OR_RETURN(const std::string type, f_.OptionalString(model, path, "type", "BPE"));
    if (type != "BPE") return f_.Error("model.type", absl::StrCat("unsupported model type ", Quote(type)));
    if (const Json* dropout = JsonFields::Find(model, "dropout")) {
      if (!dropout->is_number() || dropout->get<double>() != 0.0) {
        return f_.Error("model.dropout", "BPE dropout is not supported (it makes encoding random)");
      }
    }
    for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
      LIVEKV_ASSIGN_OR_RETURN(const std::string value, f_.OptionalString(model, path, key, ""));
      if (!value.empty()) {
        return f_.Error(JsonPath(path, key), absl::StrCat("unsupported value ", Quote(value), " (must be empty)"));
      }
    }
    LIVEKV_ASSIGN_OR_RETURN(const bool byte_fallback, f_.OptionalBool(model, path, "byte_fallback", false));
    if (byte_fallback) return f_.Error("model.byte_fallback", "byte_fallback is not supported by byte-level BPE");
    LIVEKV_ASSIGN_OR_RETURN(t_->ignore_merges_, f_.OptionalBool(model, path, "ignore_merges", false));

    LIVEKV_ASSIGN_OR_RETURN(const Json* vocab, f_.Required(model, path, "vocab"));
    if (!vocab->is_object()) {
      return f_.Error("model.vocab", absl::StrCat("expected an object of token -> id, got ", vocab->type_name()));
    }
    t_->vocab_.reserve(vocab->size());
    for (auto it = vocab->begin(); it != vocab->end(); ++it) {
      LIVEKV_ASSIGN_OR_RETURN(const int32_t id,
                              f_.TokenIdValue(it.value(), absl::StrCat("model.vocab[", Quote(it.key()), "]")));
      t_->vocab_.emplace(it.key(), id);
      if (static_cast<size_t>(id) >= model_tokens_.size()) model_tokens_.resize(id + 1, nullptr);
      if (model_tokens_[id] != nullptr) {
        return f_.Error("model.vocab", absl::StrCat("id ", id, " is given to both ", Quote(*model_tokens_[id]), " and ",
                                                    Quote(it.key())));
      }
      model_tokens_[id] = &it.key();
    }
    // Every byte that can occur in UTF-8 text needs a symbol; the others (0xC0, 0xC1, 0xF5..0xFF) may be absent.
    for (int b = 0; b < 256; ++b) {
      const auto it = t_->vocab_.find(ByteLevelSpelling(static_cast<uint8_t>(b)));
      t_->byte_ids_[b] = it == t_->vocab_.end() ? -1 : it->second;
      const bool occurs_in_utf8 = b < 0xC0 || (b >= 0xC2 && b <= 0xF4);
      if (t_->byte_ids_[b] < 0 && occurs_in_utf8) {
        return f_.Error("model.vocab", absl::StrFormat("has no token for byte 0x%02X (%s); byte-level BPE needs one "
                                                       "for every byte",
                                                       b, Quote(ByteLevelSpelling(static_cast<uint8_t>(b)))));
      }
    }

    LIVEKV_ASSIGN_OR_RETURN(const Json* merges, f_.Required(model, path, "merges"));
    if (!merges->is_array()) {
      return f_.Error("model.merges", absl::StrCat("expected an array, got ", merges->type_name()));
    }
    t_->merges_.reserve(merges->size());
    for (size_t i = 0; i < merges->size(); ++i) {
      const Json& m = (*merges)[i];
      const std::string mpath = JsonPath("model.merges", i);
      std::string left, right;
      if (m.is_string()) {  // "a b"
        const std::string& s = m.get_ref<const std::string&>();
        const size_t space = s.find(' ');
        if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos) {
          return f_.Error(mpath, absl::StrCat("expected \"left right\" (two tokens and one space), got ", Quote(s)));
        }
        left = s.substr(0, space);
        right = s.substr(space + 1);
      } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {  // ["a", "b"]
        left = m[0].get<std::string>();
        right = m[1].get<std::string>();
      } else {
        return f_.Error(mpath, absl::StrCat("expected \"left right\" or [left, right], got ", m.type_name()));
      }
      const auto l = t_->vocab_.find(left);
      const auto r = t_->vocab_.find(right);
      const auto merged = t_->vocab_.find(left + right);
      if (l == t_->vocab_.end()) return f_.Error(mpath, absl::StrCat("token ", Quote(left), " is not in model.vocab"));
      if (r == t_->vocab_.end()) return f_.Error(mpath, absl::StrCat("token ", Quote(right), " is not in model.vocab"));
      if (merged == t_->vocab_.end()) {
        return f_.Error(mpath, absl::StrCat("merged token ", Quote(left + right), " is not in model.vocab"));
      }
      // A repeated pair takes the later rank, as in `tokenizers` and GPT-2's encoder.py.
      t_->merges_[PairKey(l->second, r->second)] = Merge{static_cast<int32_t>(i), merged->second};
    }
    return absl::OkStatus();
  }

  // Reads one added token object (tokenizer.json "added_tokens" or tokenizer_config.json
  // "added_tokens_decoder"); `id` is given for the latter, whose ids are the object keys.
  absl::StatusOr<AddedToken> ParseAddedToken(const JsonFields& f, const Json& t, const std::string& path,
                                             std::optional<int32_t> id) {
    AddedToken a;
    if (!t.is_object()) return f.Error(path, absl::StrCat("expected an object, got ", t.type_name()));
    if (id.has_value()) {
      a.id = *id;
    } else {
      LIVEKV_ASSIGN_OR_RETURN(const Json* id_field, f.Required(t, path, "id"));
      LIVEKV_ASSIGN_OR_RETURN(a.id, f.TokenIdValue(*id_field, JsonPath(path, "id")));
    }
    LIVEKV_ASSIGN_OR_RETURN(a.content, f.RequiredString(t, path, "content"));
    if (a.content.empty()) return f.Error(JsonPath(path, "content"), "empty");
    LIVEKV_ASSIGN_OR_RETURN(a.special, f.OptionalBool(t, path, "special", false));
    LIVEKV_ASSIGN_OR_RETURN(a.lstrip, f.OptionalBool(t, path, "lstrip", false));
    LIVEKV_ASSIGN_OR_RETURN(a.rstrip, f.OptionalBool(t, path, "rstrip", false));
    // `tokenizers` defaults "normalized" to the opposite of "special".
    LIVEKV_ASSIGN_OR_RETURN(a.normalized, f.OptionalBool(t, path, "normalized", !a.special));
    LIVEKV_ASSIGN_OR_RETURN(const bool single_word, f.OptionalBool(t, path, "single_word", false));
    if (single_word) return f.Error(JsonPath(path, "single_word"), "single_word added tokens are not supported");
    return a;
  }

  // Adds `a` unless the same token is already there. INVALID_ARGUMENT when it contradicts a token.
  absl::Status AddAddedToken(const JsonFields& f, const std::string& path, const AddedToken& a) {
    for (const AddedToken& b : added_) {
      if (b.id == a.id && b.content == a.content) return absl::OkStatus();  // listed twice
      if (b.id == a.id) {
        return f.Error(path,
                       absl::StrCat("id ", a.id, " is given to both ", Quote(b.content), " and ", Quote(a.content)));
      }
      if (b.content == a.content) {
        return f.Error(path, absl::StrCat(Quote(a.content), " has two ids, ", b.id, " and ", a.id));
      }
    }
    const auto in_vocab = t_->vocab_.find(a.content);
    if (in_vocab != t_->vocab_.end() && in_vocab->second != a.id) {
      return f.Error(path,
                     absl::StrCat(Quote(a.content), " has id ", a.id, " but id ", in_vocab->second, " in model.vocab"));
    }
    if (static_cast<size_t>(a.id) < model_tokens_.size() && model_tokens_[a.id] != nullptr &&
        *model_tokens_[a.id] != a.content) {
      return f.Error(path, absl::StrCat("id ", a.id, " of ", Quote(a.content), " belongs to ",
                                        Quote(*model_tokens_[a.id]), " in model.vocab"));
    }
    added_.push_back(a);
    return absl::OkStatus();
  }

  absl::Status ParseAddedTokens(const Json& added) {
    if (!added.is_array()) {
      return f_.Error("added_tokens", absl::StrCat("expected an array, got ", added.type_name()));
    }
    for (size_t i = 0; i < added.size(); ++i) {
      const std::string path = JsonPath("added_tokens", i);
      LIVEKV_ASSIGN_OR_RETURN(const AddedToken a, ParseAddedToken(f_, added[i], path, std::nullopt));
      LIVEKV_RETURN_IF_ERROR(AddAddedToken(f_, path, a));
    }
    return absl::OkStatus();
  }

  absl::Status ParseConfigAddedTokens(const Json& decoder) {
    if (!decoder.is_object()) {
      return cf_.Error("added_tokens_decoder", absl::StrCat("expected an object, got ", decoder.type_name()));
    }
    for (auto it = decoder.begin(); it != decoder.end(); ++it) {
      const std::string path = absl::StrCat("added_tokens_decoder[", Quote(it.key()), "]");
      int32_t id;
      if (!absl::SimpleAtoi(it.key(), &id) || id < 0) return cf_.Error(path, "key is not a token id");
      LIVEKV_ASSIGN_OR_RETURN(const AddedToken a, ParseAddedToken(cf_, it.value(), path, id));
      LIVEKV_RETURN_IF_ERROR(AddAddedToken(cf_, path, a));
    }
    return absl::OkStatus();
  }

  absl::Status ParseNormalizer(const Json* n, const std::string& path) {
    if (n == nullptr) return absl::OkStatus();
    LIVEKV_ASSIGN_OR_RETURN(const std::string type, f_.RequiredString(*n, path, "type"));
    if (type == "NFC") {
      t_->nfc_ = true;
      UErrorCode err = U_ZERO_ERROR;
      icu::Normalizer2::getNFCInstance(err);
      if (U_FAILURE(err)) return absl::InternalError(absl::StrCat("ICU NFC data unavailable: ", u_errorName(err)));
      return absl::OkStatus();
    }
    if (type == "Sequence") {
      const std::string list_path = JsonPath(path, "normalizers");
      LIVEKV_ASSIGN_OR_RETURN(const Json* list, f_.Required(*n, path, "normalizers"));
      if (!list->is_array()) return f_.Error(list_path, absl::StrCat("expected an array, got ", list->type_name()));
      for (size_t i = 0; i < list->size(); ++i) {
        LIVEKV_RETURN_IF_ERROR(ParseNormalizer(&(*list)[i], JsonPath(list_path, i)));
      }
      return absl::OkStatus();
    }
    return f_.Error(JsonPath(path, "type"),
                    absl::StrCat("unsupported normalizer type ", Quote(type), " (supported: NFC, Sequence)"));
  }

  absl::StatusOr<std::unique_ptr<RegexSplitter>> Splitter(const std::string& path, absl::string_view pattern,
                                                          bool literal) {
    absl::StatusOr<std::unique_ptr<RegexSplitter>> s = RegexSplitter::Create(pattern, literal);
    if (!s.ok()) return f_.Error(path, s.status().message());
    return s;
  }

  absl::Status ParsePreTokenizer(const Json& p, const std::string& path) {
    LIVEKV_ASSIGN_OR_RETURN(const std::string type, f_.RequiredString(p, path, "type"));
    if (type == "Sequence") {
      const std::string list_path = JsonPath(path, "pretokenizers");
      LIVEKV_ASSIGN_OR_RETURN(const Json* list, f_.Required(p, path, "pretokenizers"));
      if (!list->is_array()) return f_.Error(list_path, absl::StrCat("expected an array, got ", list->type_name()));
      for (size_t i = 0; i < list->size(); ++i) {
        LIVEKV_RETURN_IF_ERROR(ParsePreTokenizer((*list)[i], JsonPath(list_path, i)));
      }
      return absl::OkStatus();
    }
    PreTokenizerStep step;
    if (type == "ByteLevel") {
      step.byte_level = true;
      // `tokenizers` defaults: add_prefix_space true, use_regex true.
      LIVEKV_ASSIGN_OR_RETURN(step.add_prefix_space, f_.OptionalBool(p, path, "add_prefix_space", true));
      LIVEKV_ASSIGN_OR_RETURN(const bool use_regex, f_.OptionalBool(p, path, "use_regex", true));
      if (use_regex) {
        LIVEKV_ASSIGN_OR_RETURN(step.split, Splitter(path, kGpt2SplitPattern, false));
      }
    } else if (type == "Split") {
      LIVEKV_ASSIGN_OR_RETURN(const std::string behavior, f_.RequiredString(p, path, "behavior"));
      if (behavior != "Isolated") {
        return f_.Error(JsonPath(path, "behavior"),
                        absl::StrCat("unsupported Split behavior ", Quote(behavior), " (supported: Isolated)"));
      }
      LIVEKV_ASSIGN_OR_RETURN(const bool invert, f_.OptionalBool(p, path, "invert", false));
      if (invert) return f_.Error(JsonPath(path, "invert"), "inverted Split patterns are not supported");
      const std::string pattern_path = JsonPath(path, "pattern");
      LIVEKV_ASSIGN_OR_RETURN(const Json* pattern, f_.Required(p, path, "pattern"));
      if (const Json* regex = JsonFields::Find(*pattern, "Regex"); regex != nullptr && regex->is_string()) {
        LIVEKV_ASSIGN_OR_RETURN(step.split,
                                Splitter(JsonPath(pattern_path, "Regex"), regex->get_ref<const std::string&>(), false));
      } else if (const Json* str = JsonFields::Find(*pattern, "String"); str != nullptr && str->is_string()) {
        LIVEKV_ASSIGN_OR_RETURN(step.split,
                                Splitter(JsonPath(pattern_path, "String"), str->get_ref<const std::string&>(), true));
      } else {
        return f_.Error(pattern_path, "expected {\"Regex\": string} or {\"String\": string}");
      }
    } else if (type == "Digits") {
      LIVEKV_ASSIGN_OR_RETURN(const bool individual, f_.OptionalBool(p, path, "individual_digits", false));
      LIVEKV_ASSIGN_OR_RETURN(step.split, Splitter(path, individual ? R"(\p{N})" : R"(\p{N}+)", false));
    } else {
      return f_.Error(JsonPath(path, "type"), absl::StrCat("unsupported pre_tokenizer type ", Quote(type),
                                                           " (supported: ByteLevel, Split, Digits, Sequence)"));
    }
    step_paths_.push_back(path);
    t_->pre_tokenizer_.push_back(std::move(step));
    return absl::OkStatus();
  }

  absl::Status CheckPreTokenizer() {
    const auto& steps = t_->pre_tokenizer_;
    for (size_t i = 0; i < steps.size(); ++i) {
      if (steps[i].byte_level && i + 1 != steps.size()) {
        return f_.Error(step_paths_[i], "ByteLevel must be the last pre-tokenizer");
      }
    }
    if (steps.empty() || !steps.back().byte_level) {
      return f_.Error("pre_tokenizer", "byte-level BPE needs a ByteLevel pre-tokenizer (alone or last in a Sequence)");
    }
    return absl::OkStatus();
  }

  absl::Status ParseDecoder(const Json* d) {
    if (d == nullptr) return f_.Error("decoder", "missing; byte-level BPE needs the ByteLevel decoder");
    LIVEKV_ASSIGN_OR_RETURN(const std::string type, f_.RequiredString(*d, "decoder", "type"));
    if (type != "ByteLevel") {
      return f_.Error("decoder.type",
                      absl::StrCat("unsupported decoder type ", Quote(type), " (supported: ByteLevel)"));
    }
    return absl::OkStatus();
  }

  absl::Status ParsePostProcessor(const Json& p, const std::string& path) {
    LIVEKV_ASSIGN_OR_RETURN(const std::string type, f_.RequiredString(p, path, "type"));
    if (type == "ByteLevel") return absl::OkStatus();  // only adjusts offsets
    if (type == "Sequence") {
      const std::string list_path = JsonPath(path, "processors");
      LIVEKV_ASSIGN_OR_RETURN(const Json* list, f_.Required(p, path, "processors"));
      if (!list->is_array()) return f_.Error(list_path, absl::StrCat("expected an array, got ", list->type_name()));
      for (size_t i = 0; i < list->size(); ++i) {
        LIVEKV_RETURN_IF_ERROR(ParsePostProcessor((*list)[i], JsonPath(list_path, i)));
      }
      return absl::OkStatus();
    }
    if (type != "TemplateProcessing") {
      return f_.Error(JsonPath(path, "type"), absl::StrCat("unsupported post_processor type ", Quote(type),
                                                           " (supported: TemplateProcessing, ByteLevel, Sequence)"));
    }
    if (template_seen_) return f_.Error(path, "more than one TemplateProcessing");
    template_seen_ = true;
    const std::string single_path = JsonPath(path, "single");
    LIVEKV_ASSIGN_OR_RETURN(const Json* single, f_.Required(p, path, "single"));
    if (!single->is_array()) return f_.Error(single_path, absl::StrCat("expected an array, got ", single->type_name()));
    const Json* specials = JsonFields::Find(p, "special_tokens");
    bool seen_sequence = false;
    for (size_t i = 0; i < single->size(); ++i) {
      const Json& item = (*single)[i];
      const std::string item_path = JsonPath(single_path, i);
      if (const Json* seq = JsonFields::Find(item, "Sequence")) {
        LIVEKV_ASSIGN_OR_RETURN(const std::string id, f_.RequiredString(*seq, JsonPath(item_path, "Sequence"), "id"));
        if (id != "A" || seen_sequence) {
          return f_.Error(item_path, "the single template must contain the sequence \"A\" exactly once");
        }
        seen_sequence = true;
        continue;
      }
      const Json* special = JsonFields::Find(item, "SpecialToken");
      if (special == nullptr) return f_.Error(item_path, "expected {\"Sequence\": ...} or {\"SpecialToken\": ...}");
      LIVEKV_ASSIGN_OR_RETURN(const std::string name,
                              f_.RequiredString(*special, JsonPath(item_path, "SpecialToken"), "id"));
      const Json* entry = specials == nullptr ? nullptr : JsonFields::Find(*specials, name);
      const std::string entry_path = JsonPath(JsonPath(path, "special_tokens"), name);
      if (entry == nullptr) return f_.Error(entry_path, "missing (named by the single template)");
      LIVEKV_ASSIGN_OR_RETURN(const Json* ids, f_.Required(*entry, entry_path, "ids"));
      if (!ids->is_array()) {
        return f_.Error(JsonPath(entry_path, "ids"), absl::StrCat("expected an array, got ", ids->type_name()));
      }
      for (size_t k = 0; k < ids->size(); ++k) {
        const std::string id_path = JsonPath(JsonPath(entry_path, "ids"), k);
        LIVEKV_ASSIGN_OR_RETURN(const int32_t id, f_.TokenIdValue((*ids)[k], id_path));
        if (id >= t_->vocab_size() || !t_->defined_[id]) return f_.Error(id_path, absl::StrCat("no token has id ", id));
        (seen_sequence ? t_->template_suffix_ : t_->template_prefix_).push_back(id);
      }
    }
    if (!seen_sequence) return f_.Error(single_path, "the single template must contain the sequence \"A\"");
    return absl::OkStatus();
  }

  // Decoding tables, the added-token matchers and lookup maps.
  absl::Status BuildTables() {
    size_t size = model_tokens_.size();
    for (const AddedToken& a : added_) size = std::max(size, static_cast<size_t>(a.id) + 1);
    t_->token_bytes_.assign(size, std::string());
    t_->defined_.assign(size, false);
    for (size_t id = 0; id < model_tokens_.size(); ++id) {
      if (model_tokens_[id] == nullptr) continue;
      t_->token_bytes_[id] = DecodedTokenBytes(*model_tokens_[id]);
      t_->defined_[id] = true;
    }
    std::vector<AddedTokenMatcher::Entry> raw, normalized;
    for (const AddedToken& a : added_) {
      t_->token_bytes_[a.id] = DecodedTokenBytes(a.content);
      t_->defined_[a.id] = true;
      t_->added_ids_[a.content] = a.id;
      AddedTokenMatcher::Entry e{a.content, a.id, a.special, a.lstrip, a.rstrip};
      if (a.normalized && t_->nfc_) {
        // Matched after normalization, so against the normalized spelling (as `tokenizers` does).
        LIVEKV_RETURN_IF_ERROR(NormalizeNfc(a.content, &e.text));
        normalized.push_back(std::move(e));
      } else {
        raw.push_back(std::move(e));
      }
    }
    t_->raw_added_ = std::make_unique<AddedTokenMatcher>(std::move(raw));
    t_->normalized_added_ = std::make_unique<AddedTokenMatcher>(std::move(normalized));
    if (t_->ignore_merges_) {
      std::string bytes;
      for (const auto& [spelling, id] : t_->vocab_) {
        if (ByteLevelDecode(spelling, &bytes)) t_->piece_ids_.emplace(bytes, id);
      }
    }
    return absl::OkStatus();
  }

  // bos_token / eos_token of tokenizer_config.json: a string, {"content": string}, or null.
  absl::StatusOr<std::optional<int32_t>> ConfigToken(const Json& config, const char* key) {
    const Json* v = JsonFields::Find(config, key);
    if (v == nullptr) return std::optional<int32_t>();
    std::string content;
    if (v->is_string()) {
      content = v->get<std::string>();
    } else if (v->is_object()) {
      LIVEKV_ASSIGN_OR_RETURN(content, cf_.RequiredString(*v, key, "content"));
    } else {
      return cf_.Error(key, absl::StrCat("expected a string or {\"content\": string}, got ", v->type_name()));
    }
    absl::StatusOr<int32_t> id = t_->TokenId(content);
    if (!id.ok()) {
      return cf_.Error(key,
                       absl::StrCat(Quote(content), " is neither an added token nor in model.vocab of ", f_.file()));
    }
    return std::optional<int32_t>(*id);
  }

  const Source& source_;
  const JsonFields f_;   // tokenizer.json
  const JsonFields cf_;  // tokenizer_config.json
  BpeTokenizer* const t_;
  std::vector<const std::string*> model_tokens_;  // id -> spelling (pointing into the parsed JSON)
  std::vector<AddedToken> added_;
  std::vector<std::string> step_paths_;  // JSON path of each pre-tokenizer step
  bool template_seen_ = false;
};

BpeTokenizer::BpeTokenizer() { byte_ids_.fill(-1); }
BpeTokenizer::~BpeTokenizer() = default;

absl::StatusOr<std::unique_ptr<BpeTokenizer>> BpeTokenizer::Create(const Source& source) {
  std::unique_ptr<BpeTokenizer> t(new BpeTokenizer());
  try {
    Builder builder(source, t.get());
    LIVEKV_RETURN_IF_ERROR(builder.Build());
  } catch (const std::exception& e) {
    // nlohmann::json is used without exceptions; this guards against a missed case (or std::bad_alloc).
    return absl::InvalidArgumentError(absl::StrCat(source.tokenizer_json_name, ": cannot load: ", e.what()));
  }
  return t;
}

// ---------------------------------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------------------------------

absl::StatusOr<std::vector<int32_t>> BpeTokenizer::Encode(absl::string_view text, bool parse_special) const {
  if (const std::optional<size_t> bad = FindInvalidUtf8(text)) {
    return absl::InvalidArgumentError(absl::StrFormat("text is not valid UTF-8 at byte offset %d (byte 0x%02x)", *bad,
                                                      static_cast<uint8_t>(text[*bad])));
  }
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 1);
  absl::Status status;
  std::string normalized;
  raw_added_->ForEach(
      text, parse_special,
      [&](absl::string_view segment) {
        if (!status.ok()) return;
        if (nfc_ && !IsAscii(segment)) {
          status = NormalizeNfc(segment, &normalized);
          if (!status.ok()) return;
          segment = normalized;
        }
        if (normalized_added_->empty()) {
          status = EncodeSegment(segment, &ids);
          return;
        }
        normalized_added_->ForEach(
            segment, parse_special,
            [&](absl::string_view piece) {
              if (status.ok()) status = EncodeSegment(piece, &ids);
            },
            [&](int32_t id) { ids.push_back(id); });
      },
      [&](int32_t id) { ids.push_back(id); });
  if (!status.ok()) return status;
  return ids;
}

absl::StatusOr<std::vector<int32_t>> BpeTokenizer::EncodeWithSpecials(absl::string_view text,
                                                                      bool parse_special) const {
  LIVEKV_ASSIGN_OR_RETURN(std::vector<int32_t> body, Encode(text, parse_special));
  if (template_prefix_.empty() && template_suffix_.empty()) return body;
  std::vector<int32_t> ids;
  ids.reserve(template_prefix_.size() + body.size() + template_suffix_.size());
  ids.insert(ids.end(), template_prefix_.begin(), template_prefix_.end());
  ids.insert(ids.end(), body.begin(), body.end());
  ids.insert(ids.end(), template_suffix_.begin(), template_suffix_.end());
  return ids;
}

bool BpeTokenizer::adds_bos() const {
  return bos_id_.has_value() && !template_prefix_.empty() && template_prefix_.front() == *bos_id_;
}

absl::Status BpeTokenizer::EncodeSegment(absl::string_view segment, std::vector<int32_t>* ids) const {
  return PreTokenize(0, segment, ids);
}

absl::Status BpeTokenizer::PreTokenize(size_t step_index, absl::string_view piece, std::vector<int32_t>* ids) const {
  const PreTokenizerStep& step = pre_tokenizer_[step_index];
  std::vector<absl::string_view> parts;
  if (!step.byte_level) {
    LIVEKV_RETURN_IF_ERROR(step.split->Split(piece, &parts));
    for (const absl::string_view part : parts) LIVEKV_RETURN_IF_ERROR(PreTokenize(step_index + 1, part, ids));
    return absl::OkStatus();
  }
  // ByteLevel, always the last step: optional prefix space, optional GPT-2 split, then BPE on the bytes.
  std::string prefixed;
  if (step.add_prefix_space && !piece.empty() && piece[0] != ' ') {
    prefixed = absl::StrCat(" ", piece);
    piece = prefixed;
  }
  if (step.split == nullptr) {
    EncodePiece(piece, ids);
    return absl::OkStatus();
  }
  LIVEKV_RETURN_IF_ERROR(step.split->Split(piece, &parts));
  for (const absl::string_view part : parts) EncodePiece(part, ids);
  return absl::OkStatus();
}

void BpeTokenizer::EncodePiece(absl::string_view piece, std::vector<int32_t>* ids) const {
  if (ignore_merges_) {
    const auto it = piece_ids_.find(piece);
    if (it != piece_ids_.end()) {
      ids->push_back(it->second);
      return;
    }
  }
  if (piece.size() == 1) {
    ids->push_back(byte_ids_[static_cast<uint8_t>(piece[0])]);
    return;
  }
  const bool cacheable = piece.size() <= kMaxCachedPieceBytes;
  if (cacheable) {
    absl::ReaderMutexLock lock(&cache_mu_);
    const auto it = cache_.find(piece);
    if (it != cache_.end()) {
      ids->insert(ids->end(), it->second.begin(), it->second.end());
      return;
    }
  }
  const size_t first = ids->size();
  MergePiece(piece, ids);
  if (cacheable) {
    absl::MutexLock lock(&cache_mu_);
    if (cache_.size() < kCacheCapacity) cache_.try_emplace(piece, ids->begin() + first, ids->end());
  }
}

void BpeTokenizer::MergePiece(absl::string_view piece, std::vector<int32_t>* ids) const {
  // Symbols form a doubly linked list; candidate merges wait in a heap ordered by (rank, position), as in
  // `tokenizers`. A candidate is stale when its symbols changed since it was pushed; that is detected by
  // looking the pair up again.
  struct Symbol {
    int32_t id;
    int32_t prev;
    int32_t next;
    bool alive;
  };
  struct Candidate {
    int32_t rank;
    int32_t pos;
    int32_t new_id;
    bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  const int32_t n = static_cast<int32_t>(piece.size());
  absl::InlinedVector<Symbol, 32> syms(n);
  for (int32_t i = 0; i < n; ++i) {
    // Every byte of valid UTF-8 has a symbol (checked at load time).
    syms[i] = Symbol{byte_ids_[static_cast<uint8_t>(piece[i])], i - 1, i + 1 < n ? i + 1 : -1, true};
  }
  std::priority_queue<Candidate, absl::InlinedVector<Candidate, 32>, std::greater<Candidate>> heap;
  const auto push_pair = [&](int32_t left) {
    const int32_t right = syms[left].next;
    if (right < 0) return;
    const auto it = merges_.find(PairKey(syms[left].id, syms[right].id));
    if (it != merges_.end()) heap.push(Candidate{it->second.rank, left, it->second.new_id});
  };
  for (int32_t i = 0; i + 1 < n; ++i) push_pair(i);
  while (!heap.empty()) {
    const Candidate c = heap.top();
    heap.pop();
    Symbol& left = syms[c.pos];
    if (!left.alive || left.next < 0) continue;
    Symbol& right = syms[left.next];
    const auto it = merges_.find(PairKey(left.id, right.id));
    if (it == merges_.end() || it->second.rank != c.rank || it->second.new_id != c.new_id) continue;
    left.id = c.new_id;
    right.alive = false;
    left.next = right.next;
    if (right.next >= 0) syms[right.next].prev = c.pos;
    if (left.prev >= 0) push_pair(left.prev);
    push_pair(c.pos);
  }
  for (int32_t i = 0; i >= 0; i = syms[i].next) ids->push_back(syms[i].id);
}

// ---------------------------------------------------------------------------------------------------------------
// Decoding and lookups
// ---------------------------------------------------------------------------------------------------------------

absl::StatusOr<std::string> BpeTokenizer::DecodeBytes(absl::Span<const int32_t> ids) const {
  std::string out;
  for (size_t i = 0; i < ids.size(); ++i) {
    const int32_t id = ids[i];
    if (id < 0 || id >= vocab_size() || !defined_[id]) {
      return absl::InvalidArgumentError(absl::StrCat("token id ", id, " at position ", i, " is not in the vocabulary",
                                                     " (vocab_size ", vocab_size(), ")"));
    }
    out += token_bytes_[id];
  }
  return out;
}

absl::StatusOr<int32_t> BpeTokenizer::TokenId(absl::string_view token) const {
  if (const auto it = added_ids_.find(token); it != added_ids_.end()) return it->second;
  if (const auto it = vocab_.find(token); it != vocab_.end()) return it->second;
  return absl::NotFoundError(absl::StrCat("no token ", Quote(token), " in the vocabulary"));
}

}  // namespace livekv
