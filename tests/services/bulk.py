"""The bulk blob served by payment-service at GET /bytes.

`ensure(path)` creates the file once (deterministic pseudo-random bytes, not periodic) and
returns its sha256 hex digest, kept beside it in `<path>.sha256`. It is idempotent and safe
to call concurrently (flock), so the test harness (`bulk.py PATH`, prints the digest) and the
service (on the first request) can both call it, whichever comes first.
"""

import fcntl
import hashlib
import os
import random
import sys

SIZE = 100 * 1024 * 1024
CHUNK = 1 << 20
SEED = 0x6D69_7272_6F72_64  # "mirrord"


def ensure(path):
    sha_path = path + ".sha256"
    with open(path + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.exists(path) and os.path.exists(sha_path):
            with open(sha_path, encoding="ascii") as f:
                return f.read().strip()
        rng = random.Random(SEED)
        digest = hashlib.sha256()
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            left = SIZE
            while left > 0:
                block = rng.randbytes(min(CHUNK, left))
                digest.update(block)
                f.write(block)
                left -= len(block)
        hexdigest = digest.hexdigest()
        with open(sha_path + ".tmp", "w", encoding="ascii") as f:
            f.write(hexdigest + "\n")
        os.replace(tmp, path)
        os.replace(sha_path + ".tmp", sha_path)
        return hexdigest


if __name__ == "__main__":
    print(ensure(sys.argv[1]))
