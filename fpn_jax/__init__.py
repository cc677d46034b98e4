"""fpn-jax: Flow Plugin Networks in pure JAX.

Wielopolski, Koperski, Zięba, "Flow Plugin Network for conditional generation". A frozen
autoencoder's latents ``z = E(x)`` get a conditional normalizing flow ``p(z | y)``;
sampling, Bayes-rule classification and attribute manipulation then happen in latent space.

Data flows one way through the subpackages::

    data → autoencoders (frozen base models) → latents → flows / train → inference
         → latents.decode → evaluation (metrics, judge, plots, reports) → experiments

``nn`` holds the layers the models are built from, ``runtime`` the plumbing (jit dispatch,
compiler options, chunking, the device mesh), ``checkpoint`` and ``registry`` save and
rebuild any model, ``convert`` reads PyTorch files. This module is the composition root:
importing it imports the built-in models, which registers their architectures.
"""

from fpn_jax import autoencoders, checkpoint, data, evaluation, latents, nn, registry, runtime, train, validation
from fpn_jax.data.context import one_hot
from fpn_jax.evaluation import judge
from fpn_jax.flows import ConditionalFlow, ConditionalMAF, ConditionalRealNVP
from fpn_jax.inference import class_log_likelihoods, classify, manipulate
from fpn_jax.runtime import mesh as parallel
from fpn_jax.runtime.compiler import compiler_options
from fpn_jax.train import History, TrainConfig, fit

__all__ = [
    "ConditionalFlow",
    "ConditionalMAF",
    "ConditionalRealNVP",
    "History",
    "TrainConfig",
    "autoencoders",
    "checkpoint",
    "class_log_likelihoods",
    "classify",
    "compiler_options",
    "data",
    "evaluation",
    "fit",
    "judge",
    "latents",
    "manipulate",
    "nn",
    "one_hot",
    "parallel",
    "registry",
    "runtime",
    "train",
    "validation",
]
__version__ = "0.1.0"
