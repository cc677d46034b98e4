"""Runtime plumbing, apart from the maths: jit dispatch, compiler options, chunking, the mesh.

Jit dispatch (``dispatch``), XLA compiler options (``compiler``), fixed-size chunking
(``chunks``), the device mesh for data parallelism (``mesh``, also reachable as
``fpn_jax.parallel``) and several processes on one mesh (``distributed``, with the
cross-process checks of ``agreement``).
"""

from fpn_jax.runtime import agreement, chunks, compiler, dispatch, distributed, mesh
from fpn_jax.runtime.compiler import compiler_options

__all__ = ["agreement", "chunks", "compiler", "compiler_options", "dispatch", "distributed", "mesh"]
