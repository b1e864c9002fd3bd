"""The one thing pyproject.toml cannot declare yet in a stable form: the codecs' loops in C,
the PLANES codec's split and join (casreg/content/_planes_c.c) and the DELTA codec's
subtract-or-xor (casreg/content/_delta_c.c). Both extensions are optional: where they cannot
be built (no C compiler, no Python headers) the install still succeeds, and
casreg/content/planes.py and delta.py do the same work with numpy, slower
(docs/benchmarks-codec.md)."""

from setuptools import Extension, setup

setup(ext_modules=[Extension(f"casreg.content.{name}", [f"casreg/content/{name}.c"], optional=True,
                             depends=["casreg/content/_loops.h"],  # (shipped in the sdist too)
                             extra_compile_args=["-O3"]) for name in ("_planes_c", "_delta_c")])
