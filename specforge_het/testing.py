"""Tiny random models and tokenizers built in code (no Hub): for tests and the concept demo.

Two byte-level BPE tokenizers trained on different corpora give two different vocabularies
that still share many token strings, like real model pairs do.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import torch

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SPECIALS = ["<|end|>", "<|system|>", "<|user|>", "<|assistant|>", "<pad>"]

CORPUS_A = [
    "The quick brown fox jumps over the lazy dog.",
    "Speculative decoding drafts tokens with a small model and verifies them with the base model.",
    "A draft tree is verified in one forward pass with a tree attention mask.",
    "Write a short poem about the sea and the sky at night.",
    "What is the capital of France? The capital of France is Paris.",
    "Explain how a transformer layer works, step by step.",
    "def add(a, b):\n    return a + b\n",
    "Numbers: 1 2 3 4 5 6 7 8 9 10 100 1000.",
]
CORPUS_B = [
    "Heterogeneous drafts may use another tokenizer and another hidden size.",
    "The lazy dog sleeps while the quick fox runs over the hill.",
    "Tokens whose strings exist in both vocabularies are mapped by string.",
    "Tell me a story about a brave little robot who learns to paint.",
    "Paris, London and Rome are capitals in Europe.",
    "for i in range(10):\n    print(i * i)\n",
]


def make_tokenizer(corpus: list[str], vocab_size: int):
    """A byte-level BPE PreTrainedTokenizerFast with a tiny chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus * 4, trainer)
    # S106: "token" here is a tokenizer's special token, not a secret.
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|end|>", pad_token="<pad>",  # noqa: S106
                                   additional_special_tokens=SPECIALS[1:4])
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_base(family: str, tokenizer, hidden: int = 64, layers: int = 4, seed: int = 0, sliding_window: int = 16,
              **config):
    """A random HF causal LM of the given family, sized for tests. `config`: more HF config keys or other values
    (e.g. max_position_embeddings=131072, rope_scaling={...})."""
    from transformers import (
        Gemma3ForCausalLM,
        Gemma3TextConfig,
        LlamaConfig,
        LlamaForCausalLM,
        Qwen3Config,
        Qwen3ForCausalLM,
    )

    common = dict(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                  num_key_value_heads=2, intermediate_size=2 * hidden, max_position_embeddings=2048,
                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    common.update(config)
    torch.manual_seed(seed)
    if family == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common, head_dim=hidden // 4))
    elif family == "qwen3":
        model = Qwen3ForCausalLM(Qwen3Config(**common, head_dim=hidden // 4))
    elif family == "gemma3":
        types = ["sliding_attention", "full_attention"] * (layers // 2) + ["sliding_attention"] * (layers % 2)
        cfg = Gemma3TextConfig(**common, head_dim=hidden // 4, sliding_window=sliding_window, layer_types=types,
                               query_pre_attn_scalar=hidden // 4)
        model = Gemma3ForCausalLM(cfg)
    else:
        raise ValueError(family)
    with torch.no_grad():  # sharper logits than the default init: greedy argmax is far from ties
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.08)
    return model.train(False)


def save_tiny_base(path: str | Path, family: str, tokenizer, **kw) -> str:
    model = tiny_base(family, tokenizer, **kw)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


class OracleProposer:
    """A 'draft' built from the base itself: it proposes what the base would, with near one-hot
    log-probs, through the same tree builders as DraftProposer (`build_dynamic_tree`,
    `grow_fixed_tree`). Speculative decoding with it must reach accept length = tree depth + 1
    (on trees whose rank-0 path is the greedy path). A plain Proposer (inference/protocol.py):
    no base features, deterministic candidates."""

    feature_layers: tuple[int, ...] = ()

    def __init__(self, base, tree, sharpness: float = 1000.0):
        from specforge_het.inference.fast_paths import FastPaths

        self.base, self.tree, self.sharpness = base, tree, sharpness
        self.shape = None if tree.kind == "dynamic" else tree.fixed_shape()  # (parents, ranks)
        self.seq: list[int] = []
        self.use_fast_paths(FastPaths.resolve("auto", base.device))

    def use_fast_paths(self, fast) -> None:
        self.on_device = fast.on_device  # the device variants of the tree builders (same trees)

    def depth(self) -> int:
        return self.tree.depth()

    def start(self, prompt_ids: torch.Tensor, root: int, features) -> None:
        self.seq = prompt_ids.tolist() + [int(root)]

    def update(self, next_tokens: torch.Tensor, features) -> None:
        self.seq += next_tokens.tolist()

    def _logprobs(self, path: list[int]) -> torch.Tensor:
        ids = torch.tensor([self.seq + path], device=self.base.device)
        logits = self.base.features(ids, ()).logits[0, -1].float()
        return torch.log_softmax(logits * self.sharpness, dim=-1)

    @torch.no_grad()
    def propose(self):
        from specforge_het.inference.proposer import grow_fixed_tree
        from specforge_het.inference.protocol import Proposal
        from specforge_het.inference.tree import build_dynamic_tree, stable_topk, stable_topk_on_device

        paths: list[list[int]] = []  # tokens below the root of every fed node, in feeding order

        def step(ids: torch.Tensor, parent_rows: torch.Tensor) -> torch.Tensor:
            for tok, p in zip(ids.tolist(), parent_rows.tolist()):
                paths.append(([] if p < 0 else paths[p]) + [tok])
            return torch.stack([self._logprobs(path) for path in paths[len(paths) - ids.shape[0]:]])

        root_logp = self._logprobs([])
        if self.shape is None:
            t = self.tree
            ids, parents, _ = build_dynamic_tree(step, root_logp, t.top_k, t.max_depth, t.total_tokens,
                                                 on_device=self.on_device)
            ids = ids[1:]
        else:
            topk = stable_topk_on_device if self.on_device else stable_topk
            ids, parents = grow_fixed_tree(step, root_logp, *self.shape, topk), self.shape[0]
        root = torch.tensor([self.seq[-1]], device=self.base.device)
        return Proposal(torch.cat([root, ids.to(root.device)]), parents.to(root.device))


QFn = Callable[[list[int]], torch.Tensor]  # a context (base ids) -> a distribution over the base vocabulary [V]


def model_q(model, temperature: float = 1.0) -> QFn:
    """A draft distribution from a (tiny) causal LM with the base's vocabulary (a BaseModel):
    softmax(logits / temperature) after the context (memoised: many sampled runs share contexts)."""

    @functools.lru_cache(maxsize=1 << 14)
    def cached(context: tuple[int, ...]) -> torch.Tensor:
        with torch.no_grad():
            logits = model.features(torch.tensor([context], device=model.device), ()).logits[0, -1].float()
        return torch.softmax(logits / temperature, dim=-1)

    return lambda context: cached(tuple(context))


class QSampleProposer:
    """Draft tokens SAMPLED from a draft distribution q, handed over with q (`Proposal.draft_probs`).

    In a fixed tree shape (`parents` [N], e.g. `TreeSpec.fixed_shape()[0]`), every node draws its
    children without replacement from q(context + its path), one after the other in node-index
    order: the contract of SpecInfer's rule (inference/protocol.py). `declare=False` hands over no
    draft_probs (the deterministic-candidate rule on the same candidates). `declared`: report
    another q than the one the children were drawn from, a broken contract (negative controls only).
    """

    feature_layers: tuple[int, ...] = ()

    def __init__(self, q: QFn, parents: torch.Tensor, generator: torch.Generator, declare: bool = True,
                 declared: QFn | None = None):
        from specforge_het.inference.tree import check_parents

        self.q, self.declared, self.declare, self.generator = q, declared, declare, generator
        self.par = check_parents(parents)
        self.children: list[list[int]] = [[] for _ in self.par]
        self.depths = [0] * len(self.par)
        for i in range(1, len(self.par)):
            self.children[self.par[i]].append(i)
            self.depths[i] = self.depths[self.par[i]] + 1
        self.seq: list[int] = []

    def depth(self) -> int:
        return max(self.depths)

    def start(self, prompt_ids: torch.Tensor, root: int, features) -> None:
        self.seq = prompt_ids.tolist() + [int(root)]

    def update(self, next_tokens: torch.Tensor, features) -> None:
        self.seq += next_tokens.tolist()

    def _draw(self, q: torch.Tensor, k: int) -> list[int]:
        """k tokens from q without replacement, in the order drawn."""
        rest, out = q.clone(), []
        for _ in range(k):
            out.append(int(torch.multinomial(rest, 1, generator=self.generator)))
            rest[out[-1]] = 0.0
        return out

    @torch.no_grad()
    def propose(self):
        from specforge_het.inference.protocol import Proposal

        tokens, paths, rows = [self.seq[-1]], [[]], {}
        for i in range(1, len(self.par)):
            tokens.append(-1)
            paths.append(paths[self.par[i]] + [i])
        for i, kids in enumerate(self.children):  # topological order: a node's token is drawn before it is read
            if kids or i == 0:
                context = self.seq + [tokens[j] for j in paths[i]]
                q = self.q(context)
                rows[i] = q if self.declared is None else self.declared(context)
                for c, t in zip(kids, self._draw(q, len(kids))):
                    tokens[c] = t
        uniform = torch.full_like(rows[0], 1.0 / rows[0].shape[0])  # leaves' rows are never read
        probs = torch.stack([rows.get(i, uniform) for i in range(len(self.par))]) if self.declare else None
        device = rows[0].device
        return Proposal(torch.tensor(tokens, device=device), torch.tensor(self.par, device=device), probs)
