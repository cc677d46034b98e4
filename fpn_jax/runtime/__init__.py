"""Runtime plumbing, apart from the maths: jit dispatch, compiler options, chunking, the mesh.

Jit dispatch (``dispatch``), XLA compiler options (``compiler``), fixed-size chunking
(``chunks``) and the device mesh for data parallelism (``mesh``, also reachable as
``fpn_jax.parallel``).
"""

from fpn_jax.runtime import chunks, compiler, dispatch, mesh
from fpn_jax.runtime.compiler import compiler_options

__all__ = ["chunks", "compiler", "compiler_options", "dispatch", "mesh"]
