# The device process on the MicroPython unix port:
#   micropython -X heapsize=64k firmware/main_unix.py CONFIG PORT [options]
# Options and trace lines: lbnode/unix_main.py. The packages (lbnode, lbwire,
# lbcrypto) are imported from $LBNODE_LIB if set -- a directory of .mpy files
# from mpy-cross, which a 64 KB heap needs -- else from this file's directory.
import os
import sys

_lib = os.getenv("LBNODE_LIB")
if not _lib:
    _lib = __file__.rpartition("/")[0] or "."
sys.path.insert(0, _lib)

from lbnode.unix_main import main

main(sys.argv[1:])
