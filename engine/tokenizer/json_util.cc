#include "engine/tokenizer/json_util.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace livekv {
namespace {

using Json = nlohmann::json;

// A SAX handler that accepts everything and records the first parse error, so the error message (with its byte
// position) is available without exceptions.
class ErrorRecorder : public nlohmann::json_sax<Json> {
 public:
  bool null() override { return true; }
  bool boolean(bool) override { return true; }
  bool number_integer(number_integer_t) override { return true; }
  bool number_unsigned(number_unsigned_t) override { return true; }
  bool number_float(number_float_t, const string_t&) override { return true; }
  bool string(string_t&) override { return true; }
  bool binary(binary_t&) override { return true; }
  bool start_object(std::size_t) override { return true; }
  bool key(string_t&) override { return true; }
  bool end_object() override { return true; }
  bool start_array(std::size_t) override { return true; }
  bool end_array() override { return true; }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& ex) override {
    message_ = ex.what();
    return false;
  }
  const std::string& message() const { return message_; }

 private:
  std::string message_;
};

}  // namespace

absl::StatusOr<Json> ParseJson(absl::string_view text, absl::string_view file) {
  Json j = Json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (!j.is_discarded()) return j;
  ErrorRecorder recorder;
  Json::sax_parse(text.begin(), text.end(), &recorder);
  return absl::InvalidArgumentError(absl::StrCat(file, ": not valid JSON: ", recorder.message()));
}

std::string JsonPath(absl::string_view parent, absl::string_view key) {
  return parent.empty() ? std::string(key) : absl::StrCat(parent, ".", key);
}

std::string JsonPath(absl::string_view parent, size_t index) { return absl::StrCat(parent, "[", index, "]"); }

absl::Status JsonFields::Error(absl::string_view path, absl::string_view what) const {
  return absl::InvalidArgumentError(absl::StrCat(file_, ": field ", path, ": ", what));
}

const Json* JsonFields::Find(const Json& obj, absl::string_view key) {
  if (!obj.is_object()) return nullptr;
  const auto it = obj.find(std::string(key));
  if (it == obj.end() || it->is_null()) return nullptr;
  return &*it;
}

absl::StatusOr<const Json*> JsonFields::Required(const Json& obj, absl::string_view path, absl::string_view key) const {
  const Json* v = Find(obj, key);
  if (v == nullptr) return Error(JsonPath(path, key), "missing");
  return v;
}

absl::StatusOr<std::string> JsonFields::RequiredString(const Json& obj, absl::string_view path,
                                                       absl::string_view key) const {
  const Json* v = Find(obj, key);
  if (v == nullptr) return Error(JsonPath(path, key), "missing");
  if (!v->is_string()) return Error(JsonPath(path, key), absl::StrCat("expected a string, got ", v->type_name()));
  return v->get_ref<const std::string&>();
}

absl::StatusOr<std::string> JsonFields::OptionalString(const Json& obj, absl::string_view path, absl::string_view key,
                                                       absl::string_view fallback) const {
  const Json* v = Find(obj, key);
  if (v == nullptr) return std::string(fallback);
  if (!v->is_string()) return Error(JsonPath(path, key), absl::StrCat("expected a string, got ", v->type_name()));
  return v->get_ref<const std::string&>();
}

absl::StatusOr<bool> JsonFields::OptionalBool(const Json& obj, absl::string_view path, absl::string_view key,
                                              bool fallback) const {
  const Json* v = Find(obj, key);
  if (v == nullptr) return fallback;
  if (!v->is_boolean()) return Error(JsonPath(path, key), absl::StrCat("expected a boolean, got ", v->type_name()));
  return v->get<bool>();
}

absl::StatusOr<int32_t> JsonFields::TokenIdValue(const Json& value, absl::string_view path) const {
  if (value.is_number_unsigned()) {
    const uint64_t id = value.get<uint64_t>();
    if (id <= 0x7FFFFFFEu) return static_cast<int32_t>(id);
    return Error(path, absl::StrCat("token id ", id, " is too large"));
  }
  if (value.is_number_integer()) return Error(path, absl::StrCat("token id ", value.get<int64_t>(), " is negative"));
  return Error(path, absl::StrCat("expected a token id (an integer), got ", value.type_name()));
}

}  // namespace livekv
