// Tokenizer: Hugging Face tokenizer.json (BPE) read generically, so that rlcu produces exactly the ids that
// `tokenizers` produces for the same file, without per-model code.
//
// Encode:  text ─► split on added tokens (special ones only when allowed) ─► normalizer (NFC, Replace, ...) on the
//          pieces between them ─► split on `normalized` added tokens ─► pre-tokenizer (Split regex via PCRE2,
//          ByteLevel, Metaspace, ...) ─► BPE merges by rank per word (cached) ─► ids.
//          Special tokens are never added (no BOS/EOS) unless EncodeOptions::add_special asks for the
//          post-processor's template (TemplateProcessing), like `add_special_tokens=True`.
// Decode:  ids ─► token strings ─► decoder chain (ByteLevel, Metaspace, ByteFallback, Fuse, Strip, Replace) ─► UTF-8
//          text; byte sequences that are not valid UTF-8 become U+FFFD as in `tokenizers`.
// Stream:  StreamDecoder turns ids arriving one at a time into text pieces, holding back ids that end in the middle
//          of a UTF-8 character until the character is complete (`tokenizers`' DecodeStream semantics).
// Bytes:   token_bytes(id) is the raw byte string a token contributes inside a sequence (no first-token space
//          stripping, no U+FFFD substitution): the table GPU reward kernels match completions against.
//
// An unsupported component type or option in tokenizer.json is an rlcu::Error naming the component.
// A Tokenizer is immutable after loading and safe to use from several threads (the word cache is locked).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace rlcu {

struct EncodeOptions {
  bool allow_special = true;  // text that spells a special token becomes that token; false: plain text
  bool add_special = false;   // add the post-processor's tokens (e.g. BOS) around the sequence
};

struct DecodeOptions {
  bool skip_special = false;  // drop special tokens (added tokens marked "special") from the text
};

class Tokenizer {
 public:
  // Loads DIR/tokenizer.json (required), DIR/tokenizer_config.json, DIR/chat_template.jinja, DIR/config.json and
  // DIR/generation_config.json (each optional; they supply the chat template and the BOS/EOS/PAD ids).
  static Tokenizer load(const std::string& dir);
  // Builds from the text of a tokenizer.json, plus optionally the text of a tokenizer_config.json ("" = none).
  // `source` names the file in error messages.
  static Tokenizer from_json(const std::string& tokenizer_json, const std::string& tokenizer_config_json = "",
                             const std::string& source = "tokenizer.json");

  std::vector<int32_t> encode(std::string_view text, const EncodeOptions& opts = {}) const;
  std::string decode(const std::vector<int32_t>& ids, const DecodeOptions& opts = {}) const;

  int32_t vocab_size() const;                          // highest id + 1, added tokens included
  std::optional<int32_t> token_to_id(std::string_view token) const;  // vocabulary or added token string
  const std::string& id_to_token(int32_t id) const;    // throws rlcu::Error for an id outside the vocabulary
  const std::string& token_bytes(int32_t id) const;    // raw bytes the token contributes to a sequence's text
  bool is_special(int32_t id) const;                   // added token marked "special"

  int32_t bos_id() const;                              // -1 when the model has none
  int32_t eos_id() const;                              // primary EOS (tokenizer_config's eos_token first); -1 if none
  const std::vector<int32_t>& eos_ids() const;         // every id that ends generation (EOS of all three files)
  int32_t pad_id() const;                              // pad_token, else the primary EOS
  const std::string& bos_token() const;                // BOS string ("" when none), as chat templates insert it
  const std::string& eos_token() const;
  const std::string& chat_template_text() const;       // the Jinja chat template of the model ("" when none)
  // Where that template came from: DIR/chat_template.jinja, or DIR/tokenizer_config.json:chat_template (with
  // "[default]" for the default entry of a list of named templates); "" when none.
  const std::string& chat_template_source() const;
  // tokenizer_config.json's special tokens by name (bos_token, eos_token, unk_token, sep_token, pad_token,
  // cls_token, mask_token; only those it sets), which transformers hands to chat templates as variables.
  const std::vector<std::pair<std::string, std::string>>& named_special_tokens() const;
  const std::string& source() const;                   // file or directory it was loaded from

  struct Impl;

 private:
  explicit Tokenizer(std::shared_ptr<const Impl> impl);
  std::shared_ptr<const Impl> impl_;
  friend class StreamDecoder;
};

// Incremental decoding of generated ids: push() returns the text that the new id completes ("" while the id ends
// inside a UTF-8 character or a multi-token character); finish() returns whatever is still held back (with U+FFFD
// for incomplete bytes). The concatenation of all returned pieces equals decode(all ids) for ByteLevel and
// ByteFallback tokenizers, including ids that end mid-character.
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tokenizer, const DecodeOptions& opts = {});
  std::string push(int32_t id);
  std::string finish();

 private:
  const Tokenizer* tok_;
  DecodeOptions opts_;
  std::vector<int32_t> ids_;  // the window still being decoded: a context prefix plus the pending ids
  std::string prefix_;        // decode() of ids_[0, prefix_index_)
  size_t prefix_index_ = 0;
};

}  // namespace rlcu
