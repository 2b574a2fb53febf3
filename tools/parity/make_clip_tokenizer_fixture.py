#!/usr/bin/env python3
"""Reference token ids for hrf's CLIP tokenizer: transformers' CLIPTokenizer (5.23.0, backed by
the tokenizers library) on the vocabulary tools/parity/clip_vocab.py makes, for prompts with
punctuation, contractions, digits, unicode (accents, NFC/NFD forms, Greek, CJK, emoji) and one
longer than 77 tokens; padded and truncated to 77 as Stable Diffusion pipelines call it.
Writes host/hrf-diffusion/tests/fixtures/clip_tokenizer.json.

    python -m pip install transformers==5.23.0   (any venv)
    python tools/parity/make_clip_tokenizer_fixture.py VOCAB_DIR
"""

import json
import os
import sys
import unicodedata

import transformers
from transformers import CLIPTokenizer

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
PROMPTS = [
    "a photo of a cat",
    "A Photo of a CAT, sitting on a mat!",
    "an astronaut riding a horse on mars, 4k, trending on artstation",
    "it's a dog's life -- isn't it? they'll say we've done it, I'm sure you'd agree",
    "   lots   of\twhite\nspace   ",
    "café crème brûlée",
    unicodedata.normalize("NFD", "café crème brûlée"),
    "ΣΊΣΥΦΟΣ and Ὀδυσσεύς",
    "東京タワーの夜景、写真",
    "a 🐱 and a 🐶 🎉🎉",
    "numbers 1234567 and 3.14159, 2nd place",
    "<tag> & [brackets] {braces} (parens) ~tilde~ @at #hash $dollar %percent ^caret *star",
    "“smart quotes” and ‘single’ — em dash … ellipsis",
    "",
    " ".join(["a very long prompt with many words that goes on and on"] * 12),
]


def main():
    tok = CLIPTokenizer(vocab=os.path.join(sys.argv[1], "vocab.json"), merges=os.path.join(sys.argv[1], "merges.txt"))
    cases = []
    for p in PROMPTS:
        ids = tok(p, padding="max_length", max_length=77, truncation=True)["input_ids"]
        raw = tok(p, add_special_tokens=False)["input_ids"]
        cases.append({"prompt": p, "ids": ids, "unpadded": raw})
    out = os.path.join(ROOT, "host", "hrf-diffusion", "tests", "fixtures", "clip_tokenizer.json")
    with open(out, "w", encoding="utf-8") as f:
        json.dump({"transformers": transformers.__version__, "max_length": 77, "cases": cases}, f, ensure_ascii=False, indent=0)
    print(f"{out}: {len(cases)} prompts")


if __name__ == "__main__":
    main()
