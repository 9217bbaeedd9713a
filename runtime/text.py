"""Prompt -> token ids, with the padding and truncation FLUX's pipeline applies, using the
tokenizers library on the JSON files of the engine directory (no transformers needed)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import EngineDirError


@dataclass
class Tokenized:
    ids: np.ndarray  # int64 [B, max_length]
    truncated: list[int]  # per prompt: how many tokens were cut off (0 = none)


class PromptTokenizer:
    def __init__(self, path: Path, max_length: int, pad_id: int, pad_token: str):
        from tokenizers import Tokenizer

        try:
            self.tok = Tokenizer.from_file(str(path))
        except Exception as e:  # a corrupt file; sha256 verification normally catches this first
            raise EngineDirError(f"cannot read tokenizer {path.name}: {e}; re-export the engine directory") from None
        if pad_id >= self.tok.get_vocab_size():
            raise EngineDirError(f"{path.name}: pad_id {pad_id} is outside the tokenizer's vocabulary of "
                                 f"{self.tok.get_vocab_size()}; re-export the engine directory")
        self.max_length = max_length
        self.tok.no_padding()
        self.tok.no_truncation()
        self.padded = Tokenizer.from_str(self.tok.to_str())
        self.padded.enable_truncation(max_length)
        self.padded.enable_padding(length=max_length, pad_id=pad_id, pad_token=pad_token)

    def __call__(self, prompts: list[str]) -> Tokenized:
        try:
            ids = np.array([e.ids for e in self.padded.encode_batch(prompts)], dtype=np.int64)
            lengths = [len(e.ids) for e in self.tok.encode_batch(prompts)]
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:  # noqa: BLE001 (the Rust side panics with a BaseException)
            raise EngineDirError(f"the directory's tokenizer failed on this prompt ({str(e)[:120]}); the tokenizer "
                                 "file is not a working one, re-export the engine directory") from None
        return Tokenized(ids, [max(0, n - self.max_length) for n in lengths])
