"""Recipe fidelity: rope theta inherited from the initialising layers, per-token loss across
gradient accumulation (num_items_in_batch) equal to one big batch."""

from __future__ import annotations

import json

import pytest
import torch

from specforge_het.algorithms.build import build_draft
from specforge_het.config import ConfigError
from specforge_het.train import build_trainer
from tests.conftest import USER_PROMPTS, draft_modeling, write_conversations
from tests.test_train import tiny_cfg


@pytest.fixture(scope="module")
def lm_theta(tmp_path_factory, tok_b):
    """A 'pretrained' tiny llama (width 48) whose layers were trained at rope theta 12345."""
    from specforge_het.testing import tiny_base

    model = tiny_base("llama", tok_b, hidden=48, layers=2)
    model.config.rope_parameters = {"rope_type": "default", "rope_theta": 12345.0}
    path = tmp_path_factory.mktemp("lm_theta") / "lm"
    model.save_pretrained(path)
    tok_b.save_pretrained(path)
    assert json.loads((path / "config.json").read_text())["rope_parameters"]["rope_theta"] == 12345.0
    return str(path)


def _m(lm, **kw):
    return draft_modeling(vocab="foreign", family="llama", hidden=48, tok_dir=lm, init_from=lm, init_layers=[1],
                          draft_num_heads=4, draft_num_kv_heads=2, draft_head_dim=12, draft_intermediate_size=96, **kw)


def test_draft_inherits_rope_theta_of_init_from(llama_base, lm_theta):
    draft = build_draft(_m(lm_theta), llama_base)
    assert draft.cfg.rope_theta == 12345.0
    assert draft.hf_config.rope_parameters["rope_theta"] == 12345.0  # the rotary embedding really uses it
    assert draft.cfg.to_dict()["rope_theta"] == 12345.0  # config.json (read by the exporters) carries it
    assert build_draft(_m(lm_theta, draft_rope_theta=5000.0), llama_base).cfg.rope_theta == 5000.0  # explicit wins


def test_new_draft_inherits_base_rope_theta(llama_base):
    base_theta = llama_base.config.rope_parameters["rope_theta"]
    assert build_draft(draft_modeling(family="qwen3", hidden=48), llama_base).cfg.rope_theta == base_theta
    with pytest.raises(ConfigError, match="draft_rope_theta"):
        build_draft(draft_modeling(family="qwen3", hidden=48, draft_rope_theta=-1.0), llama_base)


@pytest.fixture(scope="module")
def uneven(tmp_path_factory, bases):
    """Conversations with answers of different lengths: micro-batches carry different token counts."""
    path = tmp_path_factory.mktemp("acc") / "conv.jsonl"
    base = bases["llama"]
    write_conversations(path, base, USER_PROMPTS[:2], 24)
    with open(path, "a") as fh:
        for i, p in enumerate(USER_PROMPTS[2:4]):
            fh.write(json.dumps({"id": f"s{i}", "conversations": [{"role": "user", "content": p},
                                                                  {"role": "assistant", "content": "Yes."}]}) + "\n")
    return path


def _grads(trainer, batches):
    """Gradients of one optimizer step as HF's loop takes it: num_items over the step's micro-batches."""
    model = trainer.model
    model.zero_grad(set_to_none=True)
    n = trainer._get_num_items_in_batch(batches, torch.device("cpu"))
    for b in batches:
        trainer.compute_loss(model, b, num_items_in_batch=n).backward()
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


def test_accumulation_equals_one_big_batch(base_dirs, uneven, tmp_path):
    cfg = tiny_cfg(base_dirs["llama"], uneven, tmp_path / "acc", algorithm="eagle_v3", vocab="reduced",
                   draft_vocab_size=150)
    trainer, _ = build_trainer(cfg, [])
    assert trainer.model_accepts_loss_kwargs  # HF then leaves the loss undivided by the accumulation steps
    rows = [trainer.train_dataset[i] for i in range(4)]
    collate = trainer.data_collator
    big = _grads(trainer, [collate(rows)])
    small = _grads(trainer, [collate(rows[:1]), collate(rows[1:])])  # 1 + 3 rows, very different token counts
    for k in big:
        torch.testing.assert_close(small[k], big[k], atol=1e-6 * float(big[k].abs().max()) + 1e-9, rtol=1e-4, msg=k)
    counts = [float(collate([r])["loss_mask"][:, 1:].sum()) for r in rows]
    assert max(counts) > 2 * min(counts)  # a per-micro-batch mean would weight these rows unequally


def test_dataloader_workers_and_length_groups(base_dirs, uneven, tmp_path):
    from specforge_het.train import main

    cfg = tiny_cfg(base_dirs["llama"], uneven, tmp_path / "workers", algorithm="eagle_v3", vocab="reduced",
                   draft_vocab_size=150)
    cfg.training.dataloader_num_workers, cfg.training.max_steps = 2, 2
    main(cfg, ["test"])
    log = json.loads((tmp_path / "workers" / "training_log.json").read_text())
    assert [e["step"] for e in log if "loss" in e] == [1, 2]
    assert all(e["train_tokens_per_s"] > 0 and e["train_tokens"] > 0 for e in log if "loss" in e)
    prov = json.loads((tmp_path / "workers" / "provenance.json").read_text())
    assert prov["trained_tokens_per_s"] > 0
