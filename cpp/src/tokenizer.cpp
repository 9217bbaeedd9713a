// Implementation of seer::Tokenizer: a re-implementation, from the documented behaviour of the Hugging Face
// `tokenizers` library (checked against its outputs), of the encode path for the components listed in tokenizer.h.
//
// The pipeline is the library's: split the text on added tokens that are matched before normalization, normalize
// each remaining segment, split it on added tokens matched after normalization, pre-tokenize, run the model on each
// pre-token, then add the post-processor's special tokens.
//
// Offsets: like the library, a normalized string keeps, for each of its bytes, the offset in the input text of the
// character it came from. Ids never depend on them, except in one place: Metaspace with prepend_scheme "first"
// prepends only to a piece that starts at offset 0 of the input text.
//
// Regular expressions: the library compiles Split/Replace patterns with Oniguruma (Ruby syntax), the ones of its
// own pre-tokenizers with Rust's regex crate. Both are translated here to ICU regular expressions with the same
// meaning for the classes that differ (\w, \s, \d, \h), with ^/$ matching at line breaks (\n only) and '.' not
// matching \n, as in Oniguruma; matches are iterated as the onig crate iterates them (an empty match right after
// the previous match is skipped).
#include "tokenizer.h"

#include <unicode/brkiter.h>
#include <unicode/locid.h>
#include <unicode/normalizer2.h>
#include <unicode/regex.h>
#include <unicode/uchar.h>
#include <unicode/uniset.h>
#include <unicode/unistr.h>
#include <unicode/ustring.h>
#include <unicode/utf16.h>

#include <algorithm>
#include <cctype>
#include <fstream>
#include <limits>
#include <map>
#include <optional>
#include <queue>
#include <sstream>
#include <string_view>
#include <unordered_map>
#include <utility>

#include <nlohmann/json.hpp>

namespace seer {
namespace {

using json = nlohmann::json;

// ------------------------------------------------------------------------------------------------ UTF-8

bool valid_utf8(std::string_view s) {
  size_t i = 0;
  const size_t n = s.size();
  while (i < n) {
    const auto b = static_cast<unsigned char>(s[i]);
    if (b < 0x80) {
      ++i;
      continue;
    }
    size_t len;
    char32_t cp;
    if (b >= 0xC2 && b <= 0xDF) {
      len = 2;
      cp = b & 0x1F;
    } else if (b >= 0xE0 && b <= 0xEF) {
      len = 3;
      cp = b & 0x0F;
    } else if (b >= 0xF0 && b <= 0xF4) {
      len = 4;
      cp = b & 0x07;
    } else {
      return false;
    }
    if (i + len > n) return false;
    for (size_t k = 1; k < len; ++k) {
      const auto c = static_cast<unsigned char>(s[i + k]);
      if ((c & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (c & 0x3F);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
        (cp >= 0xD800 && cp <= 0xDFFF))
      return false;
    i += len;
  }
  return true;
}

// Length of the UTF-8 sequence starting with byte b (input already validated).
inline size_t u8len(unsigned char b) { return b < 0x80 ? 1 : b < 0xE0 ? 2 : b < 0xF0 ? 3 : 4; }

// Decodes the code point at byte i of valid UTF-8 text; *len gets its length.
inline char32_t decode_at(std::string_view s, size_t i, size_t* len) {
  const auto b = static_cast<unsigned char>(s[i]);
  const size_t l = u8len(b);
  *len = l;
  if (l == 1) return b;
  char32_t cp = b & (l == 2 ? 0x1F : l == 3 ? 0x0F : 0x07);
  for (size_t k = 1; k < l; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
  return cp;
}

void append_utf8(std::string& out, char32_t c) {
  if (c < 0x80) {
    out += static_cast<char>(c);
  } else if (c < 0x800) {
    out += static_cast<char>(0xC0 | (c >> 6));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else if (c < 0x10000) {
    out += static_cast<char>(0xE0 | (c >> 12));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (c >> 18));
    out += static_cast<char>(0x80 | ((c >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  }
}

std::u32string to_u32(std::string_view s) {
  std::u32string out;
  out.reserve(s.size());
  for (size_t i = 0, l; i < s.size(); i += l) out += decode_at(s, i, &l);
  return out;
}

std::u32string to_u32(const icu::UnicodeString& u) {
  std::u32string out;
  for (int32_t i = 0; i < u.length();) {
    const UChar32 c = u.char32At(i);
    out += static_cast<char32_t>(c);
    i += U16_LENGTH(c);
  }
  return out;
}

size_t count_chars(std::string_view s) {
  size_t n = 0;
  for (size_t i = 0; i < s.size(); i += u8len(static_cast<unsigned char>(s[i]))) ++n;
  return n;
}

// UTF-16 copy of valid UTF-8 text with, for each UTF-16 index (and the end), the byte offset in the UTF-8 text.
struct U16Text {
  icu::UnicodeString u;
  std::vector<size_t> to8;
  explicit U16Text(std::string_view s) {
    u = icu::UnicodeString::fromUTF8(icu::StringPiece(s.data(), static_cast<int32_t>(s.size())));
    to8.reserve(static_cast<size_t>(u.length()) + 1);
    for (size_t i = 0, l; i < s.size(); i += l) {
      const char32_t c = decode_at(s, i, &l);
      to8.push_back(i);
      if (c > 0xFFFF) to8.push_back(i);
    }
    to8.push_back(s.size());
  }
};

// ------------------------------------------------------------------------------------------------ Unicode classes

inline bool is_whitespace(char32_t c) { return u_hasBinaryProperty(static_cast<UChar32>(c), UCHAR_WHITE_SPACE); }

// Rust regex's \w (Unicode): Alphabetic, M, Nd, Pc, Join_Control.
inline bool is_rust_word(char32_t c) {
  const auto cp = static_cast<UChar32>(c);
  return u_hasBinaryProperty(cp, UCHAR_ALPHABETIC) || (U_GET_GC_MASK(cp) & (U_GC_M_MASK | U_GC_ND_MASK | U_GC_PC_MASK)) ||
         u_hasBinaryProperty(cp, UCHAR_JOIN_CONTROL);
}

// Rust's char::is_numeric: Nd, Nl, No.
inline bool is_numeric(char32_t c) { return U_GET_GC_MASK(static_cast<UChar32>(c)) & U_GC_N_MASK; }

// ASCII punctuation or a Unicode P* character (the library's BertPreTokenizer/Punctuation test). The library's
// table (the unicode_categories crate) is Unicode 8.0's: P* characters assigned since then are not punctuation
// there, and two characters that were P* in 8.0 have changed category since.
inline bool is_punctuation(char32_t c) {
  if (c < 0x80) return (c >= 0x21 && c <= 0x2F) || (c >= 0x3A && c <= 0x40) || (c >= 0x5B && c <= 0x60) || (c >= 0x7B && c <= 0x7E);
  const auto cp = static_cast<UChar32>(c);
  if (cp == 0x166D || cp == 0x111C9) return true;
  if (!(U_GET_GC_MASK(cp) & U_GC_P_MASK)) return false;
  UVersionInfo age;
  u_charAge(cp, age);
  return age[0] < 9;
}

// ------------------------------------------------------------------------------------------------ normalized string

// A piece of (normalized) text: `al` holds, for each byte of `s`, the offset in the input text of the character it
// comes from; `shift` is the offset in the input text where this piece starts (the library's original_shift).
struct NormStr {
  std::string s;
  std::vector<size_t> al;
  size_t shift = 0;
};

NormStr norm_identity(std::string text, size_t base) {
  NormStr n;
  n.al.resize(text.size());
  for (size_t i = 0, l; i < text.size(); i += l) {  // every byte of a character is aligned to the character
    l = u8len(static_cast<unsigned char>(text[i]));
    for (size_t k = 0; k < l; ++k) n.al[i + k] = base + i;
  }
  n.s = std::move(text);
  n.shift = base;
  return n;
}

NormStr slice(const NormStr& n, size_t a, size_t b) {
  NormStr r;
  r.s = n.s.substr(a, b - a);
  r.al.assign(n.al.begin() + static_cast<std::ptrdiff_t>(a), n.al.begin() + static_cast<std::ptrdiff_t>(b));
  r.shift = a < b ? n.al[a] : n.shift + a;
  return r;
}

// (new character, change): 0 replaces the next character, > 0 inserts, < 0 replaces the next one and removes -change
// following ones. This is the library's transform(); only the alignment bookkeeping depends on the changes.
using Dest = std::vector<std::pair<char32_t, long>>;

void transform(NormStr& n, const Dest& dest, size_t initial_offset) {
  std::vector<size_t> starts;
  for (size_t i = 0; i < n.s.size(); i += u8len(static_cast<unsigned char>(n.s[i]))) starts.push_back(i);
  const size_t nchars = starts.size();
  auto clen = [&](size_t ci) { return (ci + 1 < nchars ? starts[ci + 1] : n.s.size()) - starts[ci]; };
  auto align_at = [&](size_t idx) { return n.al.empty() ? n.shift : n.al[std::min(idx, n.al.size() - 1)]; };
  size_t ci = 0, offset = 0;
  for (; ci < initial_offset && ci < nchars; ++ci) offset += clen(ci);
  std::string out;
  std::vector<size_t> al;
  out.reserve(n.s.size());
  al.reserve(n.s.size());
  for (const auto& [c, change] : dest) {
    const size_t idx = offset;
    const size_t a = change > 0 ? (idx < 1 ? n.shift : align_at(idx - 1)) : align_at(idx);
    if (change <= 0 && ci < nchars) offset += clen(ci++);
    for (long k = 0; change < 0 && k < -change && ci < nchars; ++k) offset += clen(ci++);
    const size_t before = out.size();
    append_utf8(out, c);
    al.insert(al.end(), out.size() - before, a);
  }
  n.s = std::move(out);
  n.al = std::move(al);
}

// The changes for replacing `old_count` characters by `neu`, as the library's Precompiled normalizer computes them.
void dest_replace(Dest& d, size_t old_count, const std::u32string& neu) {
  const long diff = static_cast<long>(neu.size()) - static_cast<long>(old_count);
  for (char32_t c : neu) d.emplace_back(c, 0);
  if (diff > 0) {
    for (long k = 0; k < diff && k < static_cast<long>(d.size()); ++k) d[d.size() - 1 - static_cast<size_t>(k)].second = 1;
  } else if (diff < 0 && !d.empty()) {
    d.back().second += diff;
  }
}

void prepend(NormStr& n, const std::string& p) {
  if (n.s.empty()) return;
  const size_t a = n.al[0];
  n.s.insert(0, p);
  n.al.insert(n.al.begin(), p.size(), a);
}

// ------------------------------------------------------------------------------------------------ patterns

struct Span {
  size_t a, b;
  bool match;
};
using Spans = std::vector<Span>;
using Ranges = std::vector<std::pair<size_t, size_t>>;

// Covers the whole text with the matches and the gaps between them.
Spans spans_from_matches(size_t len, const Ranges& matches) {
  if (len == 0) return {{0, 0, false}};
  Spans out;
  size_t prev = 0;
  for (const auto& [s, e] : matches) {
    if (prev != s) out.push_back({prev, s, false});
    out.push_back({s, e, true});
    prev = e;
  }
  if (prev != len) out.push_back({prev, len, false});
  return out;
}

class Regex {
 public:
  Regex() = default;
  // pattern: ICU syntax. Throws std::runtime_error with ICU's error name.
  explicit Regex(const std::string& icu_pattern) {
    UErrorCode st = U_ZERO_ERROR;
    UParseError pe;
    pat_.reset(icu::RegexPattern::compile(icu::UnicodeString::fromUTF8(icu_pattern), UREGEX_MULTILINE | UREGEX_UNIX_LINES,
                                          pe, st));
    if (U_FAILURE(st)) throw std::runtime_error(u_errorName(st));
  }

  // The matches, iterated as the onig crate does: after a match ending at e, an empty match at e is skipped.
  Ranges find_all(std::string_view text) const {
    Ranges out;
    U16Text t(text);
    UErrorCode st = U_ZERO_ERROR;
    std::unique_ptr<icu::RegexMatcher> m(pat_->matcher(t.u, st));
    if (U_FAILURE(st)) throw TokenizerError(std::string("regex matcher: ") + u_errorName(st));
    const int64_t len = t.u.length();
    int64_t last_end = 0, last_match_end = -1;
    while (last_end <= len) {
      if (!m->find(last_end, st)) break;
      if (U_FAILURE(st)) break;
      const int64_t s = m->start64(st), e = m->end64(st);
      if (s == e && last_match_end == e) {
        if (last_end >= len) break;
        last_end += (U16_IS_LEAD(t.u[static_cast<int32_t>(last_end)]) && last_end + 1 < len &&
                     U16_IS_TRAIL(t.u[static_cast<int32_t>(last_end + 1)]))
                        ? 2
                        : 1;
        continue;
      }
      last_end = e;
      last_match_end = e;
      out.emplace_back(t.to8[static_cast<size_t>(s)], t.to8[static_cast<size_t>(e)]);
    }
    if (U_FAILURE(st)) throw TokenizerError(std::string("regex search failed: ") + u_errorName(st));
    return out;
  }

 private:
  std::shared_ptr<icu::RegexPattern> pat_;
};

// Oniguruma (Ruby syntax, UTF-8) pattern -> ICU pattern with the same classes.
std::string onig_to_icu(const std::string& p) {
  // Oniguruma's \w: Alphabetic, M, Nd, Pc, plus the Latin-1 No characters it counts as word characters.
  static const std::string w_in = "\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\u00B2\\u00B3\\u00B9\\u00BC-\\u00BE";
  std::string out;
  int depth = 0;
  bool class_first = false;
  for (size_t i = 0; i < p.size(); ++i) {
    const char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      const char n = p[++i];
      class_first = false;
      switch (n) {
        case 'w': out += depth ? w_in : "[" + w_in + "]"; break;
        case 'W': out += "[^" + w_in + "]"; break;
        case 's': out += "\\p{White_Space}"; break;
        case 'S': out += "\\P{White_Space}"; break;
        case 'd': out += "\\p{Nd}"; break;
        case 'D': out += "\\P{Nd}"; break;
        case 'b':  // word boundary on Oniguruma's \w (ICU's own \b skips combining marks)
          if (depth) out += "\\b";
          else out += "(?:(?<=[" + w_in + "])(?![" + w_in + "])|(?<![" + w_in + "])(?=[" + w_in + "]))";
          break;
        case 'B':
          if (depth) out += "\\B";
          else out += "(?:(?<=[" + w_in + "])(?=[" + w_in + "])|(?<![" + w_in + "])(?![" + w_in + "]))";
          break;
        case 'h': out += depth ? "0-9a-fA-F" : "[0-9a-fA-F]"; break;
        case 'H': out += "[^0-9a-fA-F]"; break;
        case 'K': throw std::runtime_error("\\K is not supported");
        case 'p':
        case 'P':  // \p{^X} is Oniguruma's negation
          if (i + 2 < p.size() && p[i + 1] == '{' && p[i + 2] == '^' && p.find('}', i + 3) != std::string::npos) {
            const size_t e = p.find('}', i + 3);
            out += n == 'p' ? "\\P{" : "\\p{";
            out += p.substr(i + 3, e - i - 2);
            i = e;
            continue;
          } else {
            out += '\\';
            out += n;
          }
          break;
        default: out += '\\'; out += n;
      }
      if ((n == 'p' || n == 'P' || n == 'x' || n == 'N') && i + 1 < p.size() && p[i + 1] == '{') {
        const size_t e = p.find('}', i + 1);  // \p{..}, \x{..}: copied as they are
        if (e != std::string::npos) {
          out += p.substr(i + 1, e - i);
          i = e;
        }
      }
      class_first = false;
      continue;
    }
    if (c == '[') {
      if (depth > 0 && i + 1 < p.size() && p[i + 1] == ':') {  // POSIX bracket [:alpha:]
        const size_t e = p.find(":]", i + 2);
        if (e != std::string::npos) {
          out += p.substr(i, e + 2 - i);
          i = e + 1;
          class_first = false;
          continue;
        }
      }
      ++depth;
      out += c;
      if (i + 1 < p.size() && p[i + 1] == '^') out += p[++i];
      class_first = true;
      continue;
    }
    if (c == ']' && depth > 0) {
      if (class_first) {
        out += "\\]";
      } else {
        --depth;
        out += c;
      }
      class_first = false;
      continue;
    }
    class_first = false;
    if (depth == 0 && c == '(' && i + 2 < p.size() && p[i + 1] == '?') {  // inline options: Ruby's m is ICU's s
      size_t e = i + 2;
      while (e < p.size() && std::string_view("imx-").find(p[e]) != std::string_view::npos) ++e;
      if (e > i + 2 && e < p.size() && (p[e] == ')' || p[e] == ':')) {
        // Ruby's m is "dot matches newline"; ICU's equivalent (s) also makes '.' match "\r\n" as one character.
        const size_t m = p.find('m', i + 2), minus = p.find('-', i + 2);
        if (m < e && m < minus) throw std::runtime_error("the inline option m is not supported");
        out += "(?";
        for (size_t k = i + 2; k < e; ++k) out += p[k];
        i = e - 1;
        continue;
      }
    }
    if (depth == 0 && (c == '{' || c == '}')) {  // a brace that is not an interval is a literal in Oniguruma
      if (c == '{') {
        size_t e = i + 1, digits1 = 0, digits2 = 0;
        bool comma = false;
        while (e < p.size() && std::isdigit(static_cast<unsigned char>(p[e]))) ++e, ++digits1;
        if (e < p.size() && p[e] == ',') {
          comma = true;
          ++e;
          while (e < p.size() && std::isdigit(static_cast<unsigned char>(p[e]))) ++e, ++digits2;
        }
        if (e < p.size() && p[e] == '}' && (digits1 > 0 || (comma && digits2 > 0))) {
          out += digits1 == 0 ? "{0" + p.substr(i + 1, e - i) : p.substr(i, e - i + 1);  // {,n} is {0,n}
          i = e;
          continue;
        }
      }
      out += '\\';
      out += c;
      continue;
    }
    out += c;
  }
  return out;
}

// A Split/Replace pattern: a literal string or an (Oniguruma) regex.
struct Pattern {
  bool literal = true;
  std::string lit;
  Regex re;

  Ranges find_all(std::string_view text) const {
    if (!literal) return re.find_all(text);
    Ranges out;
    if (lit.empty()) {  // matches the empty string at every character boundary
      for (size_t i = 0; i <= text.size(); i += (i < text.size() ? u8len(static_cast<unsigned char>(text[i])) : 1))
        out.emplace_back(i, i);
      return out;
    }
    for (size_t pos = 0; (pos = text.find(lit, pos)) != std::string_view::npos; pos += lit.size())
      out.emplace_back(pos, pos + lit.size());
    return out;
  }
  Spans find_matches(std::string_view text) const { return spans_from_matches(text.size(), find_all(text)); }
};

template <class Pred>
Spans char_matches(std::string_view text, Pred pred) {
  if (text.empty()) return {{0, 0, false}};
  Spans out;
  size_t last = 0;
  for (size_t i = 0, l; i < text.size(); i += l) {
    const char32_t c = decode_at(text, i, &l);
    if (pred(c)) {
      if (last < i) out.push_back({last, i, false});
      out.push_back({i, i + l, true});
      last = i + l;
    }
  }
  if (text.size() > last) out.push_back({last, text.size(), false});
  return out;
}

enum class Behavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };

// The library's NormalizedString::split: the pieces to keep (empty ones included; callers drop them).
std::vector<NormStr> split_norm(const NormStr& n, const Spans& matches, Behavior behavior) {
  std::vector<std::pair<std::pair<size_t, size_t>, bool>> splits;  // ((a, b), remove)
  switch (behavior) {
    case Behavior::Isolated:
      for (const auto& m : matches) splits.push_back({{m.a, m.b}, false});
      break;
    case Behavior::Removed:
      for (const auto& m : matches) splits.push_back({{m.a, m.b}, m.match});
      break;
    case Behavior::Contiguous: {
      bool prev = false;
      for (const auto& m : matches) {
        if (m.match == prev && !splits.empty()) splits.back().first.second = m.b;
        else splits.push_back({{m.a, m.b}, false});
        prev = m.match;
      }
      break;
    }
    case Behavior::MergedWithPrevious: {
      bool prev = false;
      for (const auto& m : matches) {
        if (m.match && !prev && !splits.empty()) splits.back().first.second = m.b;
        else splits.push_back({{m.a, m.b}, false});
        prev = m.match;
      }
      break;
    }
    case Behavior::MergedWithNext: {
      bool prev = false;
      for (auto it = matches.rbegin(); it != matches.rend(); ++it) {
        if (it->match && !prev && !splits.empty()) splits.back().first.first = it->a;
        else splits.push_back({{it->a, it->b}, false});
        prev = it->match;
      }
      std::reverse(splits.begin(), splits.end());
      break;
    }
  }
  std::vector<NormStr> out;
  for (const auto& [r, remove] : splits)
    if (!remove) out.push_back(slice(n, r.first, r.second));
  return out;
}

// ------------------------------------------------------------------------------------------------ normalizers

struct Normalizer {
  virtual ~Normalizer() = default;
  virtual void normalize(NormStr& n) const = 0;
};

struct SequenceNormalizer : Normalizer {
  std::vector<std::unique_ptr<Normalizer>> items;
  void normalize(NormStr& n) const override {
    for (const auto& it : items) it->normalize(n);
  }
};

// The characters of Unicode 9.0: the library's normalization tables (the unicode-normalization-alignments crate)
// and its combining-mark table are Unicode 9.0's; a character assigned later is neither decomposed nor composed
// there and acts as a starter, which is what ICU's FilteredNormalizer2 does with the characters outside this set.
const icu::UnicodeSet& unicode9() {
  static const icu::UnicodeSet* set = [] {
    UErrorCode st = U_ZERO_ERROR;
    auto* s = new icu::UnicodeSet(icu::UnicodeString("[:age=9.0:]"), st);
    if (U_FAILURE(st)) throw std::runtime_error(std::string("ICU age set: ") + u_errorName(st));
    s->freeze();
    return s;
  }();
  return *set;
}

struct UnicodeNormalizer : Normalizer {
  std::unique_ptr<icu::FilteredNormalizer2> filtered;
  const icu::Normalizer2* norm = nullptr;
  explicit UnicodeNormalizer(const std::string& kind) {
    UErrorCode st = U_ZERO_ERROR;
    const icu::Normalizer2* base;
    if (kind == "NFC") base = icu::Normalizer2::getNFCInstance(st);
    else if (kind == "NFD") base = icu::Normalizer2::getNFDInstance(st);
    else if (kind == "NFKC") base = icu::Normalizer2::getNFKCInstance(st);
    else base = icu::Normalizer2::getNFKDInstance(st);
    if (U_FAILURE(st)) throw std::runtime_error(std::string("ICU normalizer ") + kind + ": " + u_errorName(st));
    filtered = std::make_unique<icu::FilteredNormalizer2>(*base, unicode9());
    norm = filtered.get();
  }
  void normalize(NormStr& n) const override {
    UErrorCode st = U_ZERO_ERROR;
    const icu::UnicodeString whole = icu::UnicodeString::fromUTF8(n.s);
    if (norm->isNormalized(whole, st) && U_SUCCESS(st)) return;
    // Normalize chunk by chunk (boundaries where the normalizer has one) so each output character can be aligned
    // to the input characters it comes from.
    Dest d;
    const std::u32string chars = to_u32(n.s);
    size_t i = 0;
    while (i < chars.size()) {
      size_t j = i + 1;
      while (j < chars.size() && !norm->hasBoundaryBefore(static_cast<UChar32>(chars[j]))) ++j;
      icu::UnicodeString chunk;
      for (size_t k = i; k < j; ++k) chunk.append(static_cast<UChar32>(chars[k]));
      st = U_ZERO_ERROR;
      const icu::UnicodeString outc = norm->normalize(chunk, st);
      if (U_FAILURE(st)) throw TokenizerError(std::string("unicode normalization failed: ") + u_errorName(st));
      dest_replace(d, j - i, to_u32(outc));
      i = j;
    }
    transform(n, d, 0);
  }
};

struct LowercaseNormalizer : Normalizer {
  // Rust's char::to_lowercase, character by character (full mappings, no context: 'Σ' is always 'σ').
  void normalize(NormStr& n) const override {
    std::string out;
    std::vector<size_t> al;
    out.reserve(n.s.size());
    al.reserve(n.s.size());
    for (size_t i = 0, l; i < n.s.size(); i += l) {
      const char32_t c = decode_at(n.s, i, &l);
      const size_t before = out.size();
      if (c < 0x80) {
        out += static_cast<char>(c >= 'A' && c <= 'Z' ? c + 32 : c);
      } else {
        UChar src[2];
        int32_t sl = 0;
        U16_APPEND_UNSAFE(src, sl, static_cast<UChar32>(c));
        UChar dst[16];
        UErrorCode st = U_ZERO_ERROR;
        const int32_t dl = u_strToLower(dst, 16, src, sl, "", &st);
        if (U_FAILURE(st)) {
          append_utf8(out, c);
        } else {
          for (int32_t k = 0; k < dl;) {
            UChar32 lc;
            U16_NEXT(dst, k, dl, lc);
            append_utf8(out, static_cast<char32_t>(lc));
          }
        }
      }
      al.insert(al.end(), out.size() - before, n.al[i]);
    }
    n.s = std::move(out);
    n.al = std::move(al);
  }
};

struct ReplaceNormalizer : Normalizer {
  Pattern pattern;
  std::string content;
  void normalize(NormStr& n) const override {
    if (n.s.empty()) return;  // the library finds no match in an empty string, not even an empty one
    const Ranges matches = pattern.find_all(n.s);
    if (matches.empty()) return;
    std::string out;
    std::vector<size_t> al;
    size_t last = 0;
    for (const auto& [s, e] : matches) {
      out.append(n.s, last, s - last);
      al.insert(al.end(), n.al.begin() + static_cast<std::ptrdiff_t>(last), n.al.begin() + static_cast<std::ptrdiff_t>(s));
      // Inserted characters share the alignment of the last replaced byte (or the piece start).
      const size_t a = e < 1 ? n.shift : n.al[e - 1];
      out += content;
      al.insert(al.end(), content.size(), a);
      last = e;
    }
    out.append(n.s, last, std::string::npos);
    al.insert(al.end(), n.al.begin() + static_cast<std::ptrdiff_t>(last), n.al.end());
    n.s = std::move(out);
    n.al = std::move(al);
  }
};

struct StripNormalizer : Normalizer {
  bool left = true, right = true;
  void normalize(NormStr& n) const override {
    size_t a = 0, b = n.s.size();
    if (left) {
      for (size_t l; a < b; a += l)
        if (!is_whitespace(decode_at(n.s, a, &l))) break;
    }
    if (right) {
      while (b > a) {
        size_t p = b - 1;
        while (p > a && (static_cast<unsigned char>(n.s[p]) & 0xC0) == 0x80) --p;
        size_t l;
        if (!is_whitespace(decode_at(n.s, p, &l))) break;
        b = p;
      }
    }
    if (a == 0 && b == n.s.size()) return;
    n.s = n.s.substr(a, b - a);
    n.al.assign(n.al.begin() + static_cast<std::ptrdiff_t>(a), n.al.begin() + static_cast<std::ptrdiff_t>(b));
  }
};

struct PrependNormalizer : Normalizer {
  std::string text;
  void normalize(NormStr& n) const override { prepend(n, text); }
};

template <class Keep, class Map>
void filter_map(NormStr& n, Keep keep, Map map) {
  std::string out;
  std::vector<size_t> al;
  for (size_t i = 0, l; i < n.s.size(); i += l) {
    const char32_t c = decode_at(n.s, i, &l);
    if (!keep(c)) continue;
    const size_t before = out.size();
    append_utf8(out, map(c));
    al.insert(al.end(), out.size() - before, n.al[i]);
  }
  n.s = std::move(out);
  n.al = std::move(al);
}

// Removes the combining marks (M*) of Unicode 9.0, the library's table: U+1CF2 and U+1CF3 were marks then,
// U+111C9 was not.
inline bool is_combining_mark9(char32_t c) {
  const auto cp = static_cast<UChar32>(c);
  if (cp == 0x1CF2 || cp == 0x1CF3) return true;
  if (cp == 0x111C9) return false;
  return (U_GET_GC_MASK(cp) & U_GC_M_MASK) && unicode9().contains(cp);
}

struct StripAccentsNormalizer : Normalizer {
  void normalize(NormStr& n) const override {
    filter_map(n, [](char32_t c) { return !is_combining_mark9(c); }, [](char32_t c) { return c; });
  }
};

struct NmtNormalizer : Normalizer {
  void normalize(NormStr& n) const override {
    filter_map(
        n,
        [](char32_t c) {
          return !((c >= 0x01 && c <= 0x08) || c == 0x0B || (c >= 0x0E && c <= 0x1F) || c == 0x7F || c == 0x8F ||
                   c == 0x9F);
        },
        [](char32_t c) -> char32_t {
          switch (c) {
            case 0x09: case 0x0A: case 0x0C: case 0x0D: case 0x1680: case 0x2028: case 0x2029: case 0x2581:
            case 0xFEFF: case 0xFFFD:
              return ' ';
            default:
              return (c >= 0x200B && c <= 0x200F) ? U' ' : c;
          }
        });
  }
};

// GPT-2's byte -> printable character table.
const std::vector<char32_t>& bytes_char() {
  static const std::vector<char32_t> table = [] {
    std::vector<char32_t> t(256, 0);
    std::vector<bool> direct(256, false);
    for (int b = '!'; b <= '~'; ++b) direct[b] = true;
    for (int b = 0xA1; b <= 0xAC; ++b) direct[b] = true;
    for (int b = 0xAE; b <= 0xFF; ++b) direct[b] = true;
    char32_t n = 0;
    for (int b = 0; b < 256; ++b) t[b] = direct[b] ? static_cast<char32_t>(b) : 256 + n++;
    return t;
  }();
  return table;
}

void byte_level_map(NormStr& n) {
  const auto& table = bytes_char();
  Dest d;
  d.reserve(n.s.size());
  for (size_t i = 0, l; i < n.s.size(); i += l) {
    l = u8len(static_cast<unsigned char>(n.s[i]));
    for (size_t k = 0; k < l; ++k) d.emplace_back(table[static_cast<unsigned char>(n.s[i + k])], k > 0 ? 1 : 0);
  }
  transform(n, d, 0);
}

struct ByteLevelNormalizer : Normalizer {
  void normalize(NormStr& n) const override { byte_level_map(n); }
};

// sentencepiece's precompiled charsmap: [u32 trie size in bytes][double-array trie units][NUL-separated strings].
struct PrecompiledNormalizer : Normalizer {
  std::vector<uint32_t> trie;
  std::string normalized;

  // The replacement of the shortest prefix of `chunk` in the trie (the library uses the first prefix match).
  std::optional<std::string_view> transform_chunk(std::string_view chunk) const {
    if (trie.empty()) return std::nullopt;
    auto offset = [](uint32_t u) -> size_t { return (u >> 10) << ((u & (1u << 9)) >> 6); };
    size_t node = offset(trie[0]);
    for (unsigned char c : chunk) {
      if (c == 0) break;
      node ^= c;
      if (node >= trie.size()) return std::nullopt;
      const uint32_t unit = trie[node];
      if ((unit & ((1u << 31) | 0xFFu)) != c) return std::nullopt;
      node ^= offset(unit);
      if ((unit >> 8) & 1) {
        if (node >= trie.size()) return std::nullopt;
        const size_t index = trie[node] & ((1u << 31) - 1);
        if (index > normalized.size()) return std::nullopt;
        if (index < normalized.size() && (static_cast<unsigned char>(normalized[index]) & 0xC0) == 0x80) return std::nullopt;
        size_t end = normalized.find('\0', index);
        if (end == std::string::npos) end = normalized.size();
        return std::string_view(normalized).substr(index, end - index);
      }
    }
    return std::nullopt;
  }

  void normalize(NormStr& n) const override {
    if (n.s.empty()) return;
    // Extended grapheme clusters: one shorter than 6 bytes is looked up whole, otherwise character by character.
    U16Text t(n.s);
    UErrorCode st = U_ZERO_ERROR;
    std::unique_ptr<icu::BreakIterator> bi(icu::BreakIterator::createCharacterInstance(icu::Locale::getRoot(), st));
    if (U_FAILURE(st)) throw TokenizerError(std::string("ICU grapheme iterator: ") + u_errorName(st));
    bi->setText(t.u);
    Dest d;
    bool modified = false;
    int32_t start = bi->first();
    for (int32_t end = bi->next(); end != icu::BreakIterator::DONE; start = end, end = bi->next()) {
      const size_t a = t.to8[static_cast<size_t>(start)], b = t.to8[static_cast<size_t>(end)];
      const std::string_view g = std::string_view(n.s).substr(a, b - a);
      if (g.size() < 6) {
        if (auto r = transform_chunk(g)) {
          modified = true;
          dest_replace(d, count_chars(g), to_u32(*r));
          continue;
        }
      }
      for (size_t i = 0, l; i < g.size(); i += l) {
        const char32_t c = decode_at(g, i, &l);
        if (auto r = transform_chunk(g.substr(i, l))) {
          modified = true;
          dest_replace(d, 1, to_u32(*r));
        } else {
          d.emplace_back(c, 0);
        }
      }
    }
    if (modified) transform(n, d, 0);
  }
};

// ------------------------------------------------------------------------------------------------ pre-tokenizers

struct Piece {
  NormStr n;
  int64_t id = -1;  // >= 0: an added token, left alone by the pre-tokenizers and the model
};
using Pieces = std::vector<Piece>;

template <class F>
void split_pieces(Pieces& pieces, F fn) {
  Pieces out;
  out.reserve(pieces.size());
  for (auto& p : pieces) {
    if (p.id >= 0) {
      out.push_back(std::move(p));
      continue;
    }
    for (auto& n : fn(p.n))
      if (!n.s.empty()) out.push_back(Piece{std::move(n), -1});
  }
  pieces = std::move(out);
}

struct PreTokenizer {
  virtual ~PreTokenizer() = default;
  virtual void apply(Pieces& pieces) const = 0;
};

struct SequencePreTokenizer : PreTokenizer {
  std::vector<std::unique_ptr<PreTokenizer>> items;
  void apply(Pieces& pieces) const override {
    for (const auto& it : items) it->apply(pieces);
  }
};

struct SplitPreTokenizer : PreTokenizer {
  Pattern pattern;
  Behavior behavior = Behavior::Removed;
  bool invert = false;
  void apply(Pieces& pieces) const override {
    split_pieces(pieces, [&](NormStr& n) {
      Spans m = pattern.find_matches(n.s);
      if (invert)
        for (auto& s : m) s.match = !s.match;
      return split_norm(n, m, behavior);
    });
  }
};

struct CharSplitPreTokenizer : PreTokenizer {  // WhitespaceSplit, CharDelimiterSplit, Punctuation, Digits
  enum Kind { Whitespace, Delimiter, Punctuation, Digits } kind = Whitespace;
  char32_t delimiter = 0;
  Behavior behavior = Behavior::Removed;
  void apply(Pieces& pieces) const override {
    split_pieces(pieces, [&](NormStr& n) {
      Spans m;
      switch (kind) {
        case Whitespace: m = char_matches(n.s, is_whitespace); break;
        case Delimiter: m = char_matches(n.s, [&](char32_t c) { return c == delimiter; }); break;
        case Punctuation: m = char_matches(n.s, is_punctuation); break;
        case Digits: m = char_matches(n.s, is_numeric); break;
      }
      return split_norm(n, m, behavior);
    });
  }
};

struct BertPreTokenizer : PreTokenizer {
  void apply(Pieces& pieces) const override {
    split_pieces(pieces, [](NormStr& n) { return split_norm(n, char_matches(n.s, is_whitespace), Behavior::Removed); });
    split_pieces(pieces, [](NormStr& n) { return split_norm(n, char_matches(n.s, is_punctuation), Behavior::Isolated); });
  }
};

struct WhitespacePreTokenizer : PreTokenizer {
  Regex re{"[\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\p{Join_Control}]+|"
           "[^\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\p{Join_Control}\\p{White_Space}]+"};
  void apply(Pieces& pieces) const override {
    split_pieces(pieces, [&](NormStr& n) {
      Spans m = spans_from_matches(n.s.size(), re.find_all(n.s));
      for (auto& s : m) s.match = !s.match;
      return split_norm(n, m, Behavior::Removed);
    });
  }
};

struct ByteLevelPreTokenizer : PreTokenizer {
  bool add_prefix_space = true;
  bool use_regex = true;
  Regex re{onig_to_icu("'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+")};
  void apply(Pieces& pieces) const override {
    split_pieces(pieces, [&](NormStr& n) {
      if (add_prefix_space && (n.s.empty() || n.s[0] != ' ')) prepend(n, " ");
      if (!use_regex) return std::vector<NormStr>{n};
      return split_norm(n, spans_from_matches(n.s.size(), re.find_all(n.s)), Behavior::Isolated);
    });
    for (auto& p : pieces)
      if (p.id < 0) byte_level_map(p.n);
  }
};

struct MetaspacePreTokenizer : PreTokenizer {
  char32_t replacement = U'\u2581';
  std::string rep;
  enum Scheme { Always, First, Never } scheme = Always;
  bool split = true;
  void apply(Pieces& pieces) const override {
    split_pieces(pieces, [&](NormStr& n) {
      if (n.s.find(' ') != std::string::npos) {  // replace ' ' by the replacement
        std::string out;
        std::vector<size_t> al;
        for (size_t i = 0; i < n.s.size(); ++i) {
          if (n.s[i] == ' ') {
            out += rep;
            al.insert(al.end(), rep.size(), n.al[i]);
          } else {
            out += n.s[i];
            al.push_back(n.al[i]);
          }
        }
        n.s = std::move(out);
        n.al = std::move(al);
      }
      const bool starts = n.s.compare(0, rep.size(), rep) == 0;
      if ((scheme == Always && !starts) || (scheme == First && !starts && n.shift == 0)) prepend(n, rep);
      if (!split) return std::vector<NormStr>{n};
      return split_norm(n, char_matches(n.s, [&](char32_t c) { return c == replacement; }), Behavior::MergedWithNext);
    });
  }
};

// ------------------------------------------------------------------------------------------------ models

struct Model {
  virtual ~Model() = default;
  virtual void tokenize(const std::string& s, std::vector<int64_t>& out) const = 0;
  virtual std::optional<int64_t> token_to_id(const std::string& token) const = 0;
  virtual size_t size() const = 0;
};

std::string byte_token(unsigned char b) {
  static const char* hex = "0123456789ABCDEF";
  std::string t = "<0x";
  t += hex[b >> 4];
  t += hex[b & 15];
  t += '>';
  return t;
}

struct BpeModel : Model {
  std::unordered_map<std::string, int64_t> vocab;
  std::unordered_map<uint64_t, std::pair<uint32_t, uint32_t>> merges;  // (left, right) -> (rank, new id)
  std::optional<std::string> unk, prefix, suffix;
  bool fuse_unk = false, byte_fallback = false, ignore_merges = false;
  std::string name;

  static uint64_t key(uint32_t a, uint32_t b) { return (static_cast<uint64_t>(a) << 32) | b; }

  std::optional<int64_t> token_to_id(const std::string& t) const override {
    auto it = vocab.find(t);
    if (it == vocab.end()) return std::nullopt;
    return it->second;
  }
  size_t size() const override { return vocab.size(); }

  struct Sym {
    uint32_t c;
    long prev, next;
    size_t len;
  };

  void tokenize(const std::string& w, std::vector<int64_t>& out) const override {
    if (w.empty()) return;
    if (ignore_merges) {
      auto it = vocab.find(w);
      if (it != vocab.end()) {
        out.push_back(it->second);
        return;
      }
    }
    std::vector<Sym> syms;
    auto add = [&](uint32_t c, size_t len) {
      const long n = static_cast<long>(syms.size());
      if (!syms.empty()) syms.back().next = n;
      syms.push_back({c, n - 1, -1, len});
    };
    auto unk_id = [&]() -> uint32_t {
      auto it = vocab.find(*unk);
      if (it == vocab.end()) throw TokenizerError(name + ": unk token '" + *unk + "' is not in the vocabulary");
      return static_cast<uint32_t>(it->second);
    };
    bool has_unk = false;  // an unknown run waiting to be added: (unk_pending_id, unk_pending_len)
    uint32_t unk_pending_id = 0;
    size_t unk_pending_len = 0;
    std::string s;
    for (size_t i = 0, l; i < w.size(); i += l) {
      l = u8len(static_cast<unsigned char>(w[i]));
      const bool first = i == 0, last = i + l >= w.size();
      s.clear();
      if (!first && prefix) s += *prefix;
      s.append(w, i, l);
      if (last && suffix) s += *suffix;
      auto it = vocab.find(s);
      if (it != vocab.end()) {
        if (has_unk) {
          add(unk_pending_id, unk_pending_len);
          has_unk = false;
        }
        add(static_cast<uint32_t>(it->second), l);
        continue;
      }
      if (byte_fallback) {
        std::vector<uint32_t> ids;
        for (unsigned char b : s) {
          auto bt = vocab.find(byte_token(b));
          if (bt == vocab.end()) break;
          ids.push_back(static_cast<uint32_t>(bt->second));
        }
        if (ids.size() == s.size()) {
          for (uint32_t id : ids) add(id, 1);
          continue;
        }
      }
      if (unk) {
        if (has_unk && fuse_unk) {
          unk_pending_len += l;
        } else {
          if (has_unk) add(unk_pending_id, unk_pending_len);
          unk_pending_id = unk_id();
          unk_pending_len = l;
          has_unk = true;
        }
      }
    }
    if (has_unk) add(unk_pending_id, unk_pending_len);

    struct Merge {
      size_t pos;
      uint32_t rank, new_id;
    };
    auto worse = [](const Merge& x, const Merge& y) { return x.rank != y.rank ? x.rank > y.rank : x.pos > y.pos; };
    std::priority_queue<Merge, std::vector<Merge>, decltype(worse)> queue(worse);
    for (size_t i = 0; i + 1 < syms.size(); ++i) {
      auto m = merges.find(key(syms[i].c, syms[i + 1].c));
      if (m != merges.end()) queue.push({i, m->second.first, m->second.second});
    }
    while (!queue.empty()) {
      const Merge top = queue.top();
      queue.pop();
      Sym& cur = syms[top.pos];
      if (cur.len == 0 || cur.next == -1) continue;
      const size_t next_pos = static_cast<size_t>(cur.next);
      const Sym right = syms[next_pos];
      auto m = merges.find(key(cur.c, right.c));
      if (m == merges.end() || m->second.second != top.new_id) continue;
      cur.c = top.new_id;
      cur.len += right.len;
      cur.next = right.next;
      syms[next_pos].len = 0;
      if (right.next > -1 && static_cast<size_t>(right.next) < syms.size()) syms[static_cast<size_t>(right.next)].prev = static_cast<long>(top.pos);
      if (cur.prev >= 0) {
        auto pm = merges.find(key(syms[static_cast<size_t>(cur.prev)].c, cur.c));
        if (pm != merges.end()) queue.push({static_cast<size_t>(cur.prev), pm->second.first, pm->second.second});
      }
      if (cur.next >= 0 && static_cast<size_t>(cur.next) < syms.size()) {
        auto nm = merges.find(key(cur.c, syms[static_cast<size_t>(cur.next)].c));
        if (nm != merges.end()) queue.push({top.pos, nm->second.first, nm->second.second});
      }
    }
    for (const auto& sym : syms)
      if (sym.len != 0) out.push_back(sym.c);
  }
};

struct UnigramModel : Model {
  std::vector<std::pair<std::string, double>> vocab;
  std::unordered_map<std::string, int64_t> ids;  // the last id of each piece, as the library's map keeps
  struct Node {
    std::vector<std::pair<unsigned char, int32_t>> kids;
    int64_t id = -1;
  };
  std::vector<Node> trie{1};
  double min_score = 0;
  std::optional<int64_t> unk_id;
  bool byte_fallback = false;
  std::string name;

  void build() {
    min_score = std::numeric_limits<double>::infinity();
    for (size_t id = 0; id < vocab.size(); ++id) {
      ids[vocab[id].first] = static_cast<int64_t>(id);
      min_score = std::min(min_score, vocab[id].second);
    }
    for (const auto& [piece, id] : ids) {
      int32_t node = 0;
      for (unsigned char c : piece) {
        auto& kids = trie[static_cast<size_t>(node)].kids;
        auto it = std::find_if(kids.begin(), kids.end(), [&](const auto& k) { return k.first == c; });
        if (it != kids.end()) {
          node = it->second;
        } else {
          const auto child = static_cast<int32_t>(trie.size());
          kids.emplace_back(c, child);
          trie.emplace_back();
          node = child;
        }
      }
      trie[static_cast<size_t>(node)].id = id;
    }
  }

  std::optional<int64_t> token_to_id(const std::string& t) const override {
    auto it = ids.find(t);
    if (it == ids.end()) return std::nullopt;
    return it->second;
  }
  size_t size() const override { return vocab.size(); }

  void tokenize(const std::string& s, std::vector<int64_t>& out) const override {
    if (s.empty()) return;
    struct Best {
      int64_t id = 0;
      double score = 0.0;
      long starts_at = -1;
    };
    const size_t size = s.size();
    const double unk_score = min_score - 10.0;
    std::vector<Best> best(size + 1);
    for (size_t start = 0; start < size;) {
      const double till_here = best[start].score;
      bool single = false;
      const size_t mblen = u8len(static_cast<unsigned char>(s[start]));
      int32_t node = 0;
      for (size_t pos = start; pos < size; ++pos) {
        const auto& kids = trie[static_cast<size_t>(node)].kids;
        const auto c = static_cast<unsigned char>(s[pos]);
        auto it = std::find_if(kids.begin(), kids.end(), [&](const auto& k) { return k.first == c; });
        if (it == kids.end()) break;
        node = it->second;
        const int64_t id = trie[static_cast<size_t>(node)].id;
        if (id < 0) continue;
        const size_t key_pos = pos + 1;
        Best& target = best[key_pos];
        const double cand = vocab[static_cast<size_t>(id)].second + till_here;
        if (target.starts_at < 0 || cand > target.score) {
          target.score = cand;
          target.starts_at = static_cast<long>(start);
          target.id = id;
        }
        if (!single && key_pos - start == mblen) single = true;
      }
      if (!single) {
        Best& target = best[start + mblen];
        const double cand = unk_score + till_here;
        if (target.starts_at < 0 || cand > target.score) {
          if (!unk_id) throw TokenizerError(name + ": an unknown character and the Unigram model has no unk_id");
          target.score = cand;
          target.starts_at = static_cast<long>(start);
          target.id = *unk_id;
        }
      }
      start += mblen;
    }
    // Back-track; consecutive unknown pieces are fused into one.
    std::vector<std::string> results, fused;
    for (size_t end = size; end > 0;) {
      const Best& node = best[end];
      const auto st = static_cast<size_t>(node.starts_at);
      if (unk_id && node.id == *unk_id) {
        fused.push_back(s.substr(st, end - st));
      } else {
        if (!fused.empty()) {
          std::string joined;
          for (auto it = fused.rbegin(); it != fused.rend(); ++it) joined += *it;
          results.push_back(std::move(joined));
          fused.clear();
        }
        results.push_back(s.substr(st, end - st));
      }
      end = st;
    }
    if (!fused.empty()) {
      std::string joined;
      for (auto it = fused.rbegin(); it != fused.rend(); ++it) joined += *it;
      results.push_back(std::move(joined));
    }
    for (auto it = results.rbegin(); it != results.rend(); ++it) {
      auto found = ids.find(*it);
      if (found != ids.end()) {
        out.push_back(found->second);
        continue;
      }
      if (byte_fallback) {
        std::vector<int64_t> bytes;
        for (unsigned char b : *it) {
          auto bt = ids.find(byte_token(b));
          if (bt == ids.end()) break;
          bytes.push_back(bt->second);
        }
        if (bytes.size() == it->size()) {
          out.insert(out.end(), bytes.begin(), bytes.end());
          continue;
        }
      }
      if (!unk_id) throw TokenizerError(name + ": an unknown piece and the Unigram model has no unk_id");
      out.push_back(*unk_id);
    }
  }
};

// ------------------------------------------------------------------------------------------------ post-processors

struct PostProcessor {
  virtual ~PostProcessor() = default;
  virtual void process(std::vector<int64_t>& ids) const = 0;
  virtual size_t added() const = 0;
};

struct WrapProcessor : PostProcessor {  // RobertaProcessing, BertProcessing, TemplateProcessing (single), ByteLevel
  std::vector<int64_t> before, after;
  void process(std::vector<int64_t>& ids) const override {
    ids.insert(ids.begin(), before.begin(), before.end());
    ids.insert(ids.end(), after.begin(), after.end());
  }
  size_t added() const override { return before.size() + after.size(); }
};

struct SequenceProcessor : PostProcessor {
  std::vector<std::unique_ptr<PostProcessor>> items;
  void process(std::vector<int64_t>& ids) const override {
    for (const auto& it : items) it->process(ids);
  }
  size_t added() const override {
    size_t n = 0;
    for (const auto& it : items) n += it->added();
    return n;
  }
};

// ------------------------------------------------------------------------------------------------ added tokens

struct AddedToken {
  std::string content;
  bool single_word = false, lstrip = false, rstrip = false, normalized = true, special = false;
  bool operator==(const AddedToken& o) const {
    return content == o.content && single_word == o.single_word && lstrip == o.lstrip && rstrip == o.rstrip &&
           normalized == o.normalized && special == o.special;
  }
};

struct TokenTrie {
  struct Node {
    std::vector<std::pair<unsigned char, int32_t>> kids;
    int64_t id = -1;
  };
  std::vector<Node> nodes{1};
  bool empty() const { return nodes.size() == 1; }
  void insert(const std::string& pattern, int64_t id) {
    int32_t node = 0;
    for (unsigned char c : pattern) {
      auto& kids = nodes[static_cast<size_t>(node)].kids;
      auto it = std::find_if(kids.begin(), kids.end(), [&](const auto& k) { return k.first == c; });
      if (it != kids.end()) {
        node = it->second;
      } else {
        const auto child = static_cast<int32_t>(nodes.size());
        kids.emplace_back(c, child);
        nodes.emplace_back();
        node = child;
      }
    }
    if (nodes[static_cast<size_t>(node)].id < 0) nodes[static_cast<size_t>(node)].id = id;
  }
  // Longest pattern starting at byte i: (length, id) or length 0.
  std::pair<size_t, int64_t> longest_at(std::string_view s, size_t i) const {
    std::pair<size_t, int64_t> best{0, -1};
    int32_t node = 0;
    for (size_t p = i; p < s.size(); ++p) {
      const auto& kids = nodes[static_cast<size_t>(node)].kids;
      const auto c = static_cast<unsigned char>(s[p]);
      auto it = std::find_if(kids.begin(), kids.end(), [&](const auto& k) { return k.first == c; });
      if (it == kids.end()) break;
      node = it->second;
      if (nodes[static_cast<size_t>(node)].id >= 0) best = {p + 1 - i, nodes[static_cast<size_t>(node)].id};
    }
    return best;
  }
};

std::string base_name(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

std::vector<uint8_t> base64_decode(const std::string& in, bool* ok) {
  static const std::string chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::vector<uint8_t> out;
  *ok = in.size() % 4 == 0;
  uint32_t acc = 0;
  int bits = 0;
  size_t pad = 0;
  for (size_t i = 0; i < in.size() && *ok; ++i) {
    const char c = in[i];
    if (c == '=') {
      ++pad;
      if (i + 1 < in.size() && in[i + 1] != '=') *ok = false;
      continue;
    }
    const size_t v = chars.find(c);
    if (v == std::string::npos || pad) {
      *ok = false;
      break;
    }
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<uint8_t>((acc >> bits) & 0xFF));
    }
  }
  if (pad > 2) *ok = false;
  return out;
}

}  // namespace

// ------------------------------------------------------------------------------------------------ the tokenizer

struct Tokenizer::Impl {
  std::string name;
  std::unique_ptr<Normalizer> normalizer;
  std::unique_ptr<PreTokenizer> pre;
  std::unique_ptr<Model> model;
  std::unique_ptr<PostProcessor> post;
  std::map<int64_t, AddedToken> added;  // id -> token
  TokenTrie raw_trie, norm_trie;
  size_t vocab_size = 0;

  // Splits text on the tokens of `trie`, with single_word / lstrip / rstrip handled as the library does.
  std::vector<std::pair<int64_t, std::pair<size_t, size_t>>> find_added(std::string_view s, const TokenTrie& trie) const {
    std::vector<std::pair<int64_t, std::pair<size_t, size_t>>> out;
    if (s.empty() || trie.empty()) {
      out.push_back({-1, {0, s.size()}});
      return out;
    }
    size_t start_offset = 0;
    for (size_t i = 0; i < s.size();) {
      const auto [len, id] = trie.longest_at(s, i);
      if (len == 0) {
        ++i;
        continue;
      }
      size_t start = i, stop = i + len;
      i = stop;
      const AddedToken& tok = added.at(id);
      if (tok.single_word) {
        bool start_space = true, stop_space = true;
        if (start > 0) {
          size_t p = start - 1;
          while (p > 0 && (static_cast<unsigned char>(s[p]) & 0xC0) == 0x80) --p;
          size_t l;
          start_space = !is_rust_word(decode_at(s, p, &l));
        }
        if (stop < s.size()) {
          size_t l;
          stop_space = !is_rust_word(decode_at(s, stop, &l));
        }
        if (!start_space || !stop_space) continue;
      }
      if (tok.lstrip) {
        size_t newstart = start;
        while (newstart > 0) {
          size_t p = newstart - 1;
          while (p > 0 && (static_cast<unsigned char>(s[p]) & 0xC0) == 0x80) --p;
          size_t l;
          if (!is_whitespace(decode_at(s, p, &l))) break;
          newstart = p;
        }
        start = std::max(newstart, start_offset);
      }
      if (tok.rstrip) {
        for (size_t l; stop < s.size(); stop += l)
          if (!is_whitespace(decode_at(s, stop, &l))) break;
      }
      if (start_offset < start) out.push_back({-1, {start_offset, start}});
      out.push_back({id, {start, stop}});
      start_offset = stop;
      // The library resumes the token search right after the token itself (not after stripped spaces).
    }
    if (start_offset != s.size()) out.push_back({-1, {start_offset, s.size()}});
    return out;
  }

  std::vector<int64_t> encode_ids(const std::string& text) const {
    if (!valid_utf8(text)) throw TokenizerError(name + ": the text is not valid UTF-8");
    const NormStr whole = norm_identity(text, 0);
    Pieces first;
    for (const auto& [id, r] : find_added(whole.s, raw_trie)) {
      if (r.first >= r.second) continue;
      first.push_back(Piece{slice(whole, r.first, r.second), id});
    }
    Pieces pieces;
    for (auto& p : first) {
      if (p.id >= 0) {
        pieces.push_back(std::move(p));
        continue;
      }
      if (normalizer) normalizer->normalize(p.n);
      for (const auto& [id, r] : find_added(p.n.s, norm_trie)) {
        if (r.first >= r.second) continue;
        pieces.push_back(Piece{slice(p.n, r.first, r.second), id});
      }
    }
    if (pre) pre->apply(pieces);
    std::vector<int64_t> ids;
    for (const auto& p : pieces) {
      if (p.id >= 0) ids.push_back(p.id);
      else model->tokenize(p.n.s, ids);
    }
    return ids;
  }
};

namespace {

using Impl = Tokenizer::Impl;

struct Loader {
  std::string name;

  [[noreturn]] void unsupported(const std::string& what) const { throw TokenizerError(name + ": " + what); }

  static std::string type_of(const json& j) {
    if (!j.is_object() || !j.contains("type") || !j["type"].is_string()) return "";
    return j["type"].get<std::string>();
  }

  static bool flag(const json& j, const char* key, bool dflt) {
    if (!j.contains(key) || j[key].is_null()) return dflt;
    return j[key].get<bool>();
  }

  Pattern pattern(const json& j, const std::string& where) const {
    Pattern p;
    if (j.contains("String")) {
      p.literal = true;
      p.lit = j["String"].get<std::string>();
    } else if (j.contains("Regex")) {
      p.literal = false;
      const std::string src = j["Regex"].get<std::string>();
      try {
        p.re = Regex(onig_to_icu(src));
      } catch (const std::runtime_error& e) {
        unsupported(where + " regex '" + src + "' is not supported (" + e.what() + ")");
      }
    } else {
      unsupported(where + " pattern must be String or Regex");
    }
    return p;
  }

  std::unique_ptr<Normalizer> normalizer(const json& j) const {
    if (j.is_null()) return nullptr;
    const std::string t = type_of(j);
    if (t == "Sequence") {
      auto s = std::make_unique<SequenceNormalizer>();
      for (const auto& item : j.at("normalizers"))
        if (auto n = normalizer(item)) s->items.push_back(std::move(n));
      return s;
    }
    if (t == "NFC" || t == "NFD" || t == "NFKC" || t == "NFKD") return std::make_unique<UnicodeNormalizer>(t);
    if (t == "Lowercase") return std::make_unique<LowercaseNormalizer>();
    if (t == "Replace") {
      auto r = std::make_unique<ReplaceNormalizer>();
      r->pattern = pattern(j.at("pattern"), "Replace normalizer");
      r->content = j.at("content").get<std::string>();
      return r;
    }
    if (t == "Strip") {
      auto s = std::make_unique<StripNormalizer>();
      s->left = flag(j, "strip_left", true);
      s->right = flag(j, "strip_right", true);
      return s;
    }
    if (t == "StripAccents") return std::make_unique<StripAccentsNormalizer>();
    if (t == "Prepend") {
      auto p = std::make_unique<PrependNormalizer>();
      p->text = j.at("prepend").get<std::string>();
      return p;
    }
    if (t == "Nmt") return std::make_unique<NmtNormalizer>();
    if (t == "ByteLevel") return std::make_unique<ByteLevelNormalizer>();
    if (t == "Precompiled") {
      auto p = std::make_unique<PrecompiledNormalizer>();
      bool ok = false;
      const std::vector<uint8_t> blob = base64_decode(j.at("precompiled_charsmap").get<std::string>(), &ok);
      if (!ok || blob.size() < 4) unsupported("Precompiled normalizer: cannot parse precompiled_charsmap");
      const uint32_t trie_bytes = blob[0] | (blob[1] << 8) | (blob[2] << 16) | (static_cast<uint32_t>(blob[3]) << 24);
      const size_t units = trie_bytes / 4;
      if (4 + units * 4 > blob.size()) unsupported("Precompiled normalizer: cannot parse precompiled_charsmap");
      p->trie.resize(units);
      for (size_t k = 0; k < units; ++k) {
        const uint8_t* b = &blob[4 + 4 * k];
        p->trie[k] = b[0] | (b[1] << 8) | (b[2] << 16) | (static_cast<uint32_t>(b[3]) << 24);
      }
      p->normalized.assign(blob.begin() + static_cast<std::ptrdiff_t>(4 + units * 4), blob.end());
      if (!valid_utf8(p->normalized)) unsupported("Precompiled normalizer: precompiled_charsmap is not valid UTF-8");
      return p;
    }
    unsupported("normalizer type '" + t + "' is not supported");
  }

  static Behavior behavior(const std::string& b, const Loader& l) {
    if (b == "Removed") return Behavior::Removed;
    if (b == "Isolated") return Behavior::Isolated;
    if (b == "MergedWithPrevious") return Behavior::MergedWithPrevious;
    if (b == "MergedWithNext") return Behavior::MergedWithNext;
    if (b == "Contiguous") return Behavior::Contiguous;
    l.unsupported("split behavior '" + b + "' is not supported");
  }

  char32_t single_char(const json& j, const std::string& what) const {
    const std::string s = j.get<std::string>();
    const std::u32string u = valid_utf8(s) ? to_u32(s) : std::u32string();
    if (u.size() != 1) unsupported(what + " must be a single character");
    return u[0];
  }

  std::unique_ptr<PreTokenizer> pre_tokenizer(const json& j) const {
    if (j.is_null()) return nullptr;
    const std::string t = type_of(j);
    if (t == "Sequence") {
      auto s = std::make_unique<SequencePreTokenizer>();
      for (const auto& item : j.at("pretokenizers"))
        if (auto p = pre_tokenizer(item)) s->items.push_back(std::move(p));
      return s;
    }
    if (t == "Split") {
      auto s = std::make_unique<SplitPreTokenizer>();
      s->pattern = pattern(j.at("pattern"), "Split pre-tokenizer");
      s->behavior = behavior(j.at("behavior").get<std::string>(), *this);
      s->invert = flag(j, "invert", false);
      return s;
    }
    if (t == "ByteLevel") {
      auto b = std::make_unique<ByteLevelPreTokenizer>();
      b->add_prefix_space = flag(j, "add_prefix_space", true);
      b->use_regex = flag(j, "use_regex", true);
      return b;
    }
    if (t == "Whitespace") return std::make_unique<WhitespacePreTokenizer>();
    if (t == "WhitespaceSplit") return std::make_unique<CharSplitPreTokenizer>();
    if (t == "CharDelimiterSplit") {
      auto c = std::make_unique<CharSplitPreTokenizer>();
      c->kind = CharSplitPreTokenizer::Delimiter;
      c->delimiter = single_char(j.at("delimiter"), "CharDelimiterSplit delimiter");
      return c;
    }
    if (t == "Punctuation") {
      auto c = std::make_unique<CharSplitPreTokenizer>();
      c->kind = CharSplitPreTokenizer::Punctuation;
      c->behavior = j.contains("behavior") ? behavior(j["behavior"].get<std::string>(), *this) : Behavior::Isolated;
      return c;
    }
    if (t == "Digits") {
      auto c = std::make_unique<CharSplitPreTokenizer>();
      c->kind = CharSplitPreTokenizer::Digits;
      c->behavior = flag(j, "individual_digits", false) ? Behavior::Isolated : Behavior::Contiguous;
      return c;
    }
    if (t == "BertPreTokenizer") return std::make_unique<BertPreTokenizer>();
    if (t == "Metaspace") {
      auto m = std::make_unique<MetaspacePreTokenizer>();
      m->replacement = single_char(j.at("replacement"), "Metaspace replacement");
      m->rep.clear();
      append_utf8(m->rep, m->replacement);
      const std::string scheme = j.contains("prepend_scheme") ? j["prepend_scheme"].get<std::string>() : "always";
      if (scheme == "always") m->scheme = MetaspacePreTokenizer::Always;
      else if (scheme == "first") m->scheme = MetaspacePreTokenizer::First;
      else if (scheme == "never") m->scheme = MetaspacePreTokenizer::Never;
      else unsupported("Metaspace prepend_scheme '" + scheme + "' is not supported");
      if (j.contains("add_prefix_space") && j["add_prefix_space"].is_boolean() && !j["add_prefix_space"].get<bool>()) {
        if (m->scheme != MetaspacePreTokenizer::Never)
          unsupported("Metaspace add_prefix_space does not match declared prepend_scheme");
        m->scheme = MetaspacePreTokenizer::Never;
      }
      m->split = flag(j, "split", true);
      return m;
    }
    unsupported("pre_tokenizer type '" + t + "' is not supported");
  }

  std::unique_ptr<Model> model(const json& j) const {
    const std::string t = type_of(j);
    if (t == "BPE") {
      auto b = std::make_unique<BpeModel>();
      b->name = name;
      if (j.contains("dropout") && !j["dropout"].is_null() && j["dropout"].get<double>() != 0.0)
        unsupported("BPE dropout is not supported");
      for (const auto& [tok, id] : j.at("vocab").items()) b->vocab[tok] = id.get<int64_t>();
      auto opt = [&](const char* key) -> std::optional<std::string> {
        if (!j.contains(key) || j[key].is_null()) return std::nullopt;
        return j[key].get<std::string>();
      };
      b->unk = opt("unk_token");
      b->prefix = opt("continuing_subword_prefix");
      b->suffix = opt("end_of_word_suffix");
      b->fuse_unk = flag(j, "fuse_unk", false);
      b->byte_fallback = flag(j, "byte_fallback", false);
      b->ignore_merges = flag(j, "ignore_merges", false);
      const size_t prefix_len = b->prefix ? b->prefix->size() : 0;
      uint32_t rank = 0;
      for (const auto& m : j.at("merges")) {
        std::string a, c;
        if (m.is_string()) {
          const std::string line = m.get<std::string>();
          if (line.rfind("#version", 0) == 0) continue;
          const size_t sp = line.find(' ');
          if (sp == std::string::npos || line.find(' ', sp + 1) != std::string::npos)
            unsupported("BPE merges line " + std::to_string(rank + 1) + " is not two tokens");
          a = line.substr(0, sp);
          c = line.substr(sp + 1);
        } else {
          a = m.at(0).get<std::string>();
          c = m.at(1).get<std::string>();
        }
        auto ia = b->vocab.find(a), ic = b->vocab.find(c);
        if (ia == b->vocab.end()) unsupported("BPE merge token '" + a + "' is not in the vocabulary");
        if (ic == b->vocab.end()) unsupported("BPE merge token '" + c + "' is not in the vocabulary");
        const std::string merged = a + (c.size() >= prefix_len ? c.substr(prefix_len) : std::string());
        auto in = b->vocab.find(merged);
        if (in == b->vocab.end()) unsupported("BPE merge result '" + merged + "' is not in the vocabulary");
        b->merges[BpeModel::key(static_cast<uint32_t>(ia->second), static_cast<uint32_t>(ic->second))] = {
            rank, static_cast<uint32_t>(in->second)};
        ++rank;
      }
      return b;
    }
    if (t == "Unigram") {
      auto u = std::make_unique<UnigramModel>();
      u->name = name;
      for (const auto& item : j.at("vocab")) u->vocab.emplace_back(item.at(0).get<std::string>(), item.at(1).get<double>());
      if (j.contains("unk_id") && !j["unk_id"].is_null()) {
        u->unk_id = j["unk_id"].get<int64_t>();
        if (u->vocab.empty()) unsupported("Unigram vocabulary is empty");
        if (*u->unk_id < 0 || static_cast<size_t>(*u->unk_id) >= u->vocab.size())
          unsupported("Unigram unk_id is outside the vocabulary");
      }
      u->byte_fallback = flag(j, "byte_fallback", false);
      u->build();
      return u;
    }
    if (t.empty()) unsupported("model has no type");
    unsupported("model type '" + t + "' is not supported");
  }

  static int64_t special_id(const json& pair) { return pair.at(1).get<int64_t>(); }

  std::unique_ptr<PostProcessor> post_processor(const json& j) const {
    if (j.is_null()) return nullptr;
    const std::string t = type_of(j);
    if (t == "RobertaProcessing" || t == "BertProcessing") {
      auto w = std::make_unique<WrapProcessor>();
      w->before = {special_id(j.at("cls"))};
      w->after = {special_id(j.at("sep"))};
      return w;
    }
    if (t == "ByteLevel") return std::make_unique<WrapProcessor>();
    if (t == "TemplateProcessing") {
      auto w = std::make_unique<WrapProcessor>();
      const json& specials = j.contains("special_tokens") ? j["special_tokens"] : json::object();
      bool seen_a = false;
      for (const auto& piece : j.at("single")) {
        if (piece.contains("Sequence")) {
          if (piece["Sequence"].at("id").get<std::string>() == "A") {
            if (seen_a) unsupported("TemplateProcessing single template with $A twice is not supported");
            seen_a = true;
          }
          continue;
        }
        if (!piece.contains("SpecialToken")) unsupported("TemplateProcessing piece is not supported");
        const std::string id = piece["SpecialToken"].at("id").get<std::string>();
        if (!specials.contains(id)) unsupported("TemplateProcessing special token '" + id + "' is missing");
        auto& dst = seen_a ? w->after : w->before;
        for (const auto& v : specials[id].at("ids")) dst.push_back(v.get<int64_t>());
      }
      if (!seen_a) unsupported("TemplateProcessing single template without $A is not supported");
      return w;
    }
    if (t == "Sequence") {
      auto s = std::make_unique<SequenceProcessor>();
      for (const auto& item : j.at("processors"))
        if (auto p = post_processor(item)) s->items.push_back(std::move(p));
      return s;
    }
    unsupported("post_processor type '" + t + "' is not supported");
  }

  std::shared_ptr<Impl> load(const json& root) const {
    auto impl = std::make_shared<Impl>();
    impl->name = name;
    if (!root.is_object()) unsupported("not a tokenizers JSON object");
    if (root.contains("version") && root["version"] != "1.0")
      unsupported("tokenizer version '" + root["version"].dump() + "' is not supported");
    if (!root.contains("model")) unsupported("no model");
    impl->normalizer = normalizer(root.value("normalizer", json()));
    impl->pre = pre_tokenizer(root.value("pre_tokenizer", json()));
    impl->model = model(root.at("model"));
    impl->post = post_processor(root.value("post_processor", json()));

    // Added tokens, with the ids the library gives them: the model's id when the model has the token, else the next
    // free id after the model's vocabulary.
    std::unordered_map<std::string, int64_t> by_content;
    const auto model_size = static_cast<int64_t>(impl->model->size());
    for (const auto& t : root.value("added_tokens", json::array())) {
      AddedToken tok;
      tok.content = t.at("content").get<std::string>();
      tok.special = flag(t, "special", false);
      tok.normalized = flag(t, "normalized", !tok.special);
      tok.single_word = flag(t, "single_word", false);
      tok.lstrip = flag(t, "lstrip", false);
      tok.rstrip = flag(t, "rstrip", false);
      if (tok.content.empty()) continue;
      auto known = by_content.find(tok.content);
      if (known != by_content.end() && impl->added[known->second] == tok) continue;
      int64_t id;
      if (known != by_content.end()) {
        id = known->second;
      } else if (auto mid = impl->model->token_to_id(tok.content)) {
        id = *mid;
      } else {
        id = model_size;
        if (!impl->added.empty()) {
          const int64_t max = impl->added.rbegin()->first;
          id = (max >= model_size || model_size == 0) ? max + 1 : model_size;
        }
      }
      by_content[tok.content] = id;
      impl->added[id] = tok;
    }
    size_t overlapping = 0;
    for (const auto& [content, id] : by_content)
      if (impl->model->token_to_id(content)) ++overlapping;
    impl->vocab_size = impl->model->size() + by_content.size() - overlapping;
    for (const auto& [id, tok] : impl->added) {
      if (!tok.normalized) {
        impl->raw_trie.insert(tok.content, id);
        continue;
      }
      NormStr n = norm_identity(tok.content, 0);
      if (impl->normalizer) impl->normalizer->normalize(n);
      if (!n.s.empty()) impl->norm_trie.insert(n.s, id);
    }
    return impl;
  }
};

}  // namespace

Tokenizer::Tokenizer(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}

Tokenizer Tokenizer::from_json(const std::string& json_text, const std::string& name) {
  json root;
  try {
    root = json::parse(json_text);
  } catch (const json::exception& e) {
    throw TokenizerError(name + ": not valid JSON (" + e.what() + ")");
  }
  Loader loader{name};
  try {
    return Tokenizer(loader.load(root));
  } catch (const TokenizerError&) {
    throw;
  } catch (const json::exception& e) {
    throw TokenizerError(name + ": unexpected tokenizer JSON (" + e.what() + ")");
  } catch (const std::exception& e) {
    throw TokenizerError(name + ": " + e.what());
  }
}

Tokenizer Tokenizer::from_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw TokenizerError(base_name(path) + ": cannot open the tokenizer file");
  std::ostringstream ss;
  ss << f.rdbuf();
  if (f.bad()) throw TokenizerError(base_name(path) + ": cannot read the tokenizer file");
  return from_json(ss.str(), base_name(path));
}

std::vector<int64_t> Tokenizer::encode(const std::string& utf8_text) const {
  std::vector<int64_t> ids = impl_->encode_ids(utf8_text);
  if (impl_->post) impl_->post->process(ids);
  return ids;
}

std::vector<int64_t> Tokenizer::encode_padded(const std::string& utf8_text, size_t max_length, int64_t pad_id,
                                              size_t* truncated) const {
  std::vector<int64_t> ids = impl_->encode_ids(utf8_text);
  const size_t n_added = impl_->post ? impl_->post->added() : 0;
  if (max_length < n_added)
    throw TokenizerError(impl_->name + ": max_length " + std::to_string(max_length) + " is shorter than the " +
                         std::to_string(n_added) + " special tokens");
  const size_t full = ids.size() + n_added;
  if (truncated) *truncated = full > max_length ? full - max_length : 0;
  if (ids.size() > max_length - n_added) ids.resize(max_length - n_added);
  if (impl_->post) impl_->post->process(ids);
  if (ids.size() < max_length) ids.resize(max_length, pad_id);
  return ids;
}

size_t Tokenizer::vocab_size() const { return impl_->vocab_size; }

}  // namespace seer
