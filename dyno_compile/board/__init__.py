"""An emulated aarch64 board the project sets up itself: a Debian arm64 userland run by QEMU
user-mode emulation (:mod:`~dyno_compile.board.sysroot`), a TVM RPC server in it registered
with a tracker on this machine (:mod:`~dyno_compile.board.server`), and a check that an
artifact's ARM library computes what the host library does (:mod:`~dyno_compile.board.check`).

It gives correctness on real ARM code without ARM hardware; its times are emulation's
(hundreds of times slower than a board) and are never stored as a board's.
"""
