// libseer tokenizer: runs a Hugging Face `tokenizers` JSON file (an engine directory's tokenizers/clip.json or
// tokenizers/t5.json) and produces the token ids the Python `tokenizers` library produces for the same text.
//
// Supported components (anything else is refused at load time with a one-line TokenizerError):
//   normalizers     NFC, NFD, NFKC, NFKD, Lowercase, Replace (String/Regex), Strip, StripAccents, Prepend, Nmt,
//                   ByteLevel, Precompiled (sentencepiece charsmap), Sequence, null
//   pre-tokenizers  Split (String/Regex, all behaviours, invert), ByteLevel, Whitespace, WhitespaceSplit, Metaspace,
//                   Punctuation, Digits, BertPreTokenizer, CharDelimiterSplit, Sequence, null
//   models          BPE (merges by rank, continuing_subword_prefix, end_of_word_suffix, unk_token, fuse_unk,
//                   byte_fallback, ignore_merges; no dropout), Unigram (Viterbi, unk fusing, byte_fallback)
//   post-processors RobertaProcessing, BertProcessing, TemplateProcessing (single template), ByteLevel, Sequence, null
//   added_tokens    matched before normalization (normalized: false) or after it (normalized: true), with
//                   single_word / lstrip / rstrip, as the library does.
// Uses ICU for Unicode normalization, case mapping, grapheme clusters and regular expressions.
// A Tokenizer is immutable after loading; encode() may be called from several threads at once.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace seer {

struct TokenizerError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

class Tokenizer {
 public:
  // Parses the tokenizers JSON file; throws TokenizerError with a one-line message naming the file and the
  // unsupported part ("clip.json: normalizer type 'BertNormalizer' is not supported").
  static Tokenizer from_file(const std::string& path);
  // The same from the JSON text; `name` is used in error messages in place of the file name.
  static Tokenizer from_json(const std::string& json_text, const std::string& name);

  // Full encoding with the post-processor's special tokens, no truncation/padding.
  // Throws TokenizerError on invalid UTF-8.
  std::vector<int64_t> encode(const std::string& utf8_text) const;
  // Truncated to max_length (special tokens included, as tokenizers' enable_truncation(max_length) does with a
  // post-processor) and padded to max_length with pad_id. `truncated` (if not null) gets how many tokens the full
  // encoding has beyond max_length (0 if none).
  std::vector<int64_t> encode_padded(const std::string& utf8_text, size_t max_length, int64_t pad_id,
                                     size_t* truncated) const;
  // tokenizers' get_vocab_size() (with added tokens).
  size_t vocab_size() const;

  struct Impl;

 private:
  explicit Tokenizer(std::shared_ptr<const Impl> impl);
  std::shared_ptr<const Impl> impl_;
};

}  // namespace seer
