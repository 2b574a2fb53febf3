#!/usr/bin/env python3
"""The real CLIP BPE vocabulary, offline: open_clip ships OpenAI's merges as
open_clip/bpe_simple_vocab_16e6.txt.gz in its PyPI wheel (open-clip-torch==3.3.0); this writes
the vocab.json and merges.txt a diffusers `tokenizer/` folder holds (49,408 tokens: the 256
byte symbols, the same with </w>, the 48,894 merges, <|startoftext|>, <|endoftext|>), as
OpenAI's SimpleTokenizer builds its table. Standard library only.

    python3 tools/parity/clip_vocab.py BPE_GZ OUT_DIR
"""

import gzip
import json
import os
import sys


def bytes_to_unicode():
    """GPT-2's byte ↔ symbol table, in its order: first the printable Latin-1 bytes, each its own
    symbol, then the other bytes in byte order, mapped to the code points from 256 up."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    table = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def main():
    src, out = sys.argv[1], sys.argv[2]
    lines = gzip.open(src).read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408, len(vocab)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({t: i for i, t in enumerate(vocab)}, f, ensure_ascii=False)
    with open(os.path.join(out, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    print(f"{out}: vocab.json ({len(vocab)} tokens), merges.txt ({len(merges)} merges)")


if __name__ == "__main__":
    main()
