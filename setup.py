"""Only the optional C helpers live here; everything else is in pyproject.toml.

gslb._udpbatch batches UDP receive/send (recvmmsg/sendmmsg); edge._heads reads a
pass-through's request and response heads in one call each. Both are optional:
if one cannot be compiled, `pip install` still succeeds and its caller uses the
pure-Python way (recvfrom/sendto; llhttp's callbacks).
"""
from setuptools import Extension, setup

setup(ext_modules=[Extension(name, [source], optional=True, extra_compile_args=["-O2"])
                   for name, source in (("gslb._udpbatch", "gslb/_udpbatch.c"),
                                        ("edge._heads", "edge/_heads.c"))])
