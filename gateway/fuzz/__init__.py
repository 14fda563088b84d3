"""Coverage-guided fuzz targets for every decoder of remote input (``lowband fuzz``).

Each target is one function ``check(data: bytes) -> None`` that feeds the
bytes to a decoder and states its property: any input gives a value or the
decoder's one documented error; anything else escaping ``check`` is a crash.
Where it helps, ``check`` also builds a value from the bytes and checks a
round trip (``decode(encode(x)) == x``).

The functions are plain Python: the regression vectors under
``tests/fuzz/vectors/<target>/`` are fed to them by an ordinary test,
without atheris. Only :mod:`lowband.gateway.fuzz.runner`, which the CLI
starts in a subprocess (libFuzzer owns that process and ends it with
``sys.exit``), needs atheris. :mod:`lowband.gateway.fuzz.registry` lists the
targets without importing them, so the runner can import each one under
atheris' instrumentation. See ``docs/fuzzing.md``.
"""
