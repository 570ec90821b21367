"""Training on from a trained draft (--modeling.init_draft) and bfloat16 autocast (--training.precision bf16)."""

from __future__ import annotations

import pytest
import torch

from specforge_het.algorithms.io import load_draft
from specforge_het.config import ConfigError
from specforge_het.train import build_trainer, main
from tests.test_train import _losses, tiny_cfg

V3 = dict(algorithm="eagle_v3", vocab="reduced", draft_vocab_size=150)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, base_dirs, conv_file):
    out = tmp_path_factory.mktemp("warm") / "first"
    cfg = tiny_cfg(base_dirs["llama"], conv_file, out, **V3)
    cfg.training.max_steps, cfg.training.learning_rate = 20, 3e-3
    main(cfg, ["test"])
    return out


def test_init_draft_starts_from_the_folder_and_keeps_its_vocabulary(bases, base_dirs, conv_file, trained, tmp_path):
    first = load_draft(trained, bases["llama"]).state_dict()
    # other architecture keys are ignored: the folder decides (here a different reduced-vocabulary size)
    cfg = tiny_cfg(base_dirs["llama"], conv_file, tmp_path / "more", algorithm="eagle_v3", vocab="reduced",
                   draft_vocab_size=120, init_draft=str(trained))
    trainer, _ = build_trainer(cfg, [])
    start = trainer.model.draft.state_dict()
    assert start.keys() == first.keys()
    for k in first:
        torch.testing.assert_close(start[k], first[k], msg=k)
    trainer.train()
    warm = _losses(trainer)
    fresh, _ = build_trainer(tiny_cfg(base_dirs["llama"], conv_file, tmp_path / "fresh", **V3), [])
    fresh.train()
    assert warm[0] < _losses(fresh)[0] - 0.2  # the 20 steps already taken carry over (a fresh draft: 12.26)
    after = trainer.model.draft.state_dict()
    assert any(not torch.equal(after[k], first[k]) for k in first if after[k].is_floating_point())
    torch.testing.assert_close(after["vocab.d2t"], first["vocab.d2t"])


def test_init_draft_foreign_vocabulary_keeps_its_tokenizer(bases, base_dirs, conv_file, tok_b_dir, tmp_path):
    kw = dict(algorithm="eagle_v3", vocab="foreign", draft_hidden_size=48, draft_tokenizer=tok_b_dir)
    first = tmp_path / "foreign"
    main(tiny_cfg(base_dirs["llama"], conv_file, first, **kw), ["test"])
    cfg = tiny_cfg(base_dirs["llama"], conv_file, tmp_path / "more", init_draft=str(first), **kw)
    trainer, _ = build_trainer(cfg, [])
    draft = trainer.model.draft
    saved = load_draft(first, bases["llama"]).draft_tokenizer
    assert draft.draft_tokenizer is not None and draft.draft_tokenizer.get_vocab() == saved.get_vocab()
    trainer.train()
    trainer.save_model(str(tmp_path / "more"))
    again = load_draft(tmp_path / "more", bases["llama"])  # the saved folder carries the tokenizer on
    assert again.cfg.embed == "foreign" and again.draft_tokenizer is not None
    wide = tiny_cfg(base_dirs["llama"], conv_file, tmp_path / "wide", init_draft=str(first), widen_vocab=500, **kw)
    with pytest.raises(ConfigError, match="widens a reduced vocabulary.*'foreign'"):
        build_trainer(wide, [])


def test_init_draft_bad_inputs_fail_clearly(base_dirs, conv_file, trained, tok_a, tmp_path):
    from specforge_het.testing import save_tiny_base

    cfg = tiny_cfg(base_dirs["llama"], conv_file, tmp_path / "x", algorithm="eagle_v2", vocab="base", init_draft=str(trained))
    with pytest.raises(ConfigError, match="eagle_v3 draft.*--@eagle_v3"):
        build_trainer(cfg, [])
    cfg = tiny_cfg(base_dirs["llama"], conv_file, tmp_path / "x", init_draft=str(trained), init_from=str(trained), **V3)
    with pytest.raises(ConfigError, match="drop modeling.init_from"):
        build_trainer(cfg, [])
    cfg = tiny_cfg(base_dirs["llama"], conv_file, tmp_path / "x", init_draft=str(tmp_path / "nowhere"), **V3)
    with pytest.raises(ConfigError, match="init_draft.*neither a folder"):
        build_trainer(cfg, [])
    narrow = save_tiny_base(tmp_path / "w48", "llama", tok_a, hidden=48, layers=2)  # a base of another width
    cfg = tiny_cfg(narrow, conv_file, tmp_path / "x", init_draft=str(trained), **V3)
    with pytest.raises(ConfigError, match="made for base"):
        build_trainer(cfg, [])


def test_bf16_autocast_trains_with_float32_weights(base_dirs, conv_file, tmp_path):
    def run(bf16: bool):
        cfg = tiny_cfg(base_dirs["llama"], conv_file, tmp_path / f"bf16_{bf16}", **V3)
        cfg.training.precision = "bf16" if bf16 else "fp32"
        trainer, _ = build_trainer(cfg, [])
        trainer.train()
        return trainer, _losses(trainer)

    t32, l32 = run(False)
    t16, l16 = run(True)
    assert all(p.dtype == torch.float32 for p in t16.model.draft.parameters())
    assert l16[0] == pytest.approx(l32[0], rel=1e-2)  # same draft, same batch: only bf16 rounding
    assert l16 == pytest.approx(l32, rel=1e-1)  # Adam's first steps amplify rounding differences
    assert l16 != pytest.approx(l32, rel=1e-6)  # autocast really ran in bfloat16


def test_precision_setting(monkeypatch, base_dirs, conv_file, tmp_path):
    from specforge_het import train

    cfg = tiny_cfg(base_dirs["llama"], conv_file, tmp_path / "p", **V3)
    cfg.training.precision = "auto"
    from specforge_het.models import precision

    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx512f", "avx512_bf16"})
    monkeypatch.setattr(precision, "bf16_gemm_speedup", lambda: 0.6)
    assert not train.use_bf16(cfg)  # AVX512-BF16 without AMX, where bfloat16 GEMMs measured slower than float32
    monkeypatch.setattr(precision, "bf16_gemm_speedup", lambda: 1.8)
    assert train.use_bf16(cfg)  # ... and where they measured clearly faster
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx512_bf16", "amx_bf16", "amx_tile"})
    assert train.use_bf16(cfg)
    cfg.training.precision = "fp32"
    assert not train.use_bf16(cfg)
    cfg.training.bf16 = True  # the legacy switch still means bf16, and contradicts an explicit fp32
    with pytest.raises(ConfigError, match="contradicts training.precision"):
        build_trainer(cfg, [])
    cfg.training.precision = "auto"
    assert train.use_bf16(cfg)


@pytest.fixture(scope="module")
def narrow(tmp_path_factory, bases, base_dirs, conv_file):
    """A trained draft whose rows hold half the answer tokens the data uses: (folder, answer-token counts, used)."""
    from specforge_het.training.data import load_rows, token_counts

    base = bases["llama"]
    out = tmp_path_factory.mktemp("widen") / "narrow"
    cfg = tiny_cfg(base_dirs["llama"], conv_file, out, **V3)
    counts = token_counts(load_rows(cfg.dataset, base).rows, base.vocab_size)
    used = int((counts > 0).sum())
    cfg.modeling.draft_vocab_size, cfg.training.max_steps = used // 2, 4
    main(cfg, ["test"])
    return out, counts, used


def test_widen_vocab_keeps_the_trained_rows_and_adds_the_data_s_frequent_tokens(bases, base_dirs, conv_file, narrow,
                                                                                tmp_path):
    """--modeling.widen_vocab: the trained rows stay (same logits), the added rows are the base's head rows of
    the most frequent answer tokens the draft could not propose (widen_init base; map: test_new_head_rows_*),
    and the widened draft decodes losslessly."""
    from specforge_het.inference.decoder import Decoder
    from specforge_het.inference.proposer import DraftProposer, TreeSpec

    base = bases["llama"]
    path, counts, used = narrow
    first = load_draft(path, base)
    cfg = tiny_cfg(base_dirs["llama"], conv_file, tmp_path / "wide", init_draft=str(path), widen_vocab=used + 5,
                   widen_init="base", **V3)
    trainer, _ = build_trainer(cfg, [])
    wide = trainer.model.draft
    old, new = first.vocab.d2t, wide.vocab.d2t
    assert old.numel() == used // 2 and torch.equal(new, new.sort().values)
    assert used <= new.numel() < used + 5  # only ids the data uses are added (the narrow rows may hold an unused EOS)
    assert set(old.tolist()) <= set(new.tolist()) and wide.cfg.draft_vocab_size == new.numel()
    pos = torch.searchsorted(new, old)
    torch.testing.assert_close(wide.lm_head.weight[pos], first.lm_head.weight)
    added = torch.ones(new.numel(), dtype=torch.bool)
    added[pos] = False
    torch.testing.assert_close(wide.lm_head.weight[added], base.lm_head.weight[new[added]])
    left = torch.ones(base.vocab_size, dtype=torch.bool)
    left[new] = False
    assert counts[new[added]].min() > 0 and counts[new[added]].min() >= counts[left].max()
    for k, v in first.state_dict().items():  # every other weight carried over
        if k not in ("lm_head.weight", "vocab.d2t"):
            torch.testing.assert_close(wide.state_dict()[k], v, msg=k)
    wide.eval()
    ids = base.tokenizer("the cat sat on the", return_tensors="pt").input_ids
    spec = Decoder(base, DraftProposer(wide, TreeSpec("dynamic", 3, 3, 8))).generate(ids, 16)
    assert spec.tokens == Decoder(base).generate(ids, 16).tokens


def test_widen_vocab_defaults_to_the_map_adds_the_k_most_frequent_and_refuses_bad_sizes(bases, base_dirs, conv_file,
                                                                                        narrow, tmp_path):
    from specforge_het.algorithms.build import new_head_rows

    base = bases["llama"]
    path, counts, used = narrow
    first = load_draft(path, base)
    old = first.vocab.d2t
    cfg = tiny_cfg(base_dirs["llama"], conv_file, tmp_path / "wide_map", init_draft=str(path), widen_vocab=used + 5,
                   **V3)  # the default widen_init: map
    mapped = build_trainer(cfg, [])[0].model.draft
    torch.testing.assert_close(mapped.lm_head.weight, new_head_rows(base.lm_head.weight.detach(), old,
                                                                    first.lm_head.weight.detach(),
                                                                    mapped.vocab.d2t, "map"))
    k = 3  # fewer than the missing ids: the k most frequent of them are added
    cfg = tiny_cfg(base_dirs["llama"], conv_file, tmp_path / "wide3", init_draft=str(path), widen_vocab=old.numel() + k,
                   **V3)
    some = build_trainer(cfg, [])[0].model.draft.vocab.d2t
    added3 = sorted(set(some.tolist()) - set(old.tolist()))
    missing = torch.ones(base.vocab_size, dtype=torch.bool)
    missing[old] = False
    assert len(added3) == k and counts[added3].min() >= counts[missing].sort(descending=True).values[k]
    bad = tiny_cfg(base_dirs["llama"], conv_file, tmp_path / "x", widen_vocab=used // 2, init_draft=str(path), **V3)
    with pytest.raises(ConfigError, match=f"must exceed the draft's {used // 2} rows"):
        build_trainer(bad, [])
    bad = tiny_cfg(base_dirs["llama"], conv_file, tmp_path / "x", widen_vocab=200, **V3)
    with pytest.raises(ConfigError, match="give --modeling.init_draft"):
        build_trainer(bad, [])


@pytest.mark.parametrize("width", [32, 48])  # the tiny base's width, and a draft wider than its base
def test_new_head_rows_map_recovers_a_linear_relation_between_base_and_draft_rows(width):
    """widen_init map: when the trained rows are the base's rows through some linear map, the new rows are the
    base's rows through that same map, at any draft width; the trained rows stay as they were. widen_init base
    copies the base's rows, and across widths it is a clear error."""
    from specforge_het.algorithms.build import new_head_rows

    g = torch.Generator().manual_seed(0)
    base_head, true_map = torch.randn(400, 32, generator=g), torch.randn(32, width, generator=g) / 6
    old = torch.arange(0, 400, 3)  # 134 ids the draft holds, more than the base's width
    trained = base_head[old] @ true_map
    d2t = torch.sort(torch.cat([old, torch.tensor([1, 5, 302, 399])])).values
    head = new_head_rows(base_head, old, trained, d2t, "map")
    torch.testing.assert_close(head, base_head[d2t] @ true_map, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(head[torch.searchsorted(d2t, old)], trained, rtol=0, atol=0)
    if width == 32:
        plain = new_head_rows(base_head, old, trained, d2t, "base")
        added = ~torch.isin(d2t, old)
        torch.testing.assert_close(plain[added], base_head[d2t[added]])
        assert not torch.allclose(plain[added], head[added], atol=1e-2)
    else:
        with pytest.raises(ConfigError, match="widen_init map"):
            new_head_rows(base_head, old, trained, d2t, "base")
    with pytest.raises(ConfigError, match="choose map or base"):
        new_head_rows(base_head, old, trained, d2t, "mean")


def test_grow_layers_starts_as_the_trained_draft_then_trains_the_new_layer(bases, base_dirs, conv_file, trained,
                                                                           tmp_path):
    """--modeling.grow_layers 1: the trained layer and head carry over, the new layer is the base's last layer with
    zero output projections (so the grown draft proposes what the trained one did: same tokens, same accept
    lengths), training moves the new layer, and the saved 2-layer draft decodes losslessly."""
    from specforge_het.inference.decoder import Decoder
    from specforge_het.inference.proposer import DraftProposer, TreeSpec

    base = bases["llama"]
    first = load_draft(trained, base).eval()
    out = tmp_path / "grown"
    trainer, _ = build_trainer(tiny_cfg(base_dirs["llama"], conv_file, out, init_draft=str(trained), grow_layers=1, **V3), [])
    grown = trainer.model.draft
    assert grown.cfg.num_layers == 2 and len(grown.layers) == 2
    start = {k: v.clone() for k, v in grown.state_dict().items()}
    for k, v in first.state_dict().items():
        torch.testing.assert_close(start[k], v, msg=k)
    for k, v in base.layers[-1].state_dict().items():
        want = torch.zeros_like(v) if k.split(".")[1] in ("o_proj", "down_proj") else v
        torch.testing.assert_close(start[f"layers.1.{k}"], want.to(start[f"layers.1.{k}"].dtype), msg=k)
    ids = base.tokenizer("the cat sat on the", return_tensors="pt").input_ids
    spec = TreeSpec("dynamic", 3, 3, 8)

    def run(draft):
        return Decoder(base, DraftProposer(draft.eval(), spec)).generate(ids, 16)

    before, again = run(first), run(grown)
    assert (again.tokens, again.accept_lengths) == (before.tokens, before.accept_lengths)
    trainer.train()
    trainer.save_model(str(out))
    saved = load_draft(out, base)
    assert saved.cfg.num_layers == 2
    assert saved.layers[1].self_attn.o_proj.weight.abs().sum() > 0  # the new layer learnt
    assert run(saved).tokens == Decoder(base).generate(ids, 16).tokens
    with pytest.raises(ConfigError, match="give --modeling.init_draft"):
        build_trainer(tiny_cfg(base_dirs["llama"], conv_file, tmp_path / "x", grow_layers=1, **V3), [])
    with pytest.raises(ConfigError, match="grow_layers is the number of layers to add"):
        build_trainer(tiny_cfg(base_dirs["llama"], conv_file, tmp_path / "y", init_draft=str(trained), grow_layers=-1,
                               **V3), [])


def test_grow_layers_with_another_family_starts_random_with_zero_outputs(bases, tok_a):
    """A draft whose layers are not the base's family or width: the new layer starts from seeded random weights,
    outputs still at zero, so the proposals stay the trained draft's."""
    from conftest import draft_modeling

    from specforge_het.algorithms.build import build_draft, grow_layers
    from specforge_het.inference.decoder import Decoder
    from specforge_het.inference.proposer import DraftProposer, TreeSpec

    base = bases["llama"]
    draft = build_draft(draft_modeling(family="qwen3", hidden=48), base, seed=2).eval()
    grown = grow_layers(draft, base, 1, seed=3).eval()
    assert grown.grown_from.startswith("random") and len(grown.layers) == 2
    new = grown.layers[1]
    assert new.self_attn.o_proj.weight.abs().sum() == 0 and new.mlp.down_proj.weight.abs().sum() == 0
    assert new.self_attn.q_proj.weight.abs().sum() > 0
    torch.testing.assert_close(new.self_attn.q_proj.weight, grow_layers(draft, base, 1, seed=3).layers[1].self_attn.q_proj.weight)
    ids = tok_a("the cat sat on the", return_tensors="pt").input_ids
    spec = TreeSpec("dynamic", 3, 3, 8)
    a = Decoder(base, DraftProposer(draft, spec)).generate(ids, 12)
    b = Decoder(base, DraftProposer(grown, spec)).generate(ids, 12)
    assert (a.tokens, a.accept_lengths) == (b.tokens, b.accept_lengths)
