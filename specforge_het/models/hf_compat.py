"""Keywords that differ between the transformers releases we support (>= 5.0, < 6).

The KV cache keyword of decoder layers and decoder bodies: early 5.x releases take
`past_key_values=`; later ones renamed it `cache=` (5.24 accepts both, with a deprecation
shim that transformers 5.40 removes). Passing a name a forward does not declare is silent
(it lands in `**kwargs` and the cache is never filled), so the name is read from the
forward's own signature, once per class.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import transformers

CACHE_KWARGS = ("cache", "past_key_values")  # newest first


@functools.cache
def _cache_kwarg_of(cls: Any) -> str:
    params = inspect.signature(cls.forward).parameters  # follows deprecate_kwarg's __wrapped__
    for name in CACHE_KWARGS:
        if name in params and params[name].kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                     inspect.Parameter.KEYWORD_ONLY):
            return name
    raise TypeError(
        f"{cls.__name__}.forward (transformers {transformers.__version__}) declares none of {list(CACHE_KWARGS)}: "
        "this transformers release renamed the KV-cache keyword again. Install a tested release "
        "(pip install 'transformers>=5.0,<6') or add the new name to specforge_het/models/hf_compat.py."
    )


def cache_kwarg(module_or_class) -> str:
    """The keyword this decoder layer or decoder body takes its KV cache by: 'cache' or 'past_key_values'."""
    cls = module_or_class if isinstance(module_or_class, type) else type(module_or_class)
    return _cache_kwarg_of(cls)
