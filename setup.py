"""The one thing pyproject.toml does not say: the C extensions ww.p2p._native._ext and
ww.core._frames.

conn.c (the libp2p connection in C, design (e) in docs/benchmarks.md), wrapped by ext.c and
linked with libsodium; ./dev installs gcc, libsodium-dev and Python's headers before the
build; the host's lane (:mod:`ww.p2p.lane`) is built on it.  frames.c (Cap'n Proto framing
of untrusted bytes, wrapped by _frames.c) needs nothing but Python's headers;
:mod:`ww.core.capnp_frames` exports it.  (Here rather than in pyproject.toml's
``[tool.setuptools] ext-modules``, which setuptools still calls experimental.)
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "ww.p2p._native._ext",
            sources=["src/ww/p2p/_native/ext.c"],
            depends=["src/ww/p2p/_native/conn.c"],
            libraries=["sodium"],
            extra_compile_args=["-Wall", "-Wextra"],
        ),
        Extension(
            "ww.core._frames",
            sources=["src/ww/core/_frames.c"],
            depends=["src/ww/core/frames.c"],
            extra_compile_args=["-Wall", "-Wextra"],
        ),
    ]
)
