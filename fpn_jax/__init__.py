"""fpn-jax: Flow Plugin Networks in pure JAX.

A frozen autoencoder's latents ``z = E(x)`` get a conditional normalizing flow ``p(z | y)``;
sampling, Bayes-rule classification and attribute manipulation then happen in latent space.

Data flows one way through the subpackages::

    data → autoencoders (frozen base models) → latents → flows / train → inference → latents.decode
    (checkpoint: orbax save/load of any of the models; convert: PyTorch checkpoints → these;
     parallel: every compiled step runs data-parallel over all devices JAX sees)
"""

from fpn_jax import autoencoders, checkpoint, data, latents, parallel
from fpn_jax._compiler import compiler_options
from fpn_jax.context import one_hot
from fpn_jax.flows import ConditionalFlow, ConditionalMAF, ConditionalRealNVP
from fpn_jax.inference import class_log_likelihoods, classify, manipulate
from fpn_jax.train import History, TrainConfig, fit

__all__ = [
    "ConditionalFlow",
    "ConditionalMAF",
    "ConditionalRealNVP",
    "History",
    "TrainConfig",
    "class_log_likelihoods",
    "classify",
    "compiler_options",
    "fit",
    "manipulate",
    "one_hot",
]
__version__ = "0.1.0"
