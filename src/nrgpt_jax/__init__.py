"""nrgpt_jax: NRGPT, the energy-based GPT (arXiv 2512.16762), and its baselines in JAX/Flax."""

from nrgpt_jax.model_config import MODEL_NAMES, ConfigError, ModelConfig
from nrgpt_jax.models import LanguageModel, build_model, count_params, next_token_loss

__all__ = ["MODEL_NAMES", "ConfigError", "ModelConfig", "LanguageModel", "build_model",
           "count_params", "next_token_loss"]
__version__ = "0.1.0"
