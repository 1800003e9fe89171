"""One atheris (libFuzzer) target in its own process: ``python -m bench.fuzz_atheris TARGET [libFuzzer args]``.

Started by :mod:`bench.fuzz`; libFuzzer owns the process (it exits at the first crash or at
``-max_total_time``), so each target gets a process of its own.
"""

from __future__ import annotations

import sys

import atheris

from bench.fuzz_targets import TARGETS


def main() -> None:
    target = TARGETS[sys.argv[1]]
    # Coverage feedback from the codecs only: instrumenting pycrate too would slow RAS tenfold.
    with atheris.instrument_imports(include=["meter.codecs"]):
        module = target.load()
    allowed = target.allowed(module)
    run = target.run

    def test_one_input(data: bytes) -> None:
        try:
            run(module, data)
        except allowed:
            pass

    atheris.Setup([sys.argv[0], *sys.argv[2:]], test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
