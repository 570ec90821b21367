"""Few-row linears (models/linears.py): every kernel equals F.linear, the measured choice follows its
rule and is kept per shape, timing-only packed copies are dropped, and routing is scoped."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

from specforge_het.bench.integrity import plain_violations
from specforge_het.models import linears
from specforge_het.models.linears import is_packed, pack_linears, packed_linears, unpack_linears


@pytest.fixture(autouse=True)
def fresh_choices():
    """Each test starts with no kernel chosen and leaves none behind."""
    saved = dict(linears._CHOICE)
    linears.forget_choices()
    yield
    linears.forget_choices()
    linears._CHOICE.update(saved)


def _pair(in_f: int = 96, out_f: int = 200, bias: bool = True) -> tuple[nn.Linear, nn.Linear]:
    torch.manual_seed(0)
    lin, plain = nn.Linear(in_f, out_f, bias=bias), nn.Linear(in_f, out_f, bias=bias)
    plain.load_state_dict(lin.state_dict())
    return lin, plain


def _force(kernel: str, monkeypatch) -> list[str]:
    """Make `kernel` the measured fastest; returns the log of tunings."""
    tuned: list[str] = []

    def fake(kernels):
        tuned.append(",".join(sorted(kernels)))
        return {k: (0.1 if k == kernel else 1.0) for k in kernels}

    monkeypatch.setattr(linears, "time_kernels", fake)
    return tuned


def test_row_buckets() -> None:
    assert [linears.bucket_rows(r) for r in (1, 2, 3, 4, 5, 8, 9, 33, 64)] == [1, 2, 4, 4, 8, 8, 16, 64, 64]
    assert linears.bucket_rows(0) == linears.bucket_rows(65) == -1
    assert [linears.pack_bucket("mkl", b) for b in (1, 2, 4, 8, 64)] == [4, 4, 4, 8, 64]
    assert {linears.pack_bucket("onednn", b) for b in (1, 8, 64)} == {0}  # one reorder for every row count
    assert {"linear", "swapped"} <= set(linears.available_kernels()) <= set(linears.KERNELS)


@pytest.mark.parametrize("bias", [True, False])
def test_swapped_kernel_equals_f_linear(bias) -> None:
    lin, _ = _pair(bias=bias)
    for rows in (1, 2, 3, 5, 8):
        x = torch.randn(rows, 96)
        got = linears.swapped_linear(x, lin.weight, lin.bias, linears.bucket_rows(rows))
        assert got.shape == (rows, 200) and got.is_contiguous()
        torch.testing.assert_close(got, nn.functional.linear(x, lin.weight, lin.bias), atol=1e-5, rtol=1e-5)


def _needs(kernel: str) -> None:
    if kernel not in linears.available_kernels():
        pytest.skip(f"no {kernel} kernel in this torch build")


@pytest.mark.parametrize("kernel", linears.KERNELS)
def test_each_chosen_kernel_equals_f_linear_and_steps_aside(kernel, monkeypatch) -> None:
    _needs(kernel)
    _force(kernel, monkeypatch)
    lin, plain = _pair()
    assert pack_linears(nn.Sequential(lin)) == [lin] and pack_linears(nn.Sequential(lin)) == []  # routed once
    assert is_packed(lin) and not is_packed(plain)
    try:
        with torch.no_grad():
            for shape in ((1, 1, 96), (1, 3, 96), (5, 96), (2, 4, 96), (1, 13, 96), (64, 96)):
                x = torch.randn(*shape)
                got = lin(x)
                assert got.shape == (*shape[:-1], 200)
                torch.testing.assert_close(got, plain(x), atol=1e-5, rtol=1e-5)
            assert set(linears._CHOICE.values()) == {kernel}
            many = torch.randn(200, 96)
            assert torch.equal(lin(many), plain(many))  # beyond 64 rows: F.linear itself
            lin.weight.mul_(2.0)  # changed in place: a packed copy is remade on the next call
            plain.weight.mul_(2.0)
            x = torch.randn(1, 6, 96)
            torch.testing.assert_close(lin(x), plain(x), atol=1e-5, rtol=1e-5)
        x = torch.randn(1, 3, 96)
        y = lin(x)  # autograd: F.linear, and gradients flow
        assert torch.equal(y, plain(x))
        y.sum().backward()
        assert lin.weight.grad is not None
    finally:
        assert unpack_linears(nn.Sequential(lin)) == 1 and unpack_linears([lin]) == 0
    assert "forward" not in lin.__dict__ and not is_packed(lin)
    with torch.no_grad():
        assert torch.equal(lin(x), plain(x))  # nn.Linear.forward again, bit for bit


def test_choice_rule() -> None:
    assert linears.choose({"linear": 1.0, "swapped": 0.5, "mkl": 0.7, "onednn": 0.6}) == "swapped"
    assert linears.choose({"linear": 1.0, "swapped": 0.95, "mkl": 2.0}) == "linear"  # saves < 10%: plain
    assert linears.choose({"linear": 1.0, "onednn": 0.8}) == "onednn"
    assert linears.choose({"linear": 0.5, "swapped": 1.0}) == "linear"


@contextlib.contextmanager
def _routed(*mods: nn.Linear):
    """Routed without the scope's eager choice: kernels are chosen on first use."""
    for m in mods:
        pack_linears(m)
    try:
        with torch.no_grad():
            yield
    finally:
        unpack_linears(list(mods))


def test_choice_is_timed_once_per_shape_and_bucket(monkeypatch) -> None:
    tuned = _force("swapped", monkeypatch)
    a, _ = _pair()
    b, _ = _pair()  # same shape: shares a's choice
    c, _ = _pair(out_f=120)
    with _routed(a, b, c):
        for lin in (a, b):
            for rows in (3, 4, 1):
                lin(torch.randn(1, rows, 96))
        c(torch.randn(2, 96))
    assert len(tuned) == 3  # (200, bucket 4), (200, bucket 1), (120, bucket 2)
    assert linears.kernel_choices() == {"120x96+bias rows<=2": "swapped", "200x96+bias rows<=1": "swapped",
                                        "200x96+bias rows<=4": "swapped"}
    assert all("linear" in t and "swapped" in t for t in tuned)
    assert a not in linears._PACKED or not any(linears._PACKED[a][1].values())  # timing-only packs dropped


def test_the_scope_chooses_every_decoding_bucket_on_entry(monkeypatch) -> None:
    tuned = _force("swapped", monkeypatch)
    a, _ = _pair()
    b, _ = _pair()  # same shape: nothing more to time
    c, _ = _pair(out_f=120)
    with torch.no_grad(), packed_linears(nn.Sequential(a, b, c)):
        assert len(tuned) == 2 * len(linears.EAGER_BUCKETS)
        for rows in (1, 2, 3, 7, 16):
            a(torch.randn(rows, 96))
        assert len(tuned) == 2 * len(linears.EAGER_BUCKETS)  # decoding steps time nothing
        a(torch.randn(30, 96))  # beyond the eager buckets: chosen on first use
        assert len(tuned) == 2 * len(linears.EAGER_BUCKETS) + 1
    with packed_linears(nn.Sequential(a, c)):
        assert len(tuned) == 2 * len(linears.EAGER_BUCKETS) + 1  # once per process


@pytest.mark.parametrize("kernel", linears.PACKED_KERNELS)
def test_packed_choice_keeps_its_copy_and_release_drops_it(kernel, monkeypatch) -> None:
    _needs(kernel)
    _force(kernel, monkeypatch)
    lin, plain = _pair()
    with _routed(lin):
        x = torch.randn(1, 5, 96)
        torch.testing.assert_close(lin(x), plain(x), atol=1e-5, rtol=1e-5)
        assert set(linears._PACKED[lin][1]) == {linears.pack_bucket(kernel, 8)}  # the other kind's copy dropped
        assert linears._PACKED[lin][1][linears.pack_bucket(kernel, 8)] is not None
        lin(torch.randn(2, 96))  # another row bucket of the same kind keeps the first one's copy
        assert linears._PACKED[lin][1][linears.pack_bucket(kernel, 8)] is not None
        assert linears.release_packed() >= 1 and lin not in linears._PACKED
        torch.testing.assert_close(lin(x), plain(x), atol=1e-5, rtol=1e-5)
        assert lin in linears._PACKED  # packed again after the release


def test_a_kernel_that_disagrees_is_never_chosen(monkeypatch) -> None:
    tuned = _force("swapped", monkeypatch)
    monkeypatch.setattr(linears, "swapped_linear", lambda x, w, bias, pad_to: torch.zeros(x.shape[0], w.shape[0]))
    lin, plain = _pair()
    with _routed(lin):
        x = torch.randn(1, 4, 96)
        torch.testing.assert_close(lin(x), plain(x), atol=1e-5, rtol=1e-5)
    assert "swapped" not in tuned[0] and linears.kernel_choices()["200x96+bias rows<=4"] != "swapped"


def test_real_timing_picks_a_kernel_that_is_correct() -> None:
    """Unpatched: whatever this host measures fastest, the routed module equals F.linear."""
    lin, plain = _pair(in_f=64, out_f=512)
    with torch.no_grad(), packed_linears(lin):
        for rows in (1, 2, 4, 8, 40):
            x = torch.randn(1, rows, 64)
            torch.testing.assert_close(lin(x), plain(x), atol=1e-5, rtol=1e-5)
    chosen = linears.kernel_choices()
    assert set(chosen.values()) <= set(linears.KERNELS) and len(chosen) == len(linears.EAGER_BUCKETS) + 1


def test_scope_restores_and_nests() -> None:
    seq = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    own = nn.Linear(8, 8)
    own.forward = lambda x: x  # someone else's override: neither routed nor removed
    with packed_linears(seq, None, nn.Sequential(own)) as outer:
        assert len(outer) == 2 and all(is_packed(m) for m in (seq[0], seq[2]))
        with packed_linears(seq) as inner:
            assert inner == []  # already routed: the inner block owns nothing
        assert is_packed(seq[0])  # the inner block did not undo the outer one
    assert plain_violations(seq) == [] and "forward" in own.__dict__
    with pytest.raises(RuntimeError), packed_linears(seq):
        raise RuntimeError("boom")
    assert plain_violations(seq) == []  # restored on errors too


def test_a_copy_in_use_by_another_bucket_is_kept(monkeypatch) -> None:
    """Row bucket 8 chose `onednn`; bucket 2 then chooses `swapped`: the one reorder stays for bucket 8."""
    _needs("onednn")
    lin, plain = _pair()
    with _routed(lin):
        _force("onednn", monkeypatch)
        lin(torch.randn(5, 96))
        _force("swapped", monkeypatch)
        lin(torch.randn(2, 96))
        assert linears._PACKED[lin][1][0] is not None
        x = torch.randn(6, 96)
        torch.testing.assert_close(lin(x), plain(x), atol=1e-5, rtol=1e-5)
    assert linears.kernel_choices() == {"200x96+bias rows<=2": "swapped", "200x96+bias rows<=8": "onednn"}


def test_the_scope_packs_every_module_that_needs_it_on_entry(monkeypatch) -> None:
    _needs("onednn")
    _force("onednn", monkeypatch)
    a, plain = _pair()
    b, _ = _pair()  # same shape: its choice is a's, its reorder its own
    with torch.no_grad(), packed_linears(nn.Sequential(a, b)):
        assert linears._PACKED[a][1][0] is not None and linears._PACKED[b][1][0] is not None
        x = torch.randn(3, 96)
        torch.testing.assert_close(b(x), plain(x), atol=1e-5, rtol=1e-5)
