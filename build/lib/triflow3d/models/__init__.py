"""Networks: the TriFlow velocity model (and its plain-DiT baseline) and the frozen text encoders.

``MODELS`` maps a name to the class; nothing is imported lazily or registered by side effect. Heavy
optional dependencies (transformers) are imported only when a real text encoder is built.
"""

from triflow3d.models.text_encoder import (
    CachedTextEncoder,
    FakeTextEncoder,
    HFTextEncoder,
    MiniLMTextEncoder,
    TextEmbedding,
    TextEncoder,
    make_text_encoder,
)
from triflow3d.models.triflow import TRIFLOW_PRESETS, TriFlow, TriFlowParams, count_params

MODELS = {"triflow": TriFlow}

__all__ = [
    "MODELS",
    "TRIFLOW_PRESETS",
    "CachedTextEncoder",
    "FakeTextEncoder",
    "HFTextEncoder",
    "MiniLMTextEncoder",
    "TextEmbedding",
    "TextEncoder",
    "TriFlow",
    "TriFlowParams",
    "count_params",
    "make_text_encoder",
]
