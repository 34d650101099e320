// Internal building blocks of the tokenizer pipeline, each read from its tokenizer.json object:
//   Regex         PCRE2 (UTF + UCP, JIT when available) for Split patterns and Replace regexes
//   Normalizer    text -> text (NFC/NFD/NFKC/NFKD, Lowercase, Strip, StripAccents, Replace, Prepend, Sequence)
//   PreTokenizer  pieces -> finer pieces (Split, ByteLevel, Metaspace, Digits, Whitespace, WhitespaceSplit,
//                 Punctuation, CharDelimiterSplit, Sequence)
//   BpeModel      one pre-tokenized word -> ids, merges applied lowest rank first, results cached per word
//   Decoder       token strings -> token strings (ByteLevel, Metaspace, ByteFallback, Fuse, Strip, Replace,
//                 BPEDecoder, Sequence); byte strings may be invalid UTF-8 until the final lossy conversion
// Semantics follow `tokenizers` (the Rust library behind Hugging Face's fast tokenizers).
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <nlohmann/json.hpp>

namespace rlcu::tok {

using json = nlohmann::json;

class Regex {
 public:
  // `where` names the tokenizer.json component in the error message when the pattern does not compile.
  Regex(const std::string& pattern, const std::string& where);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;
  // Appends (start, end) byte offsets of the successive non-overlapping matches in s.
  void find_all(std::string_view s, std::vector<std::pair<size_t, size_t>>& out) const;

 private:
  void* code_ = nullptr;  // pcre2_code_8*
};

// A literal string or a regex, as the {"String": ...} / {"Regex": ...} pattern objects of tokenizer.json.
class Pattern {
 public:
  Pattern(const json& j, const std::string& where);
  void find_all(std::string_view s, std::vector<std::pair<size_t, size_t>>& out) const;

 private:
  std::string literal_;
  std::unique_ptr<Regex> regex_;
};

// A span of text on its way through pre-tokenization; `at_start` marks the piece that begins at offset 0 of the
// original input (Metaspace's prepend_scheme "first" prepends only there).
struct Piece {
  std::string text;
  bool at_start = false;
};

// `at_origin` says whether the text's first character still comes from the first character of the input: a
// normalizer that removes leading characters (Strip, StripAccents, Replace by "") clears it, and Metaspace's
// prepend_scheme "first" then does not prepend (`tokenizers` checks the original offset of the piece).
class Normalizer {
 public:
  virtual ~Normalizer() = default;
  virtual void apply(std::string& s, bool& at_origin) const = 0;
};
std::unique_ptr<Normalizer> make_normalizer(const json& j);

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  virtual void apply(std::vector<Piece>& pieces) const = 0;
};
std::unique_ptr<PreTokenizer> make_pre_tokenizer(const json& j);

// Decoders see the whole token list of a decode call. `mid_sequence` disables first-token rules (Metaspace's
// leading space, Strip) for token_bytes(), which wants what a token adds inside a sequence; `raw` keeps invalid
// UTF-8 bytes instead of the U+FFFD substitution ByteFallback makes.
struct DecodeMode {
  bool mid_sequence = false;
  bool raw = false;
};
class Decoder {
 public:
  virtual ~Decoder() = default;
  virtual void apply(std::vector<std::string>& tokens, const DecodeMode& mode) const = 0;
};
std::unique_ptr<Decoder> make_decoder(const json& j);

// The 256 printable code points ByteLevel maps bytes to (GPT-2's bytes_to_unicode), as UTF-8 strings.
const std::string* byte_level_alphabet();
// Inverse of byte_level_alphabet for one code point: the byte, or -1.
int byte_level_decode(char32_t cp);

// Open-addressing hash map from strings to ids, looked up by string_view without allocating.
class StringIdMap {
 public:
  void reserve(size_t n);
  bool insert(std::string key, int32_t id);  // false when the key is present (the id is not changed)
  int32_t find(std::string_view key) const;  // -1 when absent
  size_t size() const { return keys_.size(); }

 private:
  std::vector<std::string> keys_;
  std::vector<int32_t> ids_;
  std::vector<int32_t> slots_;  // index into keys_, -1 empty
  size_t mask_ = 0;
  void grow();
};

class BpeModel {
 public:
  // Reads the "model" object (type BPE); vocab entries are registered into `vocab` / `id_to_token`.
  BpeModel(const json& model, StringIdMap& vocab, std::vector<std::string>& id_to_token);
  // Appends the ids of one pre-tokenized word to out.
  void encode_word(std::string_view word, std::vector<int32_t>& out) const;

 private:
  struct Merge {
    int32_t rank;
    int32_t new_id;
  };
  const StringIdMap* vocab_;
  std::vector<uint64_t> merge_keys_;  // open addressing over (left id, right id); ~0 = empty
  std::vector<Merge> merge_vals_;
  size_t merge_mask_ = 0;
  int32_t unk_id_ = -1;
  bool fuse_unk_ = false;
  bool byte_fallback_ = false;
  bool ignore_merges_ = false;
  std::string continuing_subword_prefix_;
  std::string end_of_word_suffix_;
  int32_t byte_ids_[256];  // <0xXX> tokens for byte_fallback, -1 when absent

  mutable std::mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache_;

  const Merge* find_merge(int32_t a, int32_t b) const;
  void add_merge(int32_t a, int32_t b, Merge m);
  void merge_word(std::vector<int32_t>& symbols) const;
  void initial_symbols(std::string_view word, std::vector<int32_t>& symbols) const;
};

}  // namespace rlcu::tok
