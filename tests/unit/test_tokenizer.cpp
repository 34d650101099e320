// Tokenizer: exact ids and text against Hugging Face `tokenizers` goldens (the Qwen3 tokenizer and synthetic
// tokenizers covering the other components), the decode(encode(s)) == NFC(s) property on random UTF-8, streaming
// decode across split characters, the token byte table, special ids from the model files, errors, and encode speed.
#include <gtest/gtest.h>

#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include <nlohmann/json.hpp>

#include "rlcu/error.h"
#include "rlcu/tokenizer.h"
#include "tokenizer/unicode.h"

using namespace rlcu;
using json = nlohmann::json;
namespace fs = std::filesystem;

namespace {

const std::string kFixtures = std::string(RLCU_TEST_FIXTURES) + "/tokenizers/";

std::vector<json> read_jsonl(const std::string& path) {
  std::ifstream f(path);
  EXPECT_TRUE(f.good()) << path;
  std::vector<json> out;
  std::string line;
  while (std::getline(f, line))
    if (!line.empty()) out.push_back(json::parse(line));
  return out;
}

const Tokenizer& qwen3() {
  static const Tokenizer tok = Tokenizer::load(kFixtures + "qwen3");
  return tok;
}

std::vector<int32_t> ids_of(const json& j) { return j.get<std::vector<int32_t>>(); }

std::string show(const std::string& s) { return json(s).dump(); }

struct TempDir {
  fs::path path;
  TempDir() {
    path = fs::temp_directory_path() / ("rlcu_tok_" + std::to_string(std::random_device{}()));
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
  void write(const std::string& name, const std::string& text) const { std::ofstream(path / name) << text; }
};

}  // namespace

TEST(TokenizerQwen3, GoldenEncodeDecode) {
  const auto golden = read_jsonl(kFixtures + "qwen3/golden.jsonl");
  ASSERT_GE(golden.size(), 200u);
  for (const json& g : golden) {
    const std::string text = g["text"];
    const auto ids = qwen3().encode(text);
    EXPECT_EQ(ids, ids_of(g["ids"])) << "text " << show(text);
    EXPECT_EQ(qwen3().decode(ids_of(g["ids"])), g["decoded"].get<std::string>()) << "text " << show(text);
  }
}

TEST(TokenizerQwen3, SpecialIdsAndVocabulary) {
  const Tokenizer& t = qwen3();
  EXPECT_EQ(t.vocab_size(), 151669);
  EXPECT_EQ(t.eos_id(), 151645);  // <|im_end|> from tokenizer_config.json
  EXPECT_EQ(t.pad_id(), 151643);  // <|endoftext|>
  EXPECT_EQ(t.bos_id(), -1);
  EXPECT_EQ(t.eos_token(), "<|im_end|>");
  EXPECT_EQ(t.token_to_id("<think>").value(), 151667);
  EXPECT_FALSE(t.is_special(151667));  // <think> is an added token but not special
  EXPECT_TRUE(t.is_special(151645));
  EXPECT_EQ(t.id_to_token(9707), "Hello");
  EXPECT_FALSE(t.token_to_id("no such token").has_value());
  EXPECT_THROW(t.id_to_token(-1), Error);
  EXPECT_THROW(t.id_to_token(10'000'000), Error);
  EXPECT_NE(t.chat_template_text().find("enable_thinking"), std::string::npos);
}

TEST(TokenizerQwen3, SpecialTokensAsPlainTextAndSkipped) {
  const Tokenizer& t = qwen3();
  const std::string text = "a<|im_end|>b";
  EXPECT_EQ(t.encode(text), (std::vector<int32_t>{64, 151645, 65}));
  EncodeOptions plain;
  plain.allow_special = false;
  const auto ids = t.encode(text, plain);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 151645), 0);
  EXPECT_EQ(t.decode(ids), text);
  DecodeOptions skip;
  skip.skip_special = true;
  EXPECT_EQ(t.decode({64, 151645, 65}, skip), "ab");
  EXPECT_EQ(t.decode({64, 151667, 65}, skip), "a<think>b");  // not special: kept
  // Ids outside the vocabulary (a model's padded embedding rows) are skipped, as `tokenizers` does.
  EXPECT_EQ(t.decode({64, 151900, 65}), "ab");
}

TEST(TokenizerQwen3, TokenBytesConcatenateToText) {
  const Tokenizer& t = qwen3();
  for (const std::string s : {"Hello world", "emoji 😀🎉 and flags 🇯🇵", "中文测试", "<|im_start|>user\nhi"}) {
    std::string bytes;
    for (int32_t id : t.encode(s)) bytes += t.token_bytes(id);
    EXPECT_EQ(bytes, s);
  }
  // A token holding part of a character gives the raw bytes, not U+FFFD.
  EXPECT_EQ(t.token_bytes(11162), " \xF0\x9F");
  EXPECT_EQ(t.token_bytes(-5), "");
}

TEST(TokenizerQwen3, StreamDecodeHoldsBackPartialCharacters) {
  const Tokenizer& t = qwen3();
  const std::vector<int32_t> ids = {8042, 11162, 229, 107, 145516, 0};  // " flags 🇯🇵!", " 🇯" split in three
  StreamDecoder dec(t);
  std::vector<std::string> pieces;
  for (int32_t id : ids) pieces.push_back(dec.push(id));
  pieces.push_back(dec.finish());
  EXPECT_EQ(pieces[0], " flags");
  EXPECT_EQ(pieces[1], "");
  EXPECT_EQ(pieces[2], "");
  EXPECT_EQ(pieces[3], " \xF0\x9F\x87\xAF");
  std::string all;
  for (const auto& p : pieces) all += p;
  EXPECT_EQ(all, t.decode(ids));

  // An incomplete character at the end comes out of finish() as U+FFFD, like decode().
  StreamDecoder tail(t);
  EXPECT_EQ(tail.push(9707), "Hello");
  EXPECT_EQ(tail.push(11162), "");
  EXPECT_EQ(tail.finish(), " \xEF\xBF\xBD");
}

TEST(TokenizerQwen3, DecodeIncompleteUtf8LikeTokenizers) {
  const Tokenizer& t = qwen3();
  EXPECT_EQ(t.decode({11162}), " \xEF\xBF\xBD");  // " " F0 9F: one maximal subpart, one U+FFFD
  EXPECT_EQ(t.decode({11162, 9707}), " \xEF\xBF\xBDHello");
  EXPECT_EQ(t.decode({}), "");
}

// decode(encode(s)) == NFC(s) for random valid UTF-8: emoji (with ZWJ and modifiers), CJK, Hangul, combining marks,
// whitespace runs of every kind, special-token look-alikes and arbitrary code points.
TEST(TokenizerQwen3, RoundTripPropertyOnRandomUtf8) {
  const Tokenizer& t = qwen3();
  std::mt19937_64 rng(20240607);
  const std::vector<std::string> lookalikes = {"<|im_end|>", "<|im_end", "|im_end|>", "<|im_start|>", "<|endoftext|",
                                               "<think>",    "</think>", "<|endoftext|>", "< |im_end|>", "<<|im_end|>>"};
  const std::vector<char32_t> spaces = {' ', '\t', '\n', '\r', 0x0B, 0x0C, 0x85, 0xA0, 0x1680, 0x2003, 0x2028, 0x3000};
  auto pick = [&](uint64_t n) { return static_cast<uint64_t>(rng() % n); };
  int checked = 0;
  for (int iter = 0; iter < 400; ++iter) {
    std::string s;
    const int parts = 1 + static_cast<int>(pick(30));
    for (int k = 0; k < parts; ++k) {
      const uint64_t kind = pick(9);
      if (kind == 0) {
        s += lookalikes[pick(lookalikes.size())];
      } else if (kind == 1) {
        for (uint64_t r = 1 + pick(6); r > 0; --r) tok::append_utf8(s, spaces[pick(spaces.size())]);
      } else if (kind == 2) {
        tok::append_utf8(s, static_cast<char32_t>(0x1F600 + pick(80)));
        if (pick(3) == 0) tok::append_utf8(s, static_cast<char32_t>(0x1F3FB + pick(5)));
        if (pick(4) == 0) s += "\u200D\U0001F4BB";
      } else if (kind == 3) {
        tok::append_utf8(s, static_cast<char32_t>(0x4E00 + pick(0x5000)));
      } else if (kind == 4) {
        tok::append_utf8(s, static_cast<char32_t>(0xAC00 + pick(11172)));
      } else if (kind == 5) {
        s += "aeoAEO"[pick(6)];
        for (uint64_t r = 1 + pick(3); r > 0; --r) tok::append_utf8(s, static_cast<char32_t>(0x300 + pick(0x70)));
      } else if (kind == 6) {
        char32_t cp;
        do cp = static_cast<char32_t>(1 + pick(0x10FFFF)); while (cp >= 0xD800 && cp <= 0xDFFF);
        tok::append_utf8(s, cp);
      } else {
        for (uint64_t r = 1 + pick(8); r > 0; --r) s += static_cast<char>(0x20 + pick(95));
      }
    }
    const std::string nfc = tok::unicode_normalize(s, tok::NormForm::NFC);
    const auto ids = t.encode(s);
    ASSERT_EQ(t.decode(ids), nfc) << "input " << show(s);
    // Streaming the same ids reproduces the text exactly.
    StreamDecoder dec(t);
    std::string streamed;
    for (int32_t id : ids) streamed += dec.push(id);
    streamed += dec.finish();
    ASSERT_EQ(streamed, nfc) << "input " << show(s);
    ++checked;
  }
  EXPECT_EQ(checked, 400);
}

TEST(TokenizerQwen3, RejectsInvalidUtf8) {
  try {
    qwen3().encode("ok\xC3(");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("UTF-8"), std::string::npos);
  }
}

// Synthetic tokenizers made by tests/fixtures/tokenizers/make_synthetic.py with `tokenizers` 0.23: byte fallback,
// Metaspace, Prepend/Replace/Strip/StripAccents/Lowercase/NFKC/NFKD normalizers, added tokens with lstrip/rstrip/
// single_word/normalized, every Split behaviour, Digits, Punctuation, Whitespace(Split), CharDelimiterSplit,
// ignore_merges, continuing_subword_prefix/end_of_word_suffix, TemplateProcessing, ByteLevel with the GPT-2 regex.
class SyntheticGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(SyntheticGolden, MatchesTokenizers) {
  const std::string dir = kFixtures + GetParam();
  const Tokenizer t = Tokenizer::load(dir);
  const auto golden = read_jsonl(dir + "/golden.jsonl");
  ASSERT_GE(golden.size(), 150u);
  EncodeOptions plain, with_special;
  plain.allow_special = false;
  with_special.add_special = true;
  DecodeOptions skip;
  skip.skip_special = true;
  int texts = 0, sequences = 0;
  for (const json& g : golden) {
    if (g.contains("text")) {
      const std::string text = g["text"];
      EXPECT_EQ(t.encode(text), ids_of(g["ids"])) << GetParam() << " text " << show(text);
      EXPECT_EQ(t.encode(text, plain), ids_of(g["ids_plain"])) << GetParam() << " (no special) text " << show(text);
      EXPECT_EQ(t.encode(text, with_special), ids_of(g["ids_special"])) << GetParam() << " (add special) " << show(text);
      EXPECT_EQ(t.decode(ids_of(g["ids"])), g["decoded"].get<std::string>()) << GetParam() << " text " << show(text);
      EXPECT_EQ(t.decode(ids_of(g["ids"]), skip), g["decoded_skip"].get<std::string>()) << GetParam() << show(text);
      ++texts;
    } else {
      const auto ids = ids_of(g["decode_ids"]);
      EXPECT_EQ(t.decode(ids), g["decoded"].get<std::string>()) << GetParam() << " ids " << g["decode_ids"].dump();
      EXPECT_EQ(t.decode(ids, skip), g["decoded_skip"].get<std::string>()) << GetParam() << g["decode_ids"].dump();
      ++sequences;
    }
  }
  EXPECT_GT(texts, 100);
  EXPECT_GT(sequences, 50);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, SyntheticGolden,
                         ::testing::Values("sp_bpe", "metaspace", "bytelevel", "gpt2", "splits", "splits2"));

TEST(TokenizerSynthetic, ByteFallbackStreamingAndTokenBytes) {
  const Tokenizer t = Tokenizer::load(kFixtures + "sp_bpe");
  const std::string text = "Hello 😀 wörld";
  const auto ids = t.encode(text);
  StreamDecoder dec(t);
  std::string streamed;
  for (int32_t id : ids) streamed += dec.push(id);
  streamed += dec.finish();
  EXPECT_EQ(streamed, t.decode(ids));
  EXPECT_EQ(streamed, text);
  // Inside a sequence every token keeps its leading space (the decoder's Strip only applies at the start).
  std::string bytes;
  for (int32_t id : ids) bytes += t.token_bytes(id);
  EXPECT_EQ(bytes, " " + text);
  EXPECT_EQ(t.bos_id(), -1);
  EXPECT_EQ(t.encode("hi", EncodeOptions{true, true}).front(), 1);  // TemplateProcessing "<s> $A"
}

TEST(TokenizerLoad, SpecialIdsFromModelFiles) {
  TempDir d;
  fs::copy_file(kFixtures + "bytelevel/tokenizer.json", d.path / "tokenizer.json");
  const Tokenizer t0 = Tokenizer::load(d.path.string());
  EXPECT_EQ(t0.eos_id(), -1);
  const int32_t begin = t0.token_to_id("<|begin_of_text|>").value();
  const int32_t end = t0.token_to_id("<|end_of_text|>").value();
  const int32_t eot = t0.token_to_id("<|eot_id|>").value();
  d.write("config.json", json{{"bos_token_id", begin}, {"eos_token_id", end}}.dump());
  d.write("generation_config.json", json{{"bos_token_id", begin}, {"eos_token_id", {end, eot}}}.dump());
  const Tokenizer t1 = Tokenizer::load(d.path.string());
  EXPECT_EQ(t1.bos_id(), begin);
  EXPECT_EQ(t1.bos_token(), "<|begin_of_text|>");
  EXPECT_EQ(t1.eos_id(), end);
  EXPECT_EQ(t1.eos_ids(), (std::vector<int32_t>{end, eot}));
  EXPECT_EQ(t1.pad_id(), end);
  d.write("tokenizer_config.json",
          json{{"eos_token", "<|eot_id|>"}, {"bos_token", {{"content", "<|begin_of_text|>"}}}}.dump());
  d.write("chat_template.jinja", "{{ bos_token }}<|start_header_id|>...<|eot_id|>");
  const Tokenizer t2 = Tokenizer::load(d.path.string());
  EXPECT_EQ(t2.eos_id(), eot);
  EXPECT_EQ(t2.eos_ids(), (std::vector<int32_t>{eot, end}));
  EXPECT_EQ(t2.chat_template_text(), "{{ bos_token }}<|start_header_id|>...<|eot_id|>");
  d.write("tokenizer_config.json", json{{"eos_token", "<|nope|>"}}.dump());
  EXPECT_THROW(Tokenizer::load(d.path.string()), Error);
  d.write("tokenizer_config.json", "{}");
  d.write("config.json", json{{"eos_token_id", 99999999}}.dump());
  EXPECT_THROW(Tokenizer::load(d.path.string()), Error);
}

namespace {
std::string error_of(const std::string& tokenizer_json) {
  try {
    Tokenizer::from_json(tokenizer_json);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}
}  // namespace

TEST(TokenizerLoad, UnsupportedComponentsAreNamedErrors) {
  const std::string model = R"("model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]})";
  EXPECT_EQ(Tokenizer::from_json("{" + model + "}").encode("abba"), (std::vector<int32_t>{2, 1, 0}));
  EXPECT_NE(error_of(R"({"normalizer": {"type": "Precompiled"}, )" + model + "}").find("'Precompiled'"),
            std::string::npos);
  EXPECT_NE(error_of(R"({"pre_tokenizer": {"type": "BertPreTokenizer"}, )" + model + "}").find("'BertPreTokenizer'"),
            std::string::npos);
  EXPECT_NE(error_of(R"({"decoder": {"type": "WordPiece"}, )" + model + "}").find("'WordPiece'"), std::string::npos);
  EXPECT_NE(error_of(R"({"model": {"type": "Unigram", "vocab": []}})").find("'Unigram'"), std::string::npos);
  EXPECT_NE(error_of(R"({"pre_tokenizer": {"type": "Split", "pattern": {"Regex": "(["}, "behavior": "Isolated"}, )" +
                     model + "}")
                .find("does not compile"),
            std::string::npos);
  EXPECT_NE(error_of(R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a b"]}})").find("merge #0"),
            std::string::npos);
  EXPECT_NE(error_of("{not json").find("invalid JSON"), std::string::npos);
  EXPECT_THROW(Tokenizer::load("/nonexistent/model/dir"), Error);
}

TEST(TokenizerBpe, MergesPairFormIgnoreMergesAndLongWords) {
  // Pair-list merges; ignore_merges takes a whole word in the vocabulary even when merges would split it.
  const std::string vocab = R"({"a": 0, "b": 1, "c": 2, "ab": 3, "bc": 4, "abc": 5, "ca": 6})";
  const std::string merges = R"([["b", "c"], ["a", "b"], ["c", "a"]])";
  const auto make = [&](bool ignore) {
    return Tokenizer::from_json(R"({"model": {"type": "BPE", "ignore_merges": )" + std::string(ignore ? "true" : "false") +
                                R"(, "vocab": )" + vocab + R"(, "merges": )" + merges + "}}");
  };
  EXPECT_EQ(make(false).encode("abc"), (std::vector<int32_t>{0, 4}));  // b+c ranks before a+b
  EXPECT_EQ(make(true).encode("abc"), (std::vector<int32_t>{5}));
  // A long word takes the heap path; it must agree with merging the same pattern in short pieces.
  std::string longword;
  for (int k = 0; k < 200; ++k) longword += "abc";
  const auto ids = make(false).encode(longword);
  std::vector<int32_t> expect;
  for (int k = 0; k < 200; ++k) {
    expect.push_back(0);
    expect.push_back(4);
  }
  EXPECT_EQ(ids, expect);
}

// Single-core encode throughput on English prose (generated deterministically: a Zipf-like draw over a few hundred
// common words with punctuation, capitals and paragraphs). The figure is printed and recorded; the floor only
// catches a broken cache or an accidental quadratic path.
TEST(TokenizerSpeed, EnglishProseMegabytesPerSecond) {
  static const char* words[] = {
      "the", "of", "and", "to", "a", "in", "that", "is", "was", "he", "for", "it", "with", "as", "his", "on", "be",
      "at", "by", "I", "this", "had", "not", "are", "but", "from", "or", "have", "an", "they", "which", "one", "you",
      "were", "her", "all", "she", "there", "would", "their", "we", "him", "been", "has", "when", "who", "will",
      "more", "no", "if", "out", "so", "said", "what", "up", "its", "about", "into", "than", "them", "can", "only",
      "other", "new", "some", "could", "time", "these", "two", "may", "then", "do", "first", "any", "my", "now",
      "such", "like", "our", "over", "man", "me", "even", "most", "made", "after", "also", "did", "many", "before",
      "must", "through", "back", "years", "where", "much", "your", "way", "well", "down", "should", "because", "each",
      "just", "those", "people", "Mr.", "how", "too", "little", "state", "good", "very", "make", "world", "still",
      "own", "see", "men", "work", "long", "get", "here", "between", "both", "life", "being", "under", "never", "day",
      "same", "another", "know", "while", "last", "might", "us", "great", "old", "year", "off", "come", "since",
      "against", "go", "came", "right", "used", "take", "three", "himself", "few", "house", "use", "during", "without",
      "again", "place", "American", "around", "however", "home", "small", "found", "Mrs.", "thought", "went", "say",
      "part", "once", "general", "high", "upon", "school", "every", "don't", "does", "got", "united", "left",
      "number", "course", "war", "until", "always", "away", "something", "fact", "though", "water", "less", "public",
      "put", "think", "almost", "hand", "enough", "far", "took", "head", "yet", "government", "system", "better",
      "set", "told", "nothing", "night", "end", "why", "called", "didn't", "eyes", "find", "going", "look", "asked",
      "later", "knew", "point", "next", "program", "city", "business", "give", "group", "toward", "young", "days",
      "let", "room", "president", "side", "social", "given", "present", "several", "order", "national", "possible",
      "rather", "second", "face", "per", "among", "form", "important", "often", "things", "looked", "early", "white",
      "case", "John", "become", "large", "big", "need", "four", "within", "felt", "children", "along", "saw", "best",
      "church", "ever", "least", "power", "development", "light", "thing", "seemed", "family", "interest", "want",
      "members", "mind", "country", "area", "others", "done", "turned", "although", "open", "God", "service",
      "certain", "kind", "problem", "began", "different", "door", "thus", "help", "sense", "means", "whole",
      "matter", "perhaps", "itself", "York", "it's", "times", "law", "human", "line", "above", "name", "example",
      "action", "company", "hands", "local", "show", "whether", "five", "history", "gave", "today", "either", "act",
      "feet", "across", "taken", "past", "quite", "anything", "seen", "having", "death", "week", "experience",
      "1961", "42", "3.5%", "twenty-one", "well-known", "o'clock", "reasonable", "extraordinary", "unquestionably"};
  const size_t nwords = sizeof(words) / sizeof(words[0]);
  std::mt19937_64 rng(7);
  std::string text;
  bool cap = true;
  while (text.size() < 400 * 1024) {
    const double u = std::uniform_real_distribution<double>(0.0, 1.0)(rng);
    std::string w = words[static_cast<size_t>(std::pow(u, 2.2) * nwords) % nwords];
    if (cap) w[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(w[0])));
    text += w;
    cap = false;
    const uint64_t r = rng() % 100;
    if (r < 6) {
      text += ". ";
      cap = true;
    } else if (r < 9) {
      text += ", ";
    } else if (r == 9) {
      text += ".\n\n";
      cap = true;
    } else if (r == 10) {
      text += "; ";
    } else {
      text += " ";
    }
  }
  const Tokenizer t = Tokenizer::load(kFixtures + "qwen3");
  auto mbps = [&](const std::string& s, size_t* ntok) {
    const auto t0 = std::chrono::steady_clock::now();
    const auto ids = t.encode(s);
    const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    *ntok = ids.size();
    return s.size() / sec / 1e6;
  };
  size_t ntok = 0;
  const double cold = mbps(text, &ntok);
  const double warm = mbps(text, &ntok);
  std::printf("encode speed (one core, %zu KB English prose, %zu tokens): %.1f MB/s first pass, %.1f MB/s cached\n",
              text.size() / 1024, ntok, cold, warm);
  RecordProperty("encode_mb_per_s_first_pass", std::to_string(cold));
  RecordProperty("encode_mb_per_s_cached", std::to_string(warm));
  EXPECT_GT(cold, 1.0);
}

TEST(TokenizerNormalizers, LowercaseUsesTheFullMapping) {
  // U+0130 lowercases to "i" + U+0307 in `tokenizers` (Rust's full case mapping), not to plain "i".
  const Tokenizer t = Tokenizer::from_json(
      R"({"normalizer": {"type": "Lowercase"}, "model": {"type": "BPE", "vocab": {"i": 0, "\u0307": 1, "x": 2}, "merges": []}})");
  EXPECT_EQ(t.encode("\xC4\xB0X"), (std::vector<int32_t>{0, 1, 2}));
}
