"""teacherlm_jax: TeacherLM (He et al. 2023) in JAX/Flax.

The public names load on first use (PEP 562): `import teacherlm_jax.main` for `--help`, or any module of the
package, does not start jax, flax or transformers."""
import importlib
from typing import Any

_PUBLIC = {"from_pretrained": "teacherlm_jax.models.hf", "save_pretrained": "teacherlm_jax.models.hf",
           "generate": "teacherlm_jax.generation", "load_tokenizer": "teacherlm_jax.tokenizers"}

__all__ = ["from_pretrained", "generate", "load_tokenizer", "save_pretrained"]


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'teacherlm_jax' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
