"""The child side of hrf's `process` reward kind (framing version 1, see
host/hrf-plugins/src/process.rs): read requests from stdin, answer on stdout.

    import hrf_process

    def score(samples, config):
        # samples: list of hrf_process.Sample (width, height, channels, data: bytes, prompt,
        # metadata); return one float per sample, or (floats, extras) with extras a list of
        # {name: float} dicts.
        return [sum(s.data) / len(s.data) for s in samples]

    hrf_process.serve(score, name="brightness", version="1.0.0")

Anything printed to stderr goes to hrf's log; stdout belongs to the protocol (print() is
redirected to stderr while serving). An exception in `score` becomes an error reply.
"""

import json
import math
import sys
from dataclasses import dataclass
from typing import Any, Callable, Optional

PROTOCOL = 1


@dataclass
class Sample:
    width: int
    height: int
    channels: int
    data: bytes
    prompt: Optional[str]
    metadata: Any


def _reply(out, obj) -> None:
    out.write(json.dumps(obj, allow_nan=False).encode() + b"\n")
    out.flush()


def serve(
    score: Callable[[list, Any], Any],
    *,
    name: str,
    version: str,
    higher_is_better: bool = True,
    batch_hint: Optional[int] = None,
    configure: Optional[Callable[[Any], None]] = None,
) -> None:
    """Answers hrf's requests until stdin closes."""
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # keep stray prints out of the protocol
    config: Any = {}
    while True:
        line = inp.readline()
        if not line:
            return
        try:
            req = json.loads(line)
            op = req.get("op")
            if op == "hello":
                if req.get("protocol") != PROTOCOL:
                    raise ValueError(f"protocol {req.get('protocol')}; this helper speaks {PROTOCOL}")
                config = req.get("config", {})
                if configure:
                    configure(config)
                _reply(out, {"ok": True, "name": name, "version": version,
                             "higher_is_better": higher_is_better, "batch_hint": batch_hint})
            elif op == "score":
                samples = []
                for s in req["samples"]:
                    data = inp.read(s["bytes"])
                    if len(data) != s["bytes"]:
                        raise EOFError("stdin closed inside a batch")
                    samples.append(Sample(s["width"], s["height"], s["channels"], data,
                                          s.get("prompt"), s.get("metadata")))
                result = score(samples, config)
                scores, extras = result if isinstance(result, tuple) else (result, None)
                values = [float(v) for v in scores]
                bad = [i for i, v in enumerate(values) if not math.isfinite(v)]
                if bad:
                    raise ValueError(f"score {bad[0]} is not a finite number ({values[bad[0]]})")
                reply = {"ok": True, "scores": values}
                if extras is not None:
                    reply["extras"] = extras
                _reply(out, reply)
            else:
                raise ValueError(f"unknown op {op!r}")
        except EOFError:
            return
        except Exception as e:  # the reply says what went wrong; the loop goes on
            _reply(out, {"ok": False, "error": f"{type(e).__name__}: {e}"})
