"""Only the optional C helper lives here; everything else is in pyproject.toml.

gslb._udpbatch batches UDP receive/send (recvmmsg/sendmmsg). It is optional:
if it cannot be compiled, `pip install` still succeeds and the server uses its
pure-Python recvfrom/sendto loop.
"""
from setuptools import Extension, setup

setup(ext_modules=[Extension("gslb._udpbatch", ["gslb/_udpbatch.c"], optional=True,
                             extra_compile_args=["-O2"])])
