"""The one thing pyproject.toml cannot declare yet in a stable form: the PLANES codec's split
and join loops in C (casreg/content/_planes_c.c). The extension is optional: where it cannot
be built (no C compiler, no Python headers) the install still succeeds, and
casreg/content/planes.py does the same work with numpy, slower (docs/benchmarks-codec.md)."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("casreg.content._planes_c", ["casreg/content/_planes_c.c"], optional=True,
                             extra_compile_args=["-O3"])])
