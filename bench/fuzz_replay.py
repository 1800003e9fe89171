"""Replay saved fuzzing inputs through one target: ``python -m bench.fuzz_replay TARGET DIR [DIR...]``.

What it is for: an atheris corpus, grown with coverage feedback by ``make fuzz``, replayed through
the compiled SIP scanner built under AddressSanitizer (atheris' own coverage breaks when gcc's ASan
runtime is preloaded, so the sanitised run replays what the guided run found):

    gcc -O1 -g -fsanitize=address -fno-omit-frame-pointer -fPIC -shared \\
        -I$(python -c 'import sysconfig; print(sysconfig.get_paths()["include"])') \\
        codecs/_sipscan.c -o codecs/_sipscan.cpython-311-x86_64-linux-gnu.so
    ASAN_OPTIONS=detect_leaks=0 PYTHONMALLOC=malloc LD_PRELOAD=$(gcc -print-file-name=libasan.so) \\
        python -m bench.fuzz_replay differential /tmp/corpus/differential

(``PYTHONMALLOC=malloc`` gives every bytes object its own allocation, so a read past one is caught.)
Prints the inputs replayed and the findings (exceptions other than the codec's own); exit 1 on any.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

from bench.fuzz_targets import TARGETS


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 2 or args[0] not in TARGETS:
        raise SystemExit(f"usage: python -m bench.fuzz_replay {{{','.join(TARGETS)}}} DIR [DIR...]")
    target = TARGETS[args[0]]
    module = target.load()
    allowed = target.allowed(module)
    files = sorted(p for d in args[1:] for p in Path(d).rglob("*") if p.is_file())
    findings = 0
    for path in files:
        try:
            target.run(module, path.read_bytes())
        except allowed:
            pass
        except Exception as exc:  # a finding: say which input, go on with the others
            findings += 1
            print(f"{path}: {type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}", flush=True)
    print(f"{target.name}: {len(files)} inputs replayed, {findings} finding(s)")
    return 1 if findings else 0


if __name__ == "__main__":
    raise SystemExit(main())
