"""The one compiled part: regression/_fused.c, the fused CPU epoch (see regression/fused.py).

It is optional: where it does not build (no C compiler, or one without GCC's vector
extensions), the install goes on and training computes the same sums through torch.
Everything else about the package is in pyproject.toml.
"""

import sys

from setuptools import Extension, setup

unix = sys.platform != "win32"
setup(
    ext_modules=[
        Extension(
            "regression._fused",
            ["regression/_fused.c"],
            # -O3 for the vector loops; -Wno-psabi: a note about 64-byte vector arguments
            extra_compile_args=["-O3", "-Wno-psabi"] if unix else [],
            optional=True,
        )
    ]
)
