"""heap.py on this machine's glibc: freed memory held by malloc goes back to the kernel on trim,
and the arena limit applies. Run in a child process, so the figures are its own."""

from __future__ import annotations

import json
import subprocess
import sys

CHILD = r"""
import json, threading
from finetune_operator import heap

def rss_mib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024

limited = heap.limit_arenas()
blocks = []
def allocate():  # larger than CPython's small-object limit: from malloc, in this thread's arena
    blocks.extend(bytes(1500) for _ in range(40_000))
threads = [threading.Thread(target=allocate) for _ in range(4)]
for t in threads: t.start()
for t in threads: t.join()
held = rss_mib()
keep = blocks[::50]  # a few survivors scattered over the heap, as a cache's entries are
blocks.clear()
freed = rss_mib()
trimmed = heap.trim()
print(json.dumps({"limited": limited, "trimmed": trimmed, "held": held, "freed": freed,
                  "after": rss_mib(), "kept": len(keep)}))
"""


def test_trim_gives_back_what_malloc_kept_of_freed_memory() -> None:
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, check=True)
    figures = json.loads(out.stdout)
    assert figures["limited"] and figures["trimmed"]
    allocated = 4 * 40_000 * 1500 / 2**20  # 229 MiB
    assert figures["held"] - figures["after"] > 0.8 * allocated, figures
    assert figures["freed"] - figures["after"] > 0.5 * allocated, figures  # free() alone kept it
