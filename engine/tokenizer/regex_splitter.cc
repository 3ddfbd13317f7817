#include "engine/tokenizer/regex_splitter.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <utility>

#include "absl/strings/str_cat.h"

namespace livekv {
namespace {

// Unicode's White_Space property (PropList.txt), as members of a character class.
constexpr absl::string_view kWhiteSpaceMembers =
    R"(\t\n\x{0B}\f\r\x{20}\x{85}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000})";

pcre2_code* Code(void* p) { return static_cast<pcre2_code*>(p); }

std::string Pcre2ErrorMessage(int error) {
  PCRE2_UCHAR buf[256];
  if (pcre2_get_error_message(error, buf, sizeof(buf)) < 0) return absl::StrCat("PCRE2 error ", error);
  return std::string(reinterpret_cast<const char*>(buf));
}

// Deletes match data on scope exit.
struct MatchDataDeleter {
  void operator()(pcre2_match_data* md) const { pcre2_match_data_free(md); }
};

}  // namespace

std::string RewriteWhitespaceClasses(absl::string_view p) {
  std::string out;
  out.reserve(p.size() + 64);
  bool in_class = false;
  size_t i = 0;
  while (i < p.size()) {
    const char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      const char e = p[i + 1];
      if (e == 's') {
        if (in_class) {
          out.append(kWhiteSpaceMembers.data(), kWhiteSpaceMembers.size());
        } else {
          absl::StrAppend(&out, "[", kWhiteSpaceMembers, "]");
        }
        i += 2;
      } else if (e == 'S' && !in_class) {
        absl::StrAppend(&out, "[^", kWhiteSpaceMembers, "]");
        i += 2;
      } else if (e == 'Q') {  // \Q...\E is literal text: copy it untouched
        const size_t end = p.find("\\E", i + 2);
        const size_t stop = end == absl::string_view::npos ? p.size() : end + 2;
        out.append(p.data() + i, stop - i);
        i = stop;
      } else {
        out.append(p.data() + i, 2);
        i += 2;
      }
      continue;
    }
    if (!in_class && c == '[') {
      in_class = true;
      out.push_back(c);
      ++i;
      if (i < p.size() && p[i] == '^') out.push_back(p[i++]);
      if (i < p.size() && p[i] == ']') out.push_back(p[i++]);  // a leading ']' is a literal
      continue;
    }
    if (in_class && c == '[' && i + 1 < p.size() && p[i + 1] == ':') {  // POSIX class [:name:]
      const size_t end = p.find(":]", i + 2);
      if (end != absl::string_view::npos) {
        out.append(p.data() + i, end + 2 - i);
        i = end + 2;
        continue;
      }
    }
    if (in_class && c == ']') in_class = false;
    out.push_back(c);
    ++i;
  }
  return out;
}

absl::StatusOr<std::unique_ptr<RegexSplitter>> RegexSplitter::Create(absl::string_view pattern, bool literal) {
  const std::string compiled_pattern = literal ? std::string(pattern) : RewriteWhitespaceClasses(pattern);
  int error = 0;
  PCRE2_SIZE error_offset = 0;
  // PCRE2 refuses UCP together with LITERAL; it means nothing for plain text anyway.
  const uint32_t options = PCRE2_UTF | (literal ? PCRE2_LITERAL : PCRE2_UCP);
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(compiled_pattern.data()), compiled_pattern.size(),
                                   options, &error, &error_offset, nullptr);
  if (code == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("regex \"", pattern, "\" does not compile: ", Pcre2ErrorMessage(error), " (at offset ",
                     error_offset, " of the rewritten pattern \"", compiled_pattern, "\")"));
  }
  uint32_t has_jit = 0;
  pcre2_config(PCRE2_CONFIG_JIT, &has_jit);
  // Without JIT, pcre2_match interprets the pattern: slower, same results.
  const bool jit = has_jit != 0 && pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
  return std::unique_ptr<RegexSplitter>(new RegexSplitter(std::string(pattern), code, jit));
}

RegexSplitter::~RegexSplitter() { pcre2_code_free(Code(code_)); }

absl::Status RegexSplitter::Split(absl::string_view text, std::vector<absl::string_view>* pieces) const {
  std::unique_ptr<pcre2_match_data, MatchDataDeleter> md(pcre2_match_data_create_from_pattern(Code(code_), nullptr));
  if (md == nullptr) return absl::ResourceExhaustedError("regex split: out of memory for PCRE2 match data");
  const size_t first_piece = pieces->size();
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t pos = 0;     // where the next match attempt starts
  size_t copied = 0;  // text before this offset has been emitted
  while (pos < text.size()) {
    // The text is validated UTF-8 and pos is always on a character boundary.
    int rc = pcre2_match(Code(code_), subject, text.size(), pos, PCRE2_NO_UTF_CHECK, md.get(), nullptr);
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT) {
      // The JIT's default 32 KiB machine stack is too small for this input; the interpreter keeps its
      // backtracking state on the heap.
      rc = pcre2_match(Code(code_), subject, text.size(), pos, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, md.get(), nullptr);
    }
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      pieces->resize(first_piece);
      return absl::ResourceExhaustedError(absl::StrCat("regex \"", pattern_, "\" failed on text of ", text.size(),
                                                       " bytes at offset ", pos, ": ", Pcre2ErrorMessage(rc)));
    }
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md.get());
    const size_t start = ov[0];
    const size_t end = ov[1];
    if (end <= start) {  // empty match: ignore it and retry one character further on
      pos = start + 1;
      while (pos < text.size() && (static_cast<uint8_t>(text[pos]) & 0xC0) == 0x80) ++pos;
      continue;
    }
    if (start > copied) pieces->push_back(text.substr(copied, start - copied));
    pieces->push_back(text.substr(start, end - start));
    copied = end;
    pos = end;
  }
  if (copied < text.size()) pieces->push_back(text.substr(copied));
  return absl::OkStatus();
}

}  // namespace livekv
