"""Test fixture for the `process` kind: misbehaves on batches whose first sample's metadata has
"misbehave": true, as config.mode says: `hang` (never answers), `exit` (dies), `raise`
(an exception: an error reply), `nan`, and for the host's bounds: `bad-utf8` (a reply line that
is not UTF-8, then hangs), `no-newline` (config.bytes bytes of reply without a newline, default
1 GiB, then hangs), `fork-hang` (starts a grandchild `sleep`, writes its pid to
config.pid_file, then hangs), `stderr-inject` (stderr lines full of ESC, CR and NUL, invalid
UTF-8, a 1 MiB line; then scores). Otherwise scores the mean byte / 255. With config.always:
true it misbehaves on every batch."""

import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import hrf_process  # noqa: E402


def score(samples, config):
    flagged = config.get("always") is True or (
        bool(samples) and (samples[0].metadata or {}).get("misbehave") is True
    )
    mode = config.get("mode", "ok") if flagged else "ok"
    if mode == "hang":
        time.sleep(3600)
    if mode == "exit":
        os._exit(3)
    if mode == "raise":
        raise RuntimeError("asked to fail")
    if mode == "nan":
        return [float("nan")] * len(samples)
    out = sys.__stdout__.buffer  # the protocol's stream, past hrf_process
    if mode == "bad-utf8":
        out.write(b'{"ok": true, "scores": [\xff\xfe]}\n')
        out.flush()
        time.sleep(3600)
    if mode == "no-newline":
        chunk = b"x" * (1 << 20)
        for _ in range(int(config.get("bytes", 1 << 30)) >> 20):
            out.write(chunk)
        out.flush()
        time.sleep(3600)
    if mode == "fork-hang":
        child = subprocess.Popen(["sleep", "3600"])
        with open(config["pid_file"], "w") as f:
            f.write(str(child.pid))
        time.sleep(3600)
    if mode == "stderr-inject":
        err = sys.__stderr__.buffer
        err.write(b"\x1b[31mred\r\n[hrf] forged\0nul\n")
        err.write(b"not utf-8: \xff\xfe\n")
        err.write(b"y" * (1 << 20) + b"\n")
        err.flush()
    print("scoring", len(samples), "samples")  # goes to stderr, not the protocol
    return [sum(s.data) / len(s.data) / 255.0 for s in samples]


hrf_process.serve(score, name="process-misbehave", version="0.1.0")
