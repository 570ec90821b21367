"""Prompt checks shared by `gen_prompts`, `mix_prompts` and `check_prompts`.

- `normalise`: lowercase, punctuation to spaces, whitespace collapsed. Exact duplicates are equal
  normalised texts.
- `NgramIndex`: word n-gram sets with an inverted index. The overlap of two prompts is the
  containment |A ∩ B| / min(|A|, |B|) of their n-gram sets (1.0 when one prompt contains the
  other). A query looks only at prompts sharing a gram that is not too common, so n prompts cost
  O(n · grams per prompt), not O(n²).
- `text_problem`: length, language (ASCII share of letters + share of common English words) and
  repetition checks; deterministic, no model, no dependency.
- `EvalSets`: every evaluation set the repo ships (MT-Bench, both turns; GSM8K test questions),
  plus any extra file; a prompt overlaps an evaluation prompt when equal after normalising or
  when their word 5-gram containment reaches the threshold.
- `PromptFilter`: the chain above in a fixed order, stateful (kept prompts feed the duplicate
  index), so feeding prompts in index order always keeps the same ones.
"""

from __future__ import annotations

import heapq
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

FILES = Path(__file__).resolve().parent / "files"
SHIPPED_EVALS = {"mt_bench": FILES / "mt_bench_questions.jsonl", "gsm8k_test": FILES / "gsm8k_test_questions.jsonl",
                 "heldout": FILES / "heldout_prompts.jsonl"}
DUP_N = 3  # word n of near-duplicate checks
EVAL_N = 5  # word n of evaluation-overlap checks

_PUNCT = re.compile(r"[^\w\s]+|_")
_SPACE = re.compile(r"\s+")
COMMON_EN = frozenset("""
a about above after again all also am an and any are as at be because been before being below between both but by
can could did do does doing down during each few for from further had has have having he her here hers him his how
i if in into is it its just like make many me more most my no nor not now of off on once only or other our out over
own please same she should so some such than that the their them then there these they this those through to too
under until up very was we were what when where which while who whom why will with would you your yours write
explain give tell list describe help need want know find create use using show provide suggest compare example
first one two new time way best good work people day year thing get something think see look go take
following rank summarize summarise translate calculate solve answer question sentence words story
let us here say said really much well even still every another must might may shall upon within without
""".split())


def normalise(text: str) -> str:
    """Lowercase, punctuation (and `_`) to spaces, whitespace collapsed: the key of exact duplicates."""
    return _SPACE.sub(" ", _PUNCT.sub(" ", text.lower())).strip()


def ngrams(text: str, n: int) -> frozenset[str]:
    """Word n-grams of the normalised text; a text shorter than n words is one gram of all its words."""
    words = normalise(text).split()
    if len(words) < n:
        return frozenset([" ".join(words)]) if words else frozenset()
    return frozenset(" ".join(words[i:i + n]) for i in range(len(words) - n + 1))


def containment(a: frozenset[str], b: frozenset[str]) -> float:
    return len(a & b) / min(len(a), len(b)) if a and b else 0.0


class NgramIndex:
    """Word n-gram sets of added texts, found again by overlap (containment) through an inverted index.

    A gram met in more than `max_postings` texts stops getting postings (boilerplate such as
    "can you help me"); near-duplicates still share rarer grams, so they are still found.
    `best` scores the `candidates` texts sharing most grams (ties: earliest added), so its answer depends
    only on what was added and in which order, never on the process's string hash seed.
    """

    def __init__(self, n: int, max_postings: int = 200) -> None:
        self.n, self.max_postings = n, max_postings
        self.keys: list[str] = []
        self.grams: list[frozenset[str]] = []
        self.postings: dict[str, list[int]] = {}

    def __len__(self) -> int:
        return len(self.keys)

    def add(self, key: str, text: str, grams: frozenset[str] | None = None) -> None:
        grams = ngrams(text, self.n) if grams is None else grams
        doc = len(self.keys)
        self.keys.append(key)
        self.grams.append(grams)
        for g in grams:
            posting = self.postings.setdefault(g, [])
            if len(posting) <= self.max_postings:
                posting.append(doc)

    def best(self, text: str, grams: frozenset[str] | None = None, candidates: int = 32) -> tuple[str, float] | None:
        """(key, containment) of the added text overlapping `text` most, or None if none shares a gram."""
        grams = ngrams(text, self.n) if grams is None else grams
        shared: Counter[int] = Counter()
        for g in grams:
            posting = self.postings.get(g)
            if posting and len(posting) <= self.max_postings:
                shared.update(posting)
        best: tuple[str, float] | None = None
        # most shared grams first, ties to the earliest added text: `shared`'s own order follows the set order of
        # `grams`, which changes with each process's string hash seed, and so would the candidates kept
        for doc in heapq.nsmallest(candidates, shared, key=lambda d: (-shared[d], d)):
            score = containment(grams, self.grams[doc])
            if best is None or score > best[1]:
                best = (self.keys[doc], score)
        return best


# ---------------------------------------------------------------- text checks

def english_share(text: str) -> tuple[float, float]:
    """(share of letters that are ASCII, share of words that are common English words)."""
    letters = [c for c in text if c.isalpha()]
    ascii_share = sum(c.isascii() for c in letters) / len(letters) if letters else 0.0
    words = [w for w in normalise(text).split() if w.isalpha()]
    common = sum(w in COMMON_EN for w in words) / len(words) if words else 0.0
    return ascii_share, common


def text_problem(text: str, min_chars: int = 0, max_chars: int = 0, min_words: int = 0, language: str = "",
                 min_unique: float = 0.0) -> str | None:
    """Why `text` fails the quality checks ('too short', 'too long', 'not English', 'repetitive'), or None.

    language: '' = no check, 'en' = ≥ 90 % of letters ASCII and either ≥ 12 % of words or ≥ 5 distinct words
    common English words (prose with some code in it passes; Spanish, French, … in Latin letters fail).
    min_unique: share of distinct words a text of ≥ 16 words needs (0 = no check); loops fall below.
    """
    if not text.strip():
        return "empty"
    words = normalise(text).split()
    if (min_chars and len(text.strip()) < min_chars) or (min_words and len(words) < min_words):
        return "too short"
    if max_chars and len(text) > max_chars:
        return "too long"
    if language == "en":
        ascii_share, common = english_share(text)
        distinct = len({w for w in words if w in COMMON_EN})
        if ascii_share < 0.9 or (common < 0.12 and distinct < 5):
            return "not English"
    elif language:
        raise ValueError(f"unknown language check '{language}'; use 'en' or '' (no check)")
    if min_unique and len(words) >= 16 and len(set(words)) / len(words) < min_unique:
        return "repetitive"
    return None


# ---------------------------------------------------------------- evaluation sets

def _eval_rows(name: str, path: Path) -> list[tuple[str, str]]:
    """(id, user text) of an evaluation file: MT-Bench `turns`, GSM8K `question`, or any prepare_data layout."""
    from specforge_het.inference.prompts import _read_jsonl

    if not path.is_file():
        raise FileNotFoundError(f"evaluation set '{name}': file {path} not found; give an existing JSONL file")
    out: list[tuple[str, str]] = []
    try:
        rows = _read_jsonl(path)
    except ValueError as e:
        raise ValueError(f"evaluation set '{name}': {e}") from None
    for lineno, row in rows:
        i = lineno - 1
        rid = str(row.get("id", row.get("question_id", i)))
        if isinstance(row.get("turns"), list):
            out += [(f"{rid}.t{k + 1}", t if isinstance(t, str) else str(t.get("content", "")))
                    for k, t in enumerate(row["turns"])]
        elif isinstance(row.get("conversations"), list):
            out += [(f"{rid}.t{k + 1}", t.get("content", "")) for k, t in enumerate(row["conversations"])
                    if isinstance(t, dict) and t.get("role") == "user"]
        else:
            text = next((row[k] for k in ("question", "prompt", "instruction", "text") if isinstance(row.get(k), str)), None)
            if text is None:
                raise ValueError(f"evaluation set '{name}': {path}:{i + 1} has no turns, conversations, question, "
                                 "prompt, instruction or text")
            out.append((rid, text))
    return out


class EvalSets:
    """Evaluation prompts by set name; `match(text)` finds the first set a prompt overlaps."""

    def __init__(self, extra: list[str] | tuple[str, ...] = (), threshold: float = 0.5) -> None:
        if not 0 < threshold <= 1:
            raise ValueError(f"eval overlap threshold {threshold} must be in (0, 1]; 0.5 is the default")
        self.threshold = threshold
        files = dict(SHIPPED_EVALS)
        for extra_file in extra:
            files[Path(extra_file).stem] = Path(extra_file)
        self.sizes: dict[str, int] = {}
        self.exact: dict[str, dict[str, str]] = {}
        self.index: dict[str, NgramIndex] = {}
        for name, path in files.items():
            rows = _eval_rows(name, path)
            self.sizes[name] = len(rows)
            self.exact[name] = {normalise(t): rid for rid, t in rows if t.strip()}
            index = self.index[name] = NgramIndex(EVAL_N, max_postings=10**9)  # exact over eval prompts
            for rid, text in rows:
                index.add(rid, text)

    @property
    def names(self) -> list[str]:
        return list(self.sizes)

    def match(self, text: str) -> tuple[str, str, float] | None:
        """(set name, eval prompt id, score) of the first overlapping evaluation prompt, or None."""
        key, grams = normalise(text), ngrams(text, EVAL_N)
        for name, index in self.index.items():
            if key in self.exact[name]:
                return name, self.exact[name][key], 1.0
            best = index.best(text, grams)
            if best and best[1] >= self.threshold:
                return name, best[0], round(best[1], 3)
        return None


# ---------------------------------------------------------------- the filter chain

@dataclass
class FilterSettings:
    min_chars: int = 0
    max_chars: int = 0
    min_words: int = 0
    language: str = ""
    min_unique: float = 0.0
    near_dup: float = 0.7  # word 3-gram containment at or above which a prompt is a near-duplicate (1 = exact only)

    def check(self) -> None:
        if not 0 < self.near_dup <= 1:
            raise ValueError(f"near_dup {self.near_dup} must be in (0, 1]: the word 3-gram containment at which a "
                             "prompt counts as a near-duplicate (1 = only exact duplicates); 0.7 is the default")
        if self.max_chars and self.min_chars > self.max_chars:
            raise ValueError(f"min_chars {self.min_chars} > max_chars {self.max_chars}; lower min_chars or raise max_chars")


@dataclass
class PromptFilter:
    """Quality checks, evaluation overlap, exact and near duplicates, in that order; first failure wins.

    `check(key, texts)` returns the reason a prompt is dropped, or None (then it is kept and indexed).
    `texts` are the user turns of one prompt: each is checked against the evaluation sets, the
    joined text against the quality checks and duplicates.
    """

    settings: FilterSettings
    evals: EvalSets
    counts: Counter = field(default_factory=Counter)
    overlaps: list[dict] = field(default_factory=list)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.settings.check()
        self.seen: dict[str, str] = {}
        self.index = NgramIndex(DUP_N)

    def drop(self, reason: str, text: str) -> str:
        self.counts[reason] += 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < 3:
            shown.append(text[:200])
        return reason

    def check(self, key: str, texts: list[str]) -> str | None:
        s, joined = self.settings, "\n".join(texts)
        problem = text_problem(joined, s.min_chars, s.max_chars, s.min_words, s.language, s.min_unique)
        if problem:
            return self.drop(problem, joined)
        hit = self.eval_hit(texts)
        if hit:
            self.overlaps.append({"id": key, "eval_set": hit[0], "eval_id": hit[1], "score": hit[2],
                                  "prompt": hit[3][:200]})
            return self.drop(f"overlaps {hit[0]}", joined)
        norm = normalise(joined)
        if norm in self.seen:
            return self.drop("exact duplicate", joined)
        grams = ngrams(joined, DUP_N)
        best = self.index.best(joined, grams) if s.near_dup < 1 else None
        if best and best[1] >= s.near_dup:
            return self.drop("near duplicate", joined)
        self.seen[norm] = key
        self.index.add(key, joined, grams)
        self.counts["kept"] += 1
        return None

    def eval_hit(self, texts: list[str]) -> tuple[str, str, float, str] | None:
        """(set, eval prompt id, score, the user turn) of the first turn overlapping an evaluation prompt, or None."""
        for text in texts:
            hit = self.evals.match(text)
            if hit:
                return (*hit, text)
        return None

    def keep(self, key: str, texts: list[str]) -> tuple[str, str, float] | None:
        """Keep a prompt unchecked for quality and duplicates (a row of an earlier mix), indexing it so later
        prompts are checked against it; returns its evaluation overlap (set, id, score), or None."""
        hit = self.eval_hit(texts)
        if hit:
            return hit[:3]
        joined = "\n".join(texts)
        self.seen.setdefault(normalise(joined), key)
        self.index.add(key, joined)
        self.counts["kept"] += 1
        return None

    def reasons(self) -> list[str]:
        """Drop reasons in chain order (every one, counted or not), for reports."""
        quality = ["empty", "too short", "too long", "not English", "repetitive"]
        return quality + [f"overlaps {n}" for n in self.evals.names] + ["exact duplicate", "near duplicate"]


def overlap_counts(filt: PromptFilter) -> dict[str, int]:
    return {name: filt.counts.get(f"overlaps {name}", 0) for name in filt.evals.names}

