"""Language-model corpora as fixed-length token windows: the built-in grammar corpus (generated on any machine, with
a known entropy rate and an exact best achievable loss), a local text file (its bytes), and token shards
(.bin/.npy, memory-mapped).

A split is a 1D token stream cut into windows of seq_len + 1 tokens that overlap by one: a window's first seq_len
tokens are the inputs and its last seq_len the targets, so each token after the first is predicted exactly once.
"""

from __future__ import annotations

import functools
import glob
import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from landscape.base.errors import ConfigError, UserError

# ----------------------------------------------------------------------------- windows


def windows(stream: Tensor, seq_len: int, what: str) -> tuple[Tensor, Tensor]:
    """(inputs, targets), each (N, seq_len), as views of `stream` (nothing copied): window i covers tokens
    i*seq_len .. (i+1)*seq_len of the stream."""
    if seq_len < 1:
        raise ConfigError(f"seq_len must be >= 1, got {seq_len}")
    n = (len(stream) - 1) // seq_len
    if n < 1:
        raise UserError(f"{what} holds {len(stream)} tokens, too few for one window of seq_len {seq_len} + 1; "
                        "use a smaller seq_len or more text")
    view = stream[:n * seq_len + 1].as_strided((n, seq_len + 1), (seq_len, 1))
    return view[:, :-1], view[:, 1:]


# ----------------------------------------------------------------------------- the grammar corpus

ALPHABET = "abcdefghijklmnopqrstuvwxyz ."  # token i is ALPHABET[i]
SPACE = ALPHABET.index(" ")
# Word classes, how many words each has, and the class that follows each class with its probability. Words of a
# class are drawn with Zipf weights 1/rank. The end class has one word, "." (a sentence ends).
CLASSES = ("det", "adj", "noun", "verb", "prep", "end")
CLASS_WORDS = {"det": 4, "adj": 16, "noun": 48, "verb": 24, "prep": 8, "end": 1}
CLASS_LENGTHS = {"det": (1, 3), "adj": (3, 7), "noun": (3, 8), "verb": (2, 7), "prep": (2, 4), "end": (1, 1)}
NEXT_CLASS = {"det": {"adj": 0.3, "noun": 0.7}, "adj": {"adj": 0.15, "noun": 0.85},
              "noun": {"verb": 0.55, "prep": 0.2, "end": 0.25}, "verb": {"det": 0.6, "prep": 0.2, "end": 0.2},
              "prep": {"det": 1.0}, "end": {"det": 1.0}}


@dataclass(frozen=True)
class Grammar:
    """A stochastic grammar over words and its character-level language.

    Words follow a Markov chain over word classes (determiner, adjective, noun, verb, preposition, sentence end);
    the word within a class is drawn with Zipf weights; each word is spelled out and followed by a space. The
    spelling is fixed and the space marks word ends, so the character stream determines the word stream, and the
    entropy rate per character is the word chain's entropy rate divided by the mean characters per word
    (space included), both under the chain's stationary distribution: `entropy_rate`, in nats per character.
    """

    words: tuple[str, ...]
    word_class: np.ndarray  # (W,) class index of each word
    zipf: np.ndarray  # (W,) probability of the word within its class
    next_class: np.ndarray  # (C, C) row-stochastic class transitions
    stationary: np.ndarray  # (C,) stationary class distribution

    @property
    def word_probs(self) -> np.ndarray:
        """(W,) stationary probability of each word."""
        return self.stationary[self.word_class] * self.zipf

    @property
    def mean_chars_per_word(self) -> float:
        return float(self.word_probs @ np.array([len(w) + 1 for w in self.words]))

    @property
    def entropy_rate(self) -> float:
        """Nats per character of the stationary process: the best loss of a model with unlimited context."""
        def h(p: np.ndarray) -> float:
            p = p[p > 0]
            return float(-(p * np.log(p)).sum())

        within = np.array([h(self.zipf[self.word_class == c]) for c in range(len(CLASSES))])
        per_word = sum(self.stationary[c] * (h(self.next_class[c]) + self.next_class[c] @ within)
                       for c in range(len(CLASSES)))
        return per_word / self.mean_chars_per_word

    def sample(self, n_tokens: int, seed: int) -> np.ndarray:
        """n_tokens characters of the stationary process, as token ids (uint8)."""
        rng = np.random.default_rng(seed)
        n_words = int(n_tokens / self.mean_chars_per_word * 1.2) + 64
        cum = np.cumsum(self.next_class, axis=1)
        u = rng.random(n_words)
        classes = np.empty(n_words, dtype=np.int64)
        c = int(np.searchsorted(np.cumsum(self.stationary), rng.random()))
        for i in range(n_words):  # the class chain is sequential; everything else is vectorized
            classes[i] = c
            c = min(int(np.searchsorted(cum[c], u[i], side="right")), len(CLASSES) - 1)
        words = np.empty(n_words, dtype=np.int64)
        for c in range(len(CLASSES)):
            at = np.flatnonzero(classes == c)
            members = np.flatnonzero(self.word_class == c)
            words[at] = rng.choice(members, size=len(at), p=self.zipf[members])
        spelled = [np.frombuffer((w + " ").encode(), dtype=np.uint8) for w in self.words]
        codes = np.concatenate([spelled[w] for w in words])
        if len(codes) < n_tokens:
            raise AssertionError("the word count estimate fell short")  # 1.2x the mean leaves a wide margin
        return _encode(codes[:n_tokens])

    def best_loss(self, x: Tensor, y: Tensor) -> float:
        """The exact best achievable mean loss (nats per target token) on these windows for a model that sees
        only the window: the Bayes predictor, computed by the forward algorithm on the hidden Markov model whose
        state is (word, position in word), started at its stationary distribution. Slightly above
        `entropy_rate`, since a window's first characters come without the words before them."""
        chars, starts, ends, start_weight = self._states()
        ends_t, starts_t = torch.as_tensor(ends), torch.as_tensor(starts)
        to_class = torch.zeros(len(self.words), len(CLASSES), dtype=torch.float64)
        to_class[torch.arange(len(self.words)), torch.as_tensor(self.word_class)] = 1.0
        class_to_start = torch.as_tensor(self.next_class)[:, torch.as_tensor(self.word_class)] * torch.as_tensor(
            self.zipf)  # (C, W): the probability that a word ending in class c is followed by word w
        chars_t = torch.as_tensor(chars)
        tokens = torch.cat([x[:, :1], y], dim=1).long()
        belief = torch.as_tensor(start_weight).expand(len(tokens), -1) * (chars_t == tokens[:, :1])
        belief = belief / belief.sum(1, keepdim=True)
        total = 0.0
        inner = torch.as_tensor(np.setdiff1d(np.arange(len(chars)), ends))
        for t in range(1, tokens.shape[1]):
            nxt = torch.zeros_like(belief)
            nxt[:, inner + 1] = belief[:, inner]
            nxt[:, starts_t] = belief[:, ends_t] @ to_class @ class_to_start
            nxt = nxt * (chars_t == tokens[:, t:t + 1])
            p = nxt.sum(1, keepdim=True)
            total -= float(p.log().sum())
            belief = nxt / p
        return total / y.numel()

    def _states(self) -> tuple[np.ndarray, ...]:
        """The HMM's states (word w, position k = 0..len(w), k = len(w) being the space): each state's character,
        the first and last state of each word, and the stationary state distribution."""
        chars, starts, ends = [], [], []
        for w in self.words:
            starts.append(len(chars))
            chars += [ALPHABET.index(ch) for ch in w + " "]
            ends.append(len(chars) - 1)
        weight = np.concatenate([np.full(len(w) + 1, p) for w, p in zip(self.words, self.word_probs)])
        return np.array(chars), np.array(starts), np.array(ends), weight / weight.sum()


def _encode(codes: np.ndarray) -> np.ndarray:
    """ASCII codes of ALPHABET characters to token ids."""
    table = np.zeros(256, dtype=np.uint8)
    for i, ch in enumerate(ALPHABET):
        table[ord(ch)] = i
    return table[codes]


def decode(tokens: Tensor | np.ndarray) -> str:
    """Grammar token ids back to text."""
    return "".join(ALPHABET[int(t)] for t in tokens)


@functools.lru_cache(maxsize=4)
def build_grammar(seed: int = 0) -> Grammar:
    """The language of `seed` (0: the built-in corpus's): its lexicon spelled from consonant-vowel syllables."""
    rng = np.random.default_rng(seed)
    consonants, vowels = "bcdfghklmnprstvwz", "aeiou"
    words: list[str] = []
    word_class: list[int] = []
    zipf: list[float] = []
    for c, name in enumerate(CLASSES):
        if name == "end":
            new = ["."]
        else:
            lo, hi = CLASS_LENGTHS[name]
            new = []
            while len(new) < CLASS_WORDS[name]:
                n = int(rng.integers(lo, hi + 1))
                w = "".join(rng.choice(list(vowels if i % 2 else consonants)) for i in range(n))
                if w not in words and w not in new:
                    new.append(w)
        weights = 1.0 / np.arange(1, len(new) + 1)
        words += new
        word_class += [c] * len(new)
        zipf += list(weights / weights.sum())
    p = np.array([[NEXT_CLASS[a].get(b, 0.0) for b in CLASSES] for a in CLASSES])
    evals, evecs = np.linalg.eig(p.T)
    stationary = np.real(evecs[:, np.argmin(np.abs(evals - 1))])
    return Grammar(tuple(words), np.array(word_class), np.array(zipf), p, stationary / stationary.sum())


@functools.lru_cache(maxsize=4)
def grammar_streams(train_tokens: int, val_tokens: int, seed: int) -> tuple[Tensor, Tensor]:
    """The train and validation streams of the built-in grammar: two independent samples of one language, drawn
    with seeds `seed` and `seed + 1` (the same on every machine)."""
    g = build_grammar(0)
    return (torch.from_numpy(g.sample(train_tokens, seed).astype(np.int64)),
            torch.from_numpy(g.sample(val_tokens, seed + 1).astype(np.int64)))


# ----------------------------------------------------------------------------- a local text file

def text_streams(path: str, val_fraction: float) -> tuple[Tensor, Tensor]:
    """A text file's bytes (vocabulary 256: any encoding, nothing to fit), the first 1 - val_fraction for
    training and the rest for validation."""
    if not os.path.isfile(path):
        raise UserError(f"text file not found: {path}; give the path of a local text file (data kwarg 'path')")
    if not 0 < val_fraction < 1:
        raise ConfigError(f"val_fraction must be in (0, 1), got {val_fraction}")
    data = np.fromfile(path, dtype=np.uint8)
    cut = int(len(data) * (1 - val_fraction))
    stream = torch.from_numpy(data.astype(np.int64))
    return stream[:cut], stream[cut:]


# ----------------------------------------------------------------------------- token shards

LLMC_MAGIC = 20240520  # llm.c's .bin shards start with a 256 x int32 header: magic, version, token count


def _open_shard(path: str, dtype: str) -> np.ndarray:
    """A shard memory-mapped copy-on-write (the file is never written): .npy as saved, .bin as raw `dtype`
    (nanoGPT's prepare.py writes uint16), or llm.c's .bin with its header skipped."""
    try:
        if path.endswith(".npy"):
            arr = np.load(path, mmap_mode="c")
        else:
            header = np.fromfile(path, dtype=np.int32, count=3)
            if len(header) == 3 and header[0] == LLMC_MAGIC:
                return np.memmap(path, dtype=np.uint16, mode="c", offset=256 * 4, shape=(int(header[2]),))
            arr = np.memmap(path, dtype=np.dtype(dtype), mode="c")
    except (ValueError, OSError, TypeError) as exc:
        raise UserError(f"cannot read the token shard {path} ({exc}); write 1D integer arrays (.npy, or raw .bin of "
                        "the data kwarg 'dtype', uint16 by default)") from None
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise UserError(f"{path} holds a {arr.ndim}D {arr.dtype} array; a token shard is a 1D integer array")
    return arr


def shard_streams(folder: str, dtype: str) -> tuple[Tensor, Tensor]:
    """The train and validation token streams of a folder: files whose names contain 'train' and 'val', each
    .bin or .npy. One file per split stays memory-mapped; several are joined in memory, in name order."""
    if not os.path.isdir(folder):
        raise UserError(f"token folder not found: {folder}; give a folder with *train*.bin|npy and *val*.bin|npy "
                        "files (data kwarg 'path')")
    streams = []
    for split in ("train", "val"):
        files = sorted(f for f in glob.glob(os.path.join(folder, f"*{split}*"))
                       if f.endswith((".bin", ".npy")))
        if not files:
            raise UserError(f"no *{split}*.bin or *{split}*.npy shard in {folder}; name the shards so that each "
                            "holds 'train' or 'val'")
        arrays = [_open_shard(f, dtype) for f in files]
        joined = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
        streams.append(torch.from_numpy(joined))
    return streams[0], streams[1]


def vocab_size_of(streams: tuple[Tensor, ...], vocab_size: int | None, what: str) -> int:
    """The vocabulary size: as given (and checked against the largest token), else the largest token + 1."""
    top = max(int(s.numpy().max()) for s in streams if len(s))  # numpy: torch has no max of uint16
    if vocab_size is None:
        return top + 1
    if top >= vocab_size:
        raise UserError(f"{what} holds token {top}, outside vocab_size {vocab_size}; give vocab_size > {top}")
    return int(vocab_size)

