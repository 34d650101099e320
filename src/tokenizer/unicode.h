// UTF-8 and Unicode helpers for the tokenizer: decoding with validation, Unicode normalization forms and
// character classes (through utf8proc), and the lossy UTF-8 conversion `tokenizers` applies when decoding.
// Character classes follow Rust's char methods, which `tokenizers` uses: is_whitespace = White_Space property,
// is_numeric = N*, is_alphanumeric = L* or N*.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace rlcu::tok {

// Decodes the code point at s[i] and advances i; returns false (i unchanged) on an invalid or truncated sequence.
bool utf8_next(std::string_view s, size_t& i, char32_t& cp);
// Length of the UTF-8 sequence introduced by lead byte b (1 for ASCII and for invalid lead bytes).
inline size_t utf8_seq_len(unsigned char b) { return b < 0x80 ? 1 : b < 0xE0 ? 2 : b < 0xF0 ? 3 : 4; }
void append_utf8(std::string& out, char32_t cp);
// Byte offset of the first invalid sequence, or std::string_view::npos when s is valid UTF-8.
size_t find_invalid_utf8(std::string_view s);
// Valid UTF-8 with every maximal ill-formed subsequence replaced by U+FFFD (Rust's String::from_utf8_lossy).
std::string utf8_lossy(std::string_view bytes);
bool ends_with_replacement_char(std::string_view s);

enum class NormForm { NFC, NFD, NFKC, NFKD };
std::string unicode_normalize(std::string_view s, NormForm form);
std::string unicode_lowercase(std::string_view s);
std::string strip_combining_marks(std::string_view s);  // removes Mn/Mc/Me code points (StripAccents)

bool is_whitespace(char32_t c);
bool is_numeric(char32_t c);
bool is_punctuation(char32_t c);  // ASCII punctuation or a P* code point
bool is_word_char(char32_t c);    // what regex \w matches: letters, marks, Nd, Pc, joiners

}  // namespace rlcu::tok
