// Compares seer::Tokenizer with golden ids written by tokenizer_golden.py (the Python `tokenizers` library).
//
//   test_tokenizer GOLDEN.json...                 every case of each golden file: encode() and encode_padded()
//   test_tokenizer --encode TOKENIZER.json TEXT    prints the ids of TEXT
//   test_tokenizer --expect-error TOKENIZER.json TEXT
//                                                 loading TOKENIZER.json must fail with a message containing TEXT
//
// Prints each mismatch (the first 10 per file in full) and a summary line per file; exits 1 on any mismatch.
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "tokenizer.h"

namespace {

std::string show(const std::vector<int64_t>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? "," : "") + std::to_string(v[i]);
  return s + "]";
}

std::string escape(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (c < 0x20 || c == 0x7F) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02X", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out.size() > 160 ? out.substr(0, 160) + "..." : out;
}

int check_golden(const std::string& path) {
  std::ifstream f(path);
  if (!f) {
    std::cerr << path << ": cannot open\n";
    return 1;
  }
  const nlohmann::json g = nlohmann::json::parse(f);
  const std::string tok_path = g.at("tokenizer").get<std::string>();
  const auto max_length = g.at("max_length").get<size_t>();
  const auto pad_id = g.at("pad_id").get<int64_t>();
  int failures = 0;
  try {
    const seer::Tokenizer tok = seer::Tokenizer::from_file(tok_path);
    if (tok.vocab_size() != g.at("vocab_size").get<size_t>()) {
      std::cout << "MISMATCH " << path << ": vocab_size " << tok.vocab_size() << " != " << g["vocab_size"] << "\n";
      ++failures;
    }
    size_t n = 0;
    for (const auto& c : g.at("cases")) {
      ++n;
      const std::string text = c.at("text").get<std::string>();
      const auto want = c.at("ids").get<std::vector<int64_t>>();
      const auto want_padded = c.at("padded").get<std::vector<int64_t>>();
      const auto want_truncated = c.at("truncated").get<size_t>();
      std::vector<int64_t> got, got_padded;
      size_t got_truncated = 0;
      std::string error;
      try {
        got = tok.encode(text);
        got_padded = tok.encode_padded(text, max_length, pad_id, &got_truncated);
      } catch (const std::exception& e) {
        error = e.what();
      }
      if (error.empty() && got == want && got_padded == want_padded && got_truncated == want_truncated) continue;
      if (++failures <= 10) {
        std::cout << "MISMATCH " << path << " case " << n - 1 << " \"" << escape(text) << "\"\n";
        if (!error.empty()) std::cout << "  error:    " << error << "\n";
        std::cout << "  expected: " << show(want) << "\n  got:      " << show(got) << "\n";
        if (got_padded != want_padded)
          std::cout << "  padded expected: " << show(want_padded) << "\n  padded got:      " << show(got_padded) << "\n";
        if (got_truncated != want_truncated)
          std::cout << "  truncated expected " << want_truncated << " got " << got_truncated << "\n";
      }
    }
    // A Tokenizer is shared by threads: the same ids from 4 threads at once.
    {
      std::vector<std::string> texts;
      for (const auto& c : g.at("cases")) texts.push_back(c.at("text").get<std::string>());
      std::vector<std::vector<std::vector<int64_t>>> results(4);
      std::vector<std::thread> threads;
      for (size_t t = 0; t < results.size(); ++t)
        threads.emplace_back([&, t] {
          for (const auto& text : texts) results[t].push_back(tok.encode(text));
        });
      for (auto& th : threads) th.join();
      for (size_t t = 0; t < results.size(); ++t)
        for (size_t k = 0; k < texts.size(); ++k)
          if (results[t][k] != tok.encode(texts[k])) {
            std::cout << "MISMATCH " << path << ": thread " << t << " case " << k << " differs\n";
            ++failures;
          }
    }
    // The C API must refuse invalid UTF-8 (the Python side only ever sees str).
    for (const std::string& bad : {std::string("\xFF"), std::string("ab\xC3"), std::string("\xED\xA0\x80"),
                                  std::string("\xC0\xAF"), std::string("\xF4\x90\x80\x80")}) {
      try {
        tok.encode(bad);
        std::cout << "MISMATCH " << path << ": invalid UTF-8 \"" << escape(bad) << "\" was accepted\n";
        ++failures;
      } catch (const seer::TokenizerError&) {
      }
    }
    std::cout << (failures ? "FAIL " : "ok   ") << path << ": " << n << " cases, " << failures << " mismatches\n";
  } catch (const std::exception& e) {
    std::cout << "FAIL " << path << ": " << e.what() << "\n";
    return 1;
  }
  return failures ? 1 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 4 && std::string(argv[1]) == "--expect-error") {
    try {
      seer::Tokenizer::from_file(argv[2]);
      std::cout << "FAIL " << argv[2] << ": loaded, expected an error containing \"" << argv[3] << "\"\n";
      return 1;
    } catch (const seer::TokenizerError& e) {
      const std::string msg = e.what();
      const bool ok = msg.find(argv[3]) != std::string::npos && msg.find('\n') == std::string::npos;
      std::cout << (ok ? "ok   " : "FAIL ") << argv[2] << ": " << msg << "\n";
      return ok ? 0 : 1;
    }
  }
  if (argc == 4 && std::string(argv[1]) == "--encode") {  // debugging aid: the ids of one text
    std::cout << show(seer::Tokenizer::from_file(argv[2]).encode(argv[3])) << "\n";
    return 0;
  }
  if (argc < 2) {
    std::cerr << "usage: test_tokenizer GOLDEN.json... | --expect-error TOKENIZER.json TEXT\n";
    return 2;
  }
  int rc = 0;
  for (int i = 1; i < argc; ++i) rc |= check_golden(argv[i]);
  return rc;
}
