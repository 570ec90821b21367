"""Is this the model a user of `transformers` gets? The check behind every HF peer's timed run.

A model straight from `from_pretrained` has no instance-level `forward` (an attribute that shadows
the class's method, as our packed linears set while the decoder runs) and no forward or backward
hooks, on any module, nor global module hooks. `plain_violations` lists every departure from that.
"""

from __future__ import annotations

from torch import nn
from torch.nn.modules import module as torch_module

_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
_GLOBAL_HOOKS = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                 "_global_backward_pre_hooks")


def plain_violations(*models: nn.Module | None) -> list[str]:
    """'<module path>: <what>' for every instance-level forward or hook under `models`, and global hooks."""
    found = [f"torch.nn.modules.module.{name}: {len(hooks)} global hook(s)" for name in _GLOBAL_HOOKS
             if (hooks := getattr(torch_module, name, None))]
    for model in models:
        if model is None:
            continue
        for path, module in model.named_modules():
            where = path or type(model).__name__
            if "forward" in module.__dict__:
                found.append(f"{where}: instance-level forward ({getattr(module.forward, '__qualname__', '?')})")
            for name in _HOOK_DICTS:
                hooks = getattr(module, name, None)
                if hooks:
                    found.append(f"{where}: {len(hooks)} {name.strip('_').replace('_', ' ')}")
    return found


def check_plain(name: str, models: tuple[nn.Module, ...]) -> None:
    """Raise RuntimeError when a model an HF peer runs on is not plain HF (the measurement would not be HF's)."""
    found = plain_violations(*models)
    if found:
        shown = "; ".join(found[:5]) + (f"; … {len(found) - 5} more" if len(found) > 5 else "")
        raise RuntimeError(f"{name} would run on a modified HF model, so it would not measure plain HF: {shown}")
