"""Build of the compiled SIP scanner only; the project's metadata is in pyproject.toml.

``optional=True``: without a C compiler (or Python headers) the install still succeeds and
``meter.codecs.sip`` uses its pure-Python parser (the reference; see codecs/sip.py ``use_codec``).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "meter.codecs._sipscan",
            sources=["codecs/_sipscan.c"],
            optional=True,
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"],
        )
    ],
)
