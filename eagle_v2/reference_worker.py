"""Runs INSIDE the reference environment (eagle-llm 1.2.1, transformers 4.36, CPU torch).

Never imports specforge_het. Protocol (see eagle_v2/protocol.py, the runner's side):
  stdin   one JSON request  {"protocol": 1, "base_path", "draft_path", "work_dir", "tasks": [...], ...}
  stdout  one line          "@@EAGLE_BRIDGE@@ " + JSON response; everything else goes to stderr
  files   tensors in safetensors files under work_dir (never pickle)
Every task runs on its own: a failing task is reported under "errors" and the others still run.

The reference code runs unmodified. Two things are set up around it, both recorded in the response:
  * a compatibility view of the base folder (work_dir/base_compat): the weights linked, config.json
    and tokenizer files translated from the transformers-5 layout to what transformers 4.36 reads;
  * the draft is built with EaModel's own constructor and `load_state_dict(strict=True)` from
    model.safetensors (EaModel.from_pretrained reads only pytorch_model.bin through torch.load).
Optional `rope_theta_shim`: set every rotary embedding's base to the checkpoint's rope_theta
(eagle-llm hard-codes 10000); results are then labelled "reference code with rope_theta shim".
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import time
import traceback
from pathlib import Path

PROTOCOL = 1
MARKER = "@@EAGLE_BRIDGE@@ "
TASKS = ("env", "weights", "features", "draft_forward", "tree", "generate")
CUDA_PATTERN = re.compile(r"\.cuda\(|torch\.cuda\.|device\s*=\s*[\"']cuda|\.to\([\"']cuda")


# ------------------------------------------------------------------ environment facts
def cuda_call_sites(package_dir: Path) -> list[str]:
    """'file:line: code' for every CUDA call in the reference's inference code (eagle/model)."""
    out = []
    for path in sorted((package_dir / "model").glob("*.py")):
        for no, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
            code = line.split("#", 1)[0]
            if CUDA_PATTERN.search(code):
                out.append(f"eagle/model/{path.name}:{no}: {code.strip()}")
    return out


def env_facts() -> dict:
    import importlib.metadata as md

    import eagle
    import torch
    import transformers

    pkg = Path(eagle.__file__).resolve().parent
    sources = "\n".join(p.read_text(errors="replace") for p in (pkg / "model").glob("*.py"))
    from eagle.model.choices import mc_sim_7b_63
    from eagle.model.utils import TOPK

    return {
        "eagle_llm": md.version("eagle-llm"), "torch": torch.__version__, "transformers": transformers.__version__,
        "python": sys.version.split()[0], "cuda_available": torch.cuda.is_available(),
        "package_dir": str(pkg), "cuda_call_sites": cuda_call_sites(pkg),
        "has_dynamic_tree": any(w in sources for w in ("total_token", "total_tokens")),
        "tree_choices": [list(p) for p in mc_sim_7b_63], "topk": TOPK,
    }


# ------------------------------------------------------------------ base folder translation
def compat_base_folder(src: Path, dst: Path) -> list[str]:
    """A view of `src` that transformers 4.36 loads; returns the translations applied."""
    dst.mkdir(parents=True, exist_ok=True)
    notes = []
    for f in src.iterdir():
        if f.name in ("config.json", "tokenizer_config.json", "tokenizer.json") or f.is_dir():
            continue
        link = dst / f.name
        if not link.exists():
            link.symlink_to(f.resolve())
    cfg = json.loads((src / "config.json").read_text())
    rope = cfg.pop("rope_parameters", None)
    if isinstance(rope, dict) and "rope_theta" in rope:
        cfg.setdefault("rope_theta", rope["rope_theta"])
        notes.append("config.json: rope_parameters.rope_theta -> rope_theta")
    if "dtype" in cfg and "torch_dtype" not in cfg:
        cfg["torch_dtype"] = cfg.pop("dtype")
        notes.append("config.json: dtype -> torch_dtype")
    (dst / "config.json").write_text(json.dumps(cfg, indent=1))
    tcfg_path = src / "tokenizer_config.json"
    if tcfg_path.is_file():
        tcfg = json.loads(tcfg_path.read_text())
        if tcfg.get("tokenizer_class") not in (None, "PreTrainedTokenizerFast", "LlamaTokenizerFast", "GPT2TokenizerFast"):
            notes.append(f"tokenizer_config.json: tokenizer_class {tcfg['tokenizer_class']} -> PreTrainedTokenizerFast")
            tcfg["tokenizer_class"] = "PreTrainedTokenizerFast"
        (dst / "tokenizer_config.json").write_text(json.dumps(tcfg, indent=1))
    tok_path = src / "tokenizer.json"
    if tok_path.is_file():
        tok = json.loads(tok_path.read_text(encoding="utf-8"))
        merges = tok.get("model", {}).get("merges")
        if merges and isinstance(merges[0], list):
            if any(" " in a or " " in b for a, b in merges):
                raise ValueError("tokenizer.json merges contain spaces; cannot write them in the old 'a b' format")
            tok["model"]["merges"] = [f"{a} {b}" for a, b in merges]
            notes.append("tokenizer.json: merges [a, b] pairs -> 'a b' strings (tokenizers 0.15 format)")
        (dst / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False), encoding="utf-8")
    return notes


def set_rope_theta(module, theta: float) -> int:
    """Set every rotary embedding under `module` to base `theta` (inv_freq and cos/sin cache)."""
    import torch

    n = 0
    for m in module.modules():
        if type(m).__name__.endswith("RotaryEmbedding") and hasattr(m, "inv_freq"):
            inv = 1.0 / (theta ** (torch.arange(0, m.dim, 2).float() / m.dim))
            m.base = theta
            m.inv_freq.copy_(inv.to(m.inv_freq.device))
            m._set_cos_sin_cache(seq_len=m.max_seq_len_cached, device=m.inv_freq.device, dtype=torch.get_default_dtype())
            n += 1
    return n


def rotary_bases(module) -> list[float]:
    return sorted({float(m.base) for m in module.modules() if type(m).__name__.endswith("RotaryEmbedding")})


# ------------------------------------------------------------------ loading
def load_reference(req: dict, work: Path):
    import torch
    from eagle.model.ea_model import EaModel
    from eagle.model.modeling_llama_kv import LlamaForCausalLM as KVLlamaForCausalLM
    from safetensors.torch import load_file

    compat = work / "base_compat"
    notes = compat_base_folder(Path(req["base_path"]), compat)
    base = KVLlamaForCausalLM.from_pretrained(str(compat), torch_dtype=torch.float32)
    draft_dir = Path(req["draft_path"])
    model = EaModel(base, str(compat), str(draft_dir / "config.json"))
    state = load_file(str(draft_dir / "model.safetensors"))
    if "embed_tokens.weight" not in state:
        state["embed_tokens.weight"] = base.model.embed_tokens.weight.detach().clone()
        notes.append("draft: embed_tokens.weight absent, filled from the base embedding (as EAGLE training does)")
    result = model.ea_layer.load_state_dict(state, strict=True)
    model.eval()
    base_theta = float(getattr(base.config, "rope_theta", 10000.0))
    draft_theta = float(json.loads((draft_dir / "config.json").read_text()).get("rope_theta", 10000.0))
    info = {"translations": notes, "load_state_dict": str(result), "base_rope_theta_config": base_theta,
            "draft_rope_theta_config": draft_theta, "rope_theta_shim": bool(req.get("rope_theta_shim"))}
    if req.get("rope_theta_shim"):
        info["shimmed_rotary_modules"] = set_rope_theta(base, base_theta) + set_rope_theta(model.ea_layer, draft_theta)
    info["base_rotary_bases"] = rotary_bases(base)
    info["draft_rotary_bases"] = rotary_bases(model.ea_layer)
    info["eos_token_id"] = model.tokenizer.eos_token_id
    return model, info


# ------------------------------------------------------------------ tasks
def task_weights(model, req, work: Path) -> dict:
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.ea_layer.state_dict().items()}
    save_file(state, str(work / "ref_weights.safetensors"))
    return {"file": "ref_weights.safetensors", "tensors": len(state)}


def _inputs(work: Path, req) -> dict:
    from safetensors.torch import load_file

    return load_file(str(work / req["inputs"]))


def task_features(model, req, work: Path) -> dict:
    """The reference base's final normed hidden states and logits on the same token ids."""
    import torch
    from safetensors.torch import save_file

    ids = _inputs(work, req)["prompt_ids"]
    with torch.no_grad():
        hidden = model.base_model.model(input_ids=ids)[0]
        logits = model.base_model.lm_head(hidden)
    save_file({"hidden": hidden.contiguous(), "logits": logits.contiguous()}, str(work / "ref_features.safetensors"))
    return {"file": "ref_features.safetensors"}


def task_draft_forward(model, req, work: Path) -> dict:
    """The reference draft on OUR base features: hidden_out and logits (base LM head)."""
    import torch
    from safetensors.torch import save_file

    x = _inputs(work, req)
    model.ea_layer.reset()
    with torch.no_grad():
        out = model.ea_layer(x["draft_features"], input_ids=x["draft_ids"])
        logits = model.base_model.lm_head(out)
    save_file({"hidden_out": out.contiguous(), "logits": logits.contiguous()}, str(work / "ref_draft.safetensors"))
    return {"file": "ref_draft.safetensors"}


def task_tree(model, req, work: Path) -> dict:
    """EAGLE-1 static tree (mc_sim_7b_63) built by the reference from OUR base features."""
    import torch
    from eagle.model.choices import mc_sim_7b_63
    from eagle.model.utils import generate_candidates, generate_tree_buffers
    from safetensors.torch import save_file

    x = _inputs(work, req)
    ids, feats, root = x["prompt_ids"], x["prompt_features"], x["root"].view(1, 1)
    buffers = generate_tree_buffers(mc_sim_7b_63, device="cpu")
    model.ea_layer.reset_kv()
    with torch.no_grad():
        tree_logits = model.ea_layer.topK_genrate(feats, torch.cat([ids, root], dim=1), model.base_model.lm_head, None)
    _, _, tree_candidates = generate_candidates(tree_logits, buffers["tree_indices"], buffers["retrieve_indices"],
                                                root, None)
    model.ea_layer.reset_kv()
    save_file({"tokens": tree_candidates[0].contiguous(), "attn_mask": buffers["tree_attn_mask"][0, 0].contiguous(),
               "position_ids": buffers["tree_position_ids"].contiguous(),
               "retrieve_indices": buffers["retrieve_indices"].contiguous()}, str(work / "ref_tree.safetensors"))
    return {"file": "ref_tree.safetensors"}


def _consume(gen, n_prompt: int, max_new: int) -> tuple[list[int], list[int]]:
    """Drive a reference generator; per-step appended token counts and the new tokens."""
    lengths, prev, out = [], n_prompt, None
    for out in gen:
        lengths.append(int(out.shape[1]) - prev)
        prev = int(out.shape[1])
        if prev - n_prompt >= max_new:
            break
    return ([] if out is None else out[0, n_prompt:].tolist()), lengths


def task_generate(model, req, work: Path) -> dict:
    """Greedy ea_generate (speculative, EAGLE-1 tree) and naive_generate (base only) per prompt."""
    import torch

    max_new = int(req["max_new_tokens"])
    prompts = [torch.tensor([p], dtype=torch.long) for p in req["prompts"]]
    modes = {"speculative": model.ea_generate, "base-only": model.naive_generate}
    if req.get("warmup", True) and prompts:
        for fn in modes.values():
            _consume(fn(prompts[0], temperature=0.0, max_steps=4), prompts[0].shape[1], 4)
    runs = []
    for i, ids in enumerate(prompts):
        for mode, fn in modes.items():
            t0 = time.perf_counter()
            tokens, lengths = _consume(fn(ids, temperature=0.0, max_steps=max_new), ids.shape[1], max_new)
            runs.append({"prompt": i, "mode": mode, "tokens": tokens, "accept_lengths": lengths,
                         "seconds": time.perf_counter() - t0})
    return {"runs": runs, "timing": "wall time of the generator incl. prefill, float32, CPU"}


TASK_FNS = {"weights": task_weights, "features": task_features, "draft_forward": task_draft_forward,
            "tree": task_tree, "generate": task_generate}


def _error(exc: BaseException) -> str:
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" at {Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else ""
    return f"{type(exc).__name__}: {exc}{where}"


def handle(req: dict) -> dict:
    if req.get("protocol") != PROTOCOL:
        return {"protocol": PROTOCOL, "ok": False, "errors": {"request": f"protocol {req.get('protocol')!r} != {PROTOCOL}"}}
    import torch

    torch.set_num_threads(int(req.get("threads", 1)))
    work = Path(req["work_dir"])
    work.mkdir(parents=True, exist_ok=True)
    resp: dict = {"protocol": PROTOCOL, "ok": True, "errors": {}, "results": {}}
    tasks = [t for t in req.get("tasks", TASKS) if t in TASKS]
    unknown = sorted(set(req.get("tasks", ())) - set(TASKS))
    if unknown:
        resp["errors"]["request"] = f"unknown tasks {unknown}; known: {list(TASKS)}"
    try:
        resp["env"] = env_facts()
    except Exception as exc:  # reported to the runner, which decides
        resp["errors"]["env"] = _error(exc)
    needs_model = [t for t in tasks if t != "env"]
    if not needs_model:
        return resp
    try:
        t0 = time.perf_counter()
        model, resp["load"] = load_reference(req, work)
        resp["load"]["seconds"] = round(time.perf_counter() - t0, 2)
    except Exception as exc:
        resp["ok"] = False
        resp["errors"]["load"] = _error(exc)
        return resp
    for task in needs_model:
        try:
            resp["results"][task] = TASK_FNS[task](model, req, work)
        except Exception as exc:
            resp["errors"][task] = _error(exc)
    return resp


def main() -> int:
    real_stdout = sys.stdout
    try:
        req = json.loads(sys.stdin.read())
    except json.JSONDecodeError as exc:
        real_stdout.write(MARKER + json.dumps({"protocol": PROTOCOL, "ok": False, "errors": {"request": str(exc)}}) + "\n")
        return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with contextlib.redirect_stdout(sys.stderr):  # the reference prints; keep stdout for the response
        resp = handle(req)
    real_stdout.write(MARKER + json.dumps(resp) + "\n")
    real_stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
