"""Golden token ids for libseer's C++ tokenizer, written with the Python `tokenizers` library.

    tokenizer_golden.py golden --tokenizer T.json --max-length N --pad-id P --prompts PROMPTS.json --out GOLDEN.json
        ids of each prompt of PROMPTS.json (a JSON list of strings) with T.json: full (post-processor's special
        tokens, no truncation/padding) and as the runtime pads them (enable_truncation(N), enable_padding(length=N)).
    tokenizer_golden.py fixtures OUT_DIR
        builds test tokenizers offline into OUT_DIR (a T5-style Unigram with sentencepiece's Precompiled charsmap
        trained here, a CLIP-style and a GPT-2-style byte-level BPE trained here, variants exercising the other
        supported components) plus OUT_DIR/prompts.json, and writes OUT_DIR/manifest.json listing them.
    tokenizer_golden.py all OUT_DIR
        fixtures, then one golden file per tokenizer of the manifest (OUT_DIR/golden_<name>.json).

The golden file: {"tokenizer", "max_length", "pad_id", "vocab_size", "cases": [{"text", "ids", "padded",
"truncated"}]}; "truncated" is how many tokens the full encoding has beyond max_length (runtime/text.py's count).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FLUX_TINY = REPO / "export" / "assets" / "flux-tiny"


# ------------------------------------------------------------------------------------------------ goldens

def golden(tokenizer: Path, max_length: int, pad_id: int, prompts: list[str]) -> dict:
    from tokenizers import Tokenizer

    full = Tokenizer.from_file(str(tokenizer))
    full.no_padding()
    full.no_truncation()
    padded = Tokenizer.from_str(full.to_str())
    padded.enable_truncation(max_length)
    pad_token = full.id_to_token(pad_id) or "<pad>"
    padded.enable_padding(length=max_length, pad_id=pad_id, pad_token=pad_token)
    cases = []
    for text in prompts:
        ids = full.encode(text).ids
        cases.append({"text": text, "ids": ids, "padded": padded.encode(text).ids,
                      "truncated": max(0, len(ids) - max_length)})
    return {"tokenizer": str(tokenizer.resolve()), "max_length": max_length, "pad_id": pad_id,
            "vocab_size": full.get_vocab_size(), "cases": cases}


# ------------------------------------------------------------------------------------------------ prompts

WORDS = ("a photo of an astronaut riding horse on mars cinematic lighting highly detailed portrait woman red dress "
         "standing in rain neon city night cyberpunk oil painting impressionist style mountains lake sunrise fog "
         "golden hour bokeh 35mm film grain cat sitting windowsill watercolor minimalist logo vector flat design "
         "ultra realistic 8k octane render trending artstation dramatic clouds castle fantasy dragon breathing fire "
         "macro shot dew drops spider web forest path autumn leaves vintage car desert road sunset").split()

SNIPPETS = [
    "café", "naïve", "résumé", "Ångström", "Zürich", "São Paulo", "Ça va?", "Straße", "STRASSE", "ẞ", "İstanbul",
    "ıi", "ΣΊΣΥΦΟΣ", "ΟΔΟΣ", "Σ", "ǅungla", "Привет, мир!", "Ελληνικά", "一只猫坐在窗台上", "東京の夜景、ネオン",
    "서울의 밤거리", "สวัสดีครับ", "مرحبا بالعالم", "שלום עולם", "नमस्ते दुनिया", "क्षत्रिय", "ﬁne ﬂow ﬀ ﬃ",
    "ＦＵＬＬ－ＷＩＤＴＨ　ｔｅｘｔ１２３", "™ ℃ № ㎏ ㍻ ℡", "½ ² ³ ¼ Ⅻ ① ⑳", "🐱🐶🦊", "👨‍👩‍👧‍👦", "🇺🇸🇯🇵🇫🇷",
    "👍🏽👋🏿", "1️⃣#️⃣", "❤️‍🔥", "e\u0301", "cafe\u0301", "a\u0308\u0301", "ｅ\u0301", "\u1100\u1161\u11a8",
    "<|endoftext|>", "<|startoftext|>", "</s>", "<pad>", "<unk>", "<extra_id_0>", "<mask>", "[CLS]", "Hello World",
    "hello world", "don't", "it's", "WE'RE", "I've", "you'll", "he'd", "'s", "''", "'''", "3.14159", "1,000,000",
    "2024-01-01", "v1.2.3", "$100", "€50", "£30", "¥1000", "C++", "C#", "#sunset", "@user", "___", "---", "...",
    "!!!???", "https://example.com/path?x=1&y=2#frag", "def f(x): return x**2", "∑ ∫ √ ≤ ≥ ≠ ∞", "\t", "\n",
    "\r\n", "  ", "\u00a0", "\u3000", "\u2028", "\u200b", "\ufeff", "\u00ad", "\x0b\x0c", "\x85", "\x01\x7f",
    "\u2581", "▁▁", "\ufffd", "\U0001d400\U0001d401", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "Ⓐⓑⓒ", "ℌ", "ꭰ", "\U00010400",
]


def prompts() -> list[str]:
    fixed = [
        "", " ", "  ", "\t", "\n", "a", "A", "hello", "Hello, world!", "a photo of an astronaut riding a horse on mars",
        "A cinematic shot of a baby racoon wearing an intricate italian priest robe.",
        "Photograph of a red fox in the snow, 85mm, f/1.8, golden hour -- highly detailed!!!",
        "it's don't we're I've I'm you'll he'd IT'S DON'T We'Re",
        "Hello, world! (test) [brackets] {braces} <angle> 'quotes' \"double\" — em-dash … ellipsis",
        "1234567890 3.14159 1,000,000 2024-01-01 v1.2.3 0x1F 1e-5 -42 +7",
        "café naïve résumé façade Ångström Zürich São Paulo", "cafe\u0301 nai\u0308ve", "e\u0301\u0302\u0303",
        "ＦＵＬＬ－ＷＩＤＴＨ　ｔｅｘｔ１２３", "ﬁ ﬂ ﬀ ﬃ ﬄ ﬅ ﬆ", "™ ℃ № ㎏ ㍻", "½ ² ³ ¼ Ⅻ ①",
        "一只猫坐在窗台上，看着外面的雨。", "東京の夜景、ネオンサインが輝く", "서울의 밤거리", "Привет мир",
        "ΣΊΣΥΦΟΣ ΟΔΟΣ όδος", "İstanbul ıi ẞ ß", "ǅ ǈ ǋ ǲ", "नमस्ते दुनिया", "مرحبا بالعالم", "สวัสดีครับ",
        "🐱🐶", "👨‍👩‍👧‍👦 family", "🇺🇸🇯🇵 flags", "👍🏽 ok", "1️⃣ keycap", "❤️ heart", "🫠🪿 new emoji",
        "<|endoftext|>", "a <|startoftext|> b", "<|endoftext|><|endoftext|>", "<|endoftext|", "<<|endoftext|>>",
        "</s>", "x</s>y", "</s></s>", " </s> ", "<pad><unk></s>", "<extra_id_0> fill <extra_id_1>", "<</s>>",
        "<mask>", " <mask> ", "a<mask>b", "Hello World", "hello world", "xHello World", "Hello Worldx",
        "say Hello World.", "HELLO WORLD", "[CLS] text [SEP]", "über Über ÜBER",
        "a\tb\nc\r\nd", "  multiple   spaces  ", "\u00a0nbsp\u00a0", "\u3000ideographic\u3000space",
        "line\u2028separator", "zero\u200bwidth", "\ufeffbom", "trailing ", " leading", "\x0b\x0c\x85",
        "ctrl\x01\x02\x7fchars", "nul\x00byte", "soft\u00adhyphen", "▁already▁metaspace", "under_score_words",
        "https://example.com/path?x=1&y=2#frag", "def f(x): return x**2  # comment", "∑ ∫ √ ≤ ≥ ≠ ∞ ≈ ±",
        "$100 €50 £30 ¥1000", "C++ C# F# .NET", "#sunset @user", "___ --- ... !!! ??? ''' \"\"\"",
        "HeLLo WoRLD MiXeD CaSe", "'s 't 're 've 'm 'll 'd", "quoted 'single' and 'multi word'",
        "a-b-c", "a--b", "-start", "end-", "a,b;c:d", "x.y.z", "...dots...", "??!!", "(nested (parens))",
        "tab\tseparated\tvalues", "new\nlines\n\nhere", "\n\n\n", "\r", " \t \n ", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝐛𝐨𝐥𝐝",
        "Ⓐⓑⓒ circled", "ℌ𝔢𝔩𝔩𝔬", "ｅ\u0301 fullwidth accent", "\u1100\u1161\u11a8 jamo", "क्षत्रिय conjunct",
        "\ufffd replacement", "\U00010400 deseret", "a\u0301\u0301\u0301\u0301\u0301 stacked",
        "Zalgo: h\u0335\u0321e\u0336\u0322l\u0337l\u0338o\u0334", "👩🏽‍💻 at work", "🏳️‍🌈", "a" * 5,
        "1 2 3 4 5 6 7 8 9 10", "00000", "٣٤٥ arabic digits", "१२३ devanagari digits", "Ⅰ Ⅱ Ⅲ roman",
        # characters whose properties differ between the Unicode versions of the library's tables and ICU's
        "a\u1df6\u0323 mark of Unicode 10", "㋿ reiwa", "ꟲꟳꟴ modifier letters", "x\u061dy arabic end of text",
        "a\U000111c9b sharada", "\u1cf2\u1cf3 vedic", "\U00011935\U00011930 dives akuru", "\u08d4\u0323 arabic mark",
        "ᏸᏹᏺ cherokee", "Ꭰꭰ", "\U0001e900\U0001e922 adlam",
    ]
    long = [
        " ".join(WORDS) * 3,
        "a" * 1000,
        "一只猫" * 300,
        "1234567890" * 80,
        "🐱" * 400,
        "word " * 300,
        ", ".join(WORDS),
        "  ".join(WORDS[:60]),
        "\n".join(WORDS[:80]),
        "supercalifragilisticexpialidocious" * 10,
        "<|endoftext|>" * 50,
        "</s> " * 60,
    ]
    rng = random.Random(1234)
    pool = WORDS + SNIPPETS
    seps = [" ", " ", " ", "  ", ", ", ". ", "\n", "\t", "", "-", "'", " — "]
    generated = []
    for i in range(160):
        n = rng.choice([1, 2, 3, 5, 8, 13, 21, 40])
        parts = []
        for _ in range(n):
            w = rng.choice(pool)
            r = rng.random()
            if r < 0.1:
                w = w.upper()
            elif r < 0.2:
                w = w.capitalize()
            parts.append(w)
            parts.append(rng.choice(seps))
        text = "".join(parts)
        if i % 7 == 0:
            text = " " + text
        if i % 11 == 0:
            text = text + "  "
        generated.append(text)
    return fixed + long + generated + random_characters(rng, 200)


# Code point ranges the random prompts draw from: scripts, combining marks, compatibility and presentation forms,
# full-width forms, symbols, emoji, tags, controls and spaces.
RANGES = [(0x20, 0x7E), (0x00, 0x20), (0x80, 0xFF), (0x100, 0x17F), (0x300, 0x36F), (0x370, 0x3FF), (0x400, 0x4FF),
          (0x591, 0x5F4), (0x600, 0x6FF), (0x8A0, 0x8FF), (0x900, 0x97F), (0xE00, 0xE5B), (0x1100, 0x11FF),
          (0x13A0, 0x13FF), (0x1CD0, 0x1CFF), (0x1DC0, 0x1DFF), (0x1E00, 0x1EFF), (0x2000, 0x206F), (0x2070, 0x209F),
          (0x20A0, 0x20C0), (0x2100, 0x218F), (0x2190, 0x21FF), (0x2460, 0x24FF), (0x2E80, 0x2FDF), (0x3000, 0x30FF),
          (0x3130, 0x318F), (0x3200, 0x33FF), (0x4E00, 0x4E80), (0xA700, 0xA7FF), (0xAB30, 0xABBF), (0xAC00, 0xAC80),
          (0xF900, 0xFAFF), (0xFB00, 0xFB4F), (0xFB50, 0xFDFF), (0xFE00, 0xFE6F), (0xFE70, 0xFEFF), (0xFF00, 0xFFEF),
          (0xFFF0, 0xFFFD), (0x10000, 0x1007F), (0x11180, 0x111DF), (0x11900, 0x1195F), (0x1D400, 0x1D7FF),
          (0x1E900, 0x1E95F), (0x1F000, 0x1FAFF), (0x1F1E6, 0x1F1FF), (0x2F800, 0x2FA1F), (0xE0000, 0xE007F)]


def random_characters(rng: random.Random, n: int) -> list[str]:
    """Random mixes of words and code points. Only characters assigned in the Unicode version of Python's
    unicodedata (14.0 for Python 3.11): ICU may not know the newest ones the Rust library's tables have."""
    import unicodedata

    words = WORDS + SNIPPETS + [" ", "  ", "\u200d", "\ufe0f", "\u0301", "'s", "</s>", "<|endoftext|>", "<mask>",
                                "Hello World", "x", "-"]
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, 12)):
            if rng.random() < 0.5:
                lo, hi = rng.choice(RANGES)
                parts.append("".join(chr(rng.randint(lo, hi)) for _ in range(rng.randint(1, 4))))
            else:
                parts.append(rng.choice(words))
        out.append("".join(c for c in "".join(parts)
                           if not 0xD800 <= ord(c) < 0xE000 and unicodedata.category(c) != "Cn"))
    return out


def engine_tokenizers(out: Path) -> list[dict]:
    """flux-tiny's tokenizers as export/flux_export.py writes them into an engine directory (the fast tokenizer's
    backend, saved)."""
    from transformers import AutoTokenizer

    items = []
    for key, sub, max_length in (("clip", "tokenizer", None), ("t5", "tokenizer_2", 16)):
        tok = AutoTokenizer.from_pretrained(str(FLUX_TINY / sub))
        path = out / f"engine_{key}.json"
        tok.backend_tokenizer.save(str(path))
        items.append({"name": f"engine_{key}", "tokenizer": str(path),
                      "max_length": int(max_length or tok.model_max_length), "pad_id": int(tok.pad_token_id)})
    return items


# ------------------------------------------------------------------------------------------------ fixtures

def corpus() -> list[str]:
    """Training text built offline: docstrings and docs of the installed packages, plus multilingual lines."""
    import site

    lines: list[str] = []
    roots = [Path(p) for p in site.getsitepackages()]
    budget = 1_500_000
    for root in roots:
        for sub in ("transformers/models/t5", "transformers/models/clip", "tokenizers", "numpy/lib", "torch/nn/modules",
                    "diffusers/pipelines/flux", "requests", "jinja2", "click"):
            for f in sorted((root / sub).rglob("*.py"))[:200] if (root / sub).exists() else []:
                try:
                    text = f.read_text(encoding="utf-8", errors="ignore")
                except OSError:
                    continue
                for line in text.splitlines():
                    line = line.strip().strip("#").strip()
                    if len(line) > 20 and not line.startswith(("import", "from", "def ", "class ", "return")):
                        lines.append(line)
                        budget -= len(line)
                if budget <= 0:
                    break
    multi = [w for w in SNIPPETS] + [
        "Le café est délicieux à Paris, où les rues sont pleines de vie.",
        "Die Straße in München ist voller Menschen, die über den Marktplatz gehen.",
        "El niño comió una manzana en el jardín de la señora García.",
        "Быстрая коричневая лиса перепрыгивает через ленивую собаку.",
        "Η γρήγορη καφέ αλεπού πηδά πάνω από τον τεμπέλη σκύλο.",
        "敏捷的棕色狐狸跳过了懒狗。我们在北京的一个公园里散步。",
        "素早い茶色の狐がのろまな犬を飛び越える。東京タワーの夜景。",
        "빠른 갈색 여우가 게으른 개를 뛰어넘는다.",
        "ＦＵＬＬＷＩＤＴＨ ｌｅｔｔｅｒｓ ａｎｄ １２３ ｄｉｇｉｔｓ",
    ]
    for k in range(40):
        lines.extend(multi)
    rng = random.Random(7)
    for _ in range(3000):
        lines.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 15))))
    return lines


def train_spm(out: Path, lines: list[str], vocab_size: int) -> Path:
    import sentencepiece as spm

    text = out / "corpus.txt"
    text.write_text("\n".join(lines), encoding="utf-8")
    prefix = out / "spiece"
    spm.SentencePieceTrainer.train(
        input=str(text), model_prefix=str(prefix), vocab_size=vocab_size, model_type="unigram",
        normalization_rule_name="nmt_nfkc", character_coverage=0.9995, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>", num_threads=1, input_sentence_size=200000,
        shuffle_input_sentence=False, minloglevel=2)
    return prefix.with_suffix(".model")


def spm_pieces(model: Path):
    from sentencepiece import sentencepiece_model_pb2 as pb

    m = pb.ModelProto()
    m.ParseFromString(model.read_bytes())
    return m


def t5_tokenizers(out: Path, model: Path) -> dict[str, Path]:
    """The same trained Unigram vocabulary in several T5-style tokenizer.json shapes."""
    import base64

    from tokenizers import AddedToken, Regex, Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import Unigram

    proto = spm_pieces(model)
    charsmap = proto.normalizer_spec.precompiled_charsmap
    vocab = [(p.piece, p.score) for p in proto.pieces] + [(f"<extra_id_{i}>", 0.0) for i in range(99, -1, -1)]
    paths = {}

    def base() -> Tokenizer:
        tok = Tokenizer(Unigram(vocab, unk_id=2, byte_fallback=False))
        tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in ("<pad>", "</s>", "<unk>")])
        tok.add_special_tokens([AddedToken(f"<extra_id_{i}>", normalized=False, special=True) for i in range(100)])
        tok.post_processor = processors.TemplateProcessing(single=["$A", "</s>"], pair=["$A", "</s>", "$B", "</s>"],
                                                           special_tokens=[("</s>", 1)])
        return tok

    # (1) what the installed transformers builds from the sentencepiece model (T5Tokenizer, fast backend)
    try:
        import shutil

        from transformers import T5Tokenizer

        (out / "t5_spm").mkdir(exist_ok=True)
        shutil.copy(model, out / "t5_spm" / "spiece.model")
        hf = T5Tokenizer.from_pretrained(str(out / "t5_spm"))
        if hf.backend_tokenizer.get_vocab_size() < len(proto.pieces):
            raise ValueError("the sentencepiece vocabulary was not loaded")
        p = out / "t5_transformers.json"
        hf.backend_tokenizer.save(str(p))
        paths["t5_transformers"] = p
    except Exception as e:  # noqa: BLE001 (transformers' API moves; the hand-built shapes below still cover it)
        print(f"note: transformers' T5Tokenizer could not build a tokenizer ({e}); skipped", file=sys.stderr)

    # (2) FLUX.1-dev's T5 shape: Precompiled + Replace(" {2,}" -> " "), WhitespaceSplit + Metaspace(always)
    tok = base()
    tok.normalizer = normalizers.Sequence([normalizers.Precompiled(charsmap), normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                 pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")])
    paths["t5_flux"] = out / "t5_flux.json"
    tok.save(str(paths["t5_flux"]))

    # (3) transformers' SpmConverter shape: Precompiled + Strip(right) + Replace(" {2,}" -> "▁"), Metaspace(first)
    tok = base()
    tok.normalizer = normalizers.Sequence([normalizers.Precompiled(charsmap), normalizers.Strip(left=False, right=True),
                                           normalizers.Replace(Regex(" {2,}"), "▁")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    paths["t5_spm_first"] = out / "t5_spm_first.json"
    tok.save(str(paths["t5_spm_first"]))

    # (4) other normalizers / pre-tokenizers on the same vocabulary, with added tokens of every kind
    def variant(name, normalizer, pre, extra_tokens=()):
        t = base()
        t.normalizer = normalizer
        t.pre_tokenizer = pre
        if extra_tokens:
            t.add_tokens(list(extra_tokens))
        paths[name] = out / f"{name}.json"
        t.save(str(paths[name]))

    added = [AddedToken("<mask>", lstrip=True, rstrip=True, normalized=False, special=True),
             AddedToken("Hello World", single_word=True, normalized=True),
             AddedToken("über", normalized=True), AddedToken("[CLS]", normalized=False, single_word=True)]
    variant("uni_nfkd_lower_whitespace",
            normalizers.Sequence([normalizers.NFKD(), normalizers.StripAccents(), normalizers.Lowercase()]),
            pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Metaspace(prepend_scheme="always")]),
            added)
    variant("uni_splits",
            normalizers.Sequence([normalizers.NFC(), normalizers.Replace("\t", " ")]),
            pre_tokenizers.Sequence([
                pre_tokenizers.Split(" ", "merged_with_previous"),
                pre_tokenizers.Split(Regex(r"\d"), "isolated"),
                pre_tokenizers.Split(Regex(r"[,.!?]"), "merged_with_next"),
                pre_tokenizers.Split(Regex(r"\p{P}"), "contiguous"),
                pre_tokenizers.Split(Regex(r"'s|\w+"), "removed", invert=True),
                pre_tokenizers.Metaspace(prepend_scheme="never", split=True)]),
            added)
    variant("uni_strip_prepend",
            normalizers.Sequence([normalizers.Strip(), normalizers.Prepend("▁"), normalizers.Replace(" ", "▁"),
                                  normalizers.NFKC()]),
            None, added)
    variant("uni_first_nosplit",
            normalizers.Sequence([normalizers.Nmt(), normalizers.NFKC(), normalizers.Replace(Regex(r"\s+"), " ")]),
            pre_tokenizers.Metaspace(prepend_scheme="first", split=False), added)
    variant("uni_first_split",
            normalizers.Lowercase(),
            pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                     pre_tokenizers.Metaspace(prepend_scheme="first", split=True)]), added)
    variant("uni_precompiled_first",
            normalizers.Sequence([normalizers.Precompiled(charsmap), normalizers.Strip(left=True, right=False)]),
            pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                     pre_tokenizers.Metaspace(prepend_scheme="first", split=True)]), added)
    variant("uni_bert_digits",
            normalizers.Sequence([normalizers.NFD(), normalizers.Lowercase(), normalizers.NFC()]),
            pre_tokenizers.Sequence([pre_tokenizers.BertPreTokenizer(), pre_tokenizers.Digits(individual_digits=True),
                                     pre_tokenizers.CharDelimiterSplit("-"), pre_tokenizers.Punctuation("contiguous"),
                                     pre_tokenizers.Metaspace()]), added)
    variant("uni_regex_edges",
            normalizers.Sequence([normalizers.Replace(Regex(r"^\s+|\s+$"), ""), normalizers.Replace(Regex("x*"), "-"),
                                  normalizers.Replace(Regex(r"\w(?=\d)"), "#")]),
            pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(r"\b"), "isolated"),
                                     pre_tokenizers.Split(Regex(r"[\s\h]+"), "merged_with_next"),
                                     pre_tokenizers.Metaspace()]))
    # byte fallback: the vocabulary with sentencepiece's <0xXX> byte pieces
    t = Tokenizer(Unigram(vocab + [(f"<0x{b:02X}>", -20.0) for b in range(256)], unk_id=2, byte_fallback=True))
    t.normalizer = normalizers.NFKC()
    t.pre_tokenizer = pre_tokenizers.Metaspace()
    paths["uni_byte_fallback"] = out / "uni_byte_fallback.json"
    t.save(str(paths["uni_byte_fallback"]))
    return paths


def bpe_tokenizers(out: Path, lines: list[str]) -> dict[str, Path]:
    from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers, processors, trainers
    from tokenizers.models import BPE

    paths = {}
    clip_tiny = json.loads((FLUX_TINY / "tokenizer" / "tokenizer.json").read_text())
    clip = Tokenizer(BPE(unk_token="<|endoftext|>", continuing_subword_prefix="", end_of_word_suffix="</w>",
                         fuse_unk=False))
    # CLIP's normalizer, pre-tokenizer and post-processor, copied from the flux-tiny file
    shell = json.loads(clip.to_str())
    for key in ("normalizer", "pre_tokenizer", "post_processor", "decoder"):
        shell[key] = clip_tiny[key]
    clip = Tokenizer.from_str(json.dumps(shell))
    trainer = trainers.BpeTrainer(vocab_size=6000, min_frequency=2, special_tokens=["<|startoftext|>", "<|endoftext|>"],
                                  end_of_word_suffix="</w>", initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    clip.train_from_iterator(lines, trainer)
    paths["clip_bpe"] = out / "clip_bpe.json"
    clip.save(str(paths["clip_bpe"]))

    gpt = Tokenizer(BPE())
    gpt.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True)
    gpt.post_processor = processors.ByteLevel(trim_offsets=True)
    gpt.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=4000, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    gpt.train_from_iterator(lines, trainer)
    gpt.add_tokens([AddedToken("<mask>", lstrip=True, rstrip=False, normalized=False, special=True),
                    AddedToken(" World", normalized=True), AddedToken("[CLS]", single_word=True, normalized=False)])
    paths["gpt2_bpe"] = out / "gpt2_bpe.json"
    gpt.save(str(paths["gpt2_bpe"]))
    # the same model with merges as "a b" strings, byte_fallback off, ignore_merges on, prefix/suffix on
    d = json.loads(gpt.to_str())
    d["model"]["merges"] = [" ".join(m) if isinstance(m, list) else m for m in d["model"]["merges"]]
    d["model"]["ignore_merges"] = True
    d["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
    paths["gpt2_bpe_legacy"] = out / "gpt2_bpe_legacy.json"
    paths["gpt2_bpe_legacy"].write_text(json.dumps(d, ensure_ascii=False))

    # WordPiece-like BPE: a continuing-subword prefix, fused unknowns, byte fallback to <0xXX> tokens
    from tokenizers import normalizers

    wp = Tokenizer(BPE(unk_token="[UNK]", continuing_subword_prefix="##"))
    wp.normalizer = normalizers.Sequence([normalizers.NFD(), normalizers.Lowercase()])
    wp.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=1500, special_tokens=["[UNK]"], continuing_subword_prefix="##",
                                  limit_alphabet=120, show_progress=False)
    wp.train_from_iterator(lines, trainer)
    d = json.loads(wp.to_str())
    d["model"].update(fuse_unk=True, byte_fallback=False, continuing_subword_prefix="##", unk_token="[UNK]")
    paths["bpe_prefix_fuse_unk"] = out / "bpe_prefix_fuse_unk.json"
    paths["bpe_prefix_fuse_unk"].write_text(json.dumps(d, ensure_ascii=False))
    vocab = d["model"]["vocab"]
    for b in range(256):
        vocab.setdefault(f"<0x{b:02X}>", len(vocab))
    for b in range(0, 256, 3):  # some bytes missing: those characters fall back to [UNK]
        vocab.pop(f"<0x{b:02X}>")
    d["model"].update(fuse_unk=False, byte_fallback=True)
    paths["bpe_byte_fallback"] = out / "bpe_byte_fallback.json"
    paths["bpe_byte_fallback"].write_text(json.dumps(d, ensure_ascii=False))
    return paths


def fixtures(out: Path) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    lines = corpus()
    model = train_spm(out, lines, vocab_size=4000)
    manifest = [
        {"name": "flux_tiny_clip", "tokenizer": str(FLUX_TINY / "tokenizer" / "tokenizer.json"), "max_length": 77,
         "pad_id": 1},
        {"name": "flux_tiny_t5", "tokenizer": str(FLUX_TINY / "tokenizer_2" / "tokenizer.json"), "max_length": 64,
         "pad_id": 0},
    ]
    manifest += engine_tokenizers(out)
    for name, path in t5_tokenizers(out, model).items():
        manifest.append({"name": name, "tokenizer": str(path), "max_length": 512 if name == "t5_flux" else 32,
                         "pad_id": 0})
    for name, path in bpe_tokenizers(out, lines).items():
        manifest.append({"name": name, "tokenizer": str(path), "max_length": 77, "pad_id": 0 if "gpt2" in name else 1})
    (out / "prompts.json").write_text(json.dumps(prompts(), ensure_ascii=False), encoding="utf-8")
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("golden")
    g.add_argument("--tokenizer", required=True, type=Path)
    g.add_argument("--max-length", required=True, type=int)
    g.add_argument("--pad-id", required=True, type=int)
    g.add_argument("--prompts", required=True, type=Path)
    g.add_argument("--out", required=True, type=Path)
    f = sub.add_parser("fixtures")
    f.add_argument("out", type=Path)
    a = sub.add_parser("all")
    a.add_argument("out", type=Path)
    args = ap.parse_args()
    if args.cmd == "golden":
        data = golden(args.tokenizer, args.max_length, args.pad_id, json.loads(args.prompts.read_text("utf-8")))
        args.out.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    elif args.cmd == "fixtures":
        fixtures(args.out)
    else:
        manifest = fixtures(args.out)
        texts = json.loads((args.out / "prompts.json").read_text("utf-8"))
        for item in manifest:
            data = golden(Path(item["tokenizer"]), item["max_length"], item["pad_id"], texts)
            (args.out / f"golden_{item['name']}.json").write_text(json.dumps(data, ensure_ascii=False), "utf-8")
        print(f"{len(manifest)} tokenizers x {len(texts)} prompts -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
