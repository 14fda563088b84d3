"""Millisecond ticks: MicroPython's time.ticks_* and sleep_ms, with CPython stand-ins.

Deadlines in lbnode are ticks_ms values compared with ticks_diff, so the
wrap of ticks_ms (every 2**30 ms, about 12 days, on most ports) never
matters for the short waits of a link.
"""

try:
    from time import sleep_ms, ticks_add, ticks_diff, ticks_ms
except ImportError:  # CPython
    import time as _time

    def ticks_ms():
        return int(_time.monotonic() * 1000)

    def ticks_diff(a, b):
        return a - b

    def ticks_add(a, b):
        return a + b

    def sleep_ms(ms):
        _time.sleep(ms / 1000)
