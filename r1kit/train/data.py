"""Training data for the supervised stages: packed token streams, chat examples, and a resumable,
rank-sharded batch stream.

- Pretraining: documents (text/JSONL files or a task's worked solutions) are tokenised, joined with
  EOS into one stream and cut into windows of ``seq_len + 1`` tokens (:class:`PackedWindows`); a
  window gives ``input_ids = w[:-1]`` and ``targets = w[1:]``.
- SFT: each conversation becomes ``(ids, assistant_mask)`` through ``Tokenizer.encode_chat``;
  targets outside assistant turns are ``IGNORE_INDEX`` (:class:`ChatExamples`), and batches are
  right-padded (padding is masked out of attention and loss).
- :class:`BatchStream`: every rank draws the *same* global batch of example indices from a seeded
  per-epoch permutation and keeps its contiguous share, split into micro-batches. Its position is
  a small ``state_dict`` stored in checkpoints, so a resumed run sees exactly the data it would have.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from r1kit.train.loop import IGNORE_INDEX

# ----------------------------------------------------------------------------------------------
# reading sources


ROLES = ("system", "user", "assistant")


def _open_data_file(path: Path, key: str):
    """``path`` opened for reading text; ConfigError naming ``key`` when it is missing or not a file."""
    from r1kit.config import ConfigError

    if path.is_dir():
        found = sorted(p.name for p in path.iterdir() if p.suffix in (".jsonl", ".txt"))[:5]
        hint = f" (it holds {', '.join(found)})" if found else ""
        raise ConfigError(f"{key}: {path} is a directory{hint}; list the files themselves")
    if not path.is_file():
        what = "does not exist" if not path.exists() else "is not a regular file (a device or a FIFO)"
        raise ConfigError(f"{key}: {path} {what}; check the path (relative paths start at {Path.cwd()})")
    try:
        return path.open(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{key}: cannot read {path}: {err.strerror or err}") from None


def _jsonl_rows(path: Path, key: str) -> Iterable[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for each non-blank line of a JSONL file; a bad line is a ConfigError
    naming the file and the line."""
    from r1kit.config import ConfigError

    with _open_data_file(path, key) as fh:
        try:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ConfigError(
                        f"{path}:{n}: not valid JSON ({err.msg} at column {err.colno}); every line of a "
                        f".jsonl file must be one JSON object"
                    ) from None
                if not isinstance(row, dict):
                    raise ConfigError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
                yield n, row
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: is not UTF-8 text (a binary file?)") from None


def check_messages(messages: Any, where: str, require_assistant: bool = True) -> list[dict[str, str]]:
    """A conversation as ``[{"role", "content"}, ...]`` with roles system/user/assistant and string
    contents (and, with ``require_assistant``, an assistant turn); ConfigError naming ``where``
    (``file:line``) otherwise."""
    from r1kit.config import ConfigError

    example = '{"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}'
    if not isinstance(messages, list) or not messages:
        raise ConfigError(f"{where}: 'messages' must be a non-empty list of turns, like {example}")
    for i, turn in enumerate(messages):
        if not isinstance(turn, dict) or not isinstance(turn.get("content"), str):
            raise ConfigError(f"{where}: turn {i} must be an object with a string 'content', like {example}")
        if turn.get("role") not in ROLES:
            raise ConfigError(
                f"{where}: turn {i} has role {turn.get('role')!r}; roles are {', '.join(ROLES)}"
            )
    if require_assistant and not any(turn["role"] == "assistant" for turn in messages):
        raise ConfigError(f"{where}: no assistant turn (nothing to train on)")
    return [{"role": turn["role"], "content": turn["content"]} for turn in messages]


def read_texts(paths: Iterable[str | Path], text_field: str = "text", key: str = "data.files") -> list[str]:
    """Documents from files: a ``.jsonl`` file gives one document per line (its ``text_field``; a
    line with ``messages`` is rendered as "content" lines joined by newlines); any other file is one
    document. A missing file or a bad line is a :class:`r1kit.config.ConfigError` naming ``key``, the
    file and the line."""
    from r1kit.config import ConfigError

    docs: list[str] = []
    for path in map(Path, paths):
        if path.suffix == ".jsonl":
            for n, row in _jsonl_rows(path, key):
                if text_field in row:
                    docs.append(str(row[text_field]))
                elif "messages" in row:
                    messages = check_messages(row["messages"], f"{path}:{n}", require_assistant=False)
                    docs.append("\n".join(m["content"] for m in messages))
                else:
                    raise ConfigError(
                        f"{path}:{n}: no {text_field!r} (or 'messages') field; set data.text_field to the "
                        f"field that holds the text (this line has {', '.join(map(repr, row)) or 'none'})"
                    )
        else:
            with _open_data_file(path, key) as fh:
                try:
                    docs.append(fh.read())
                except UnicodeDecodeError:
                    raise ConfigError(f"{path}: is not UTF-8 text (a binary file?)") from None
    return docs


def read_conversations(paths: Iterable[str | Path], key: str = "data.files") -> list[list[dict[str, str]]]:
    """Chat conversations from JSONL files with one ``{"messages": [{"role", "content"}, ...]}`` per line.

    A missing file, a line that is not JSON or a malformed conversation is a
    :class:`r1kit.config.ConfigError` naming the file and the line.
    """
    from r1kit.config import ConfigError

    chats: list[list[dict[str, str]]] = []
    for path in map(Path, paths):
        for n, row in _jsonl_rows(path, key):
            if "messages" not in row:
                raise ConfigError(
                    f"{path}:{n}: expected a 'messages' field (a chat conversation), this line has "
                    f"{', '.join(map(repr, row)) or 'no fields'}"
                )
            chats.append(check_messages(row["messages"], f"{path}:{n}"))
    return chats


def problem_messages(task: Any, problem: Any) -> list[dict[str, str]]:
    """The SFT conversation of a task problem: the task's ``sft_messages`` when it has one, else the
    user prompt and the worked solution as the assistant turn."""
    if hasattr(task, "sft_messages"):
        return list(task.sft_messages(problem))
    if getattr(problem, "solution", None) is None:
        raise ValueError(f"problem {getattr(problem, 'id', '?')} has no worked solution to train on")
    return [{"role": "user", "content": problem.prompt}, {"role": "assistant", "content": problem.solution}]


def problem_text(task: Any, problem: Any) -> str:
    """A task problem as plain pretraining text: the prompt, a newline, the worked solution."""
    messages = problem_messages(task, problem)
    return "\n".join(m["content"] for m in messages if m.get("content"))


# ----------------------------------------------------------------------------------------------
# datasets: sequences of examples, each a dict of 1-D tensors


def pack_documents(docs_ids: Iterable[Sequence[int]], eos_id: int, bos_id: int | None = None) -> torch.Tensor:
    """Concatenate tokenised documents into one (N,) long stream: ``[bos] doc eos [bos] doc eos ...``."""
    stream: list[int] = []
    for ids in docs_ids:
        if bos_id is not None:
            stream.append(bos_id)
        stream.extend(ids)
        stream.append(eos_id)
    return torch.tensor(stream, dtype=torch.long)


class PackedWindows:
    """Non-overlapping windows of a token stream: item i is ``stream[i*T : i*T + T + 1]``.

    Each item is ``{"input_ids": (T,), "targets": (T,)}`` with targets the next tokens, so every
    position carries loss (documents are separated by EOS and may attend across the boundary, as in
    GPT-style packed pretraining).
    """

    def __init__(self, stream: torch.Tensor, seq_len: int):
        if stream.numel() < seq_len + 1:
            from r1kit.config import ConfigError

            raise ConfigError(
                f"the corpus has {stream.numel()} tokens, fewer than data.seq_len + 1 = {seq_len + 1}; "
                f"lower --data.seq_len or give more data"
            )
        self.stream = stream
        self.seq_len = seq_len

    def __len__(self) -> int:
        return (self.stream.numel() - 1) // self.seq_len

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        window = self.stream[i * self.seq_len : i * self.seq_len + self.seq_len + 1]
        return {"input_ids": window[:-1], "targets": window[1:]}


def chat_example(ids: Sequence[int], assistant_mask: Sequence[int], max_len: int) -> dict[str, torch.Tensor]:
    """One SFT example from ``encode_chat`` output, truncated to ``max_len`` input tokens.

    ``targets[t] = ids[t + 1]`` where the token ``ids[t + 1]`` is an assistant token, else
    ``IGNORE_INDEX``: user, system and template tokens carry no loss.
    """
    ids_t = torch.tensor(ids[: max_len + 1], dtype=torch.long)
    mask_t = torch.tensor(assistant_mask[: max_len + 1], dtype=torch.bool)
    targets = ids_t[1:].clone()
    targets[~mask_t[1:]] = IGNORE_INDEX
    return {"input_ids": ids_t[:-1], "targets": targets}


class ChatExamples:
    """SFT conversations tokenised with ``tokenizer.encode_chat`` (see :func:`chat_example`).

    Conversations without any assistant token inside ``max_len`` are dropped. ``generation_suffix`` is the
    text the prompt template appends to the generation prompt (``Tokenizer.generation_suffix``, the "r1"
    template's ``<think>\\n``): it counts as prompt, not target.
    """

    def __init__(
        self,
        conversations: Sequence[Sequence[dict]],
        tokenizer: Any,
        max_len: int,
        generation_suffix: str = "",
    ):
        self.examples: list[dict[str, torch.Tensor]] = []
        encode = getattr(tokenizer, "encode_chats", None)
        if encode is not None:  # r1kit's Tokenizer: one batched (parallel) encode
            encoded = encode(conversations, generation_suffix) if generation_suffix else encode(conversations)
        else:
            encoded = [tokenizer.encode_chat(list(messages)) for messages in conversations]
        for ids, mask in encoded:
            example = chat_example(ids, mask, max_len)
            if (example["targets"] != IGNORE_INDEX).any():
                self.examples.append(example)
        if not self.examples:
            from r1kit.config import ConfigError

            raise ConfigError(
                f"no conversation has an assistant token within the first {max_len} tokens; raise "
                f"--data.max_len (or distill.max_len)"
            )

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.examples[i]


def collate(examples: Sequence[dict[str, torch.Tensor]], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Stack examples into a batch, right-padding to the longest one.

    Returns ``input_ids`` (B, T), ``targets`` (B, T) (``IGNORE_INDEX`` on padding) and, when any
    example is shorter than T, ``attention_mask`` (B, T) with 1 on real tokens.
    """
    lengths = [int(e["input_ids"].numel()) for e in examples]
    width = max(lengths)
    batch = len(examples)
    input_ids = torch.full((batch, width), pad_id, dtype=torch.long)
    targets = torch.full((batch, width), IGNORE_INDEX, dtype=torch.long)
    for row, (example, length) in enumerate(zip(examples, lengths)):
        input_ids[row, :length] = example["input_ids"]
        targets[row, :length] = example["targets"]
    out = {"input_ids": input_ids, "targets": targets}
    if min(lengths) < width:
        mask = torch.zeros((batch, width), dtype=torch.long)
        for row, length in enumerate(lengths):
            mask[row, :length] = 1
        out["attention_mask"] = mask
    return out


# ----------------------------------------------------------------------------------------------
# the resumable, rank-sharded batch stream


class BatchStream:
    """Global batches drawn from a seeded per-epoch permutation, sharded across ranks.

    Every rank computes the same global batch of ``batch_size`` indices; rank r keeps indices
    ``[r*b, (r+1)*b)`` with b = batch_size / world_size, and splits them into micro-batches of
    ``micro_batch_size``. So 2 ranks x batch b see exactly the examples of 1 rank x batch 2b.

    Args:
        dataset: a sequence of examples (dicts of 1-D tensors).
        batch_size: global sequences per optimiser step.
        micro_batch_size: sequences per forward on one rank (0 = the whole rank share).
        seed: permutation seed (epoch e uses seed * 1_000_003 + e).
        rank / world_size: this process's place.
        collate_fn: examples -> batch dict (default :func:`collate` with ``pad_id``).
        pad_id: padding id for the default collate.
        shuffle: False keeps the dataset order (epochs still wrap around).
    """

    def __init__(
        self,
        dataset: Sequence[dict[str, torch.Tensor]],
        batch_size: int,
        micro_batch_size: int = 0,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        collate_fn: Callable[[Sequence[dict[str, torch.Tensor]]], dict[str, torch.Tensor]] | None = None,
        pad_id: int = 0,
        shuffle: bool = True,
    ):
        from r1kit.config import ConfigError

        if batch_size % world_size:
            raise ConfigError(
                f"train.batch_size {batch_size} is not a multiple of the {world_size} ranks; use a multiple "
                f"of {world_size}"
            )
        per_rank = batch_size // world_size
        micro = micro_batch_size or per_rank
        if per_rank % micro:
            divisors = [d for d in range(1, per_rank + 1) if per_rank % d == 0][-4:]
            raise ConfigError(
                f"the per-rank batch {per_rank} (train.batch_size {batch_size} / {world_size} ranks) is not a "
                f"multiple of train.micro_batch_size {micro}; use one of {', '.join(map(str, divisors))}"
            )
        if len(dataset) == 0:
            raise ConfigError("the training data is empty: check data.files / data.num_examples")
        self.dataset = dataset
        self.batch_size = batch_size
        self.per_rank = per_rank
        self.micro_batch_size = micro
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.collate_fn = collate_fn or (lambda examples: collate(examples, pad_id))
        self.epoch = 0
        self.cursor = 0
        self._order: list[int] | None = None

    @property
    def accumulation_steps(self) -> int:
        """Micro-batches per optimiser step on each rank."""
        return self.per_rank // self.micro_batch_size

    def _epoch_order(self) -> list[int]:
        if self._order is None:
            if self.shuffle:
                generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
                self._order = torch.randperm(len(self.dataset), generator=generator).tolist()
            else:
                self._order = list(range(len(self.dataset)))
        return self._order

    def next_global_indices(self) -> list[int]:
        """The next global batch of dataset indices (the same on every rank); advances the stream."""
        indices: list[int] = []
        while len(indices) < self.batch_size:
            order = self._epoch_order()
            take = min(self.batch_size - len(indices), len(order) - self.cursor)
            indices.extend(order[self.cursor : self.cursor + take])
            self.cursor += take
            if self.cursor == len(order):
                self.epoch, self.cursor, self._order = self.epoch + 1, 0, None
        return indices

    def next_micro_batches(self) -> list[dict[str, torch.Tensor]]:
        """This rank's share of the next global batch, as ``accumulation_steps`` collated micro-batches."""
        indices = self.next_global_indices()
        mine = indices[self.rank * self.per_rank : (self.rank + 1) * self.per_rank]
        return [
            self.collate_fn([self.dataset[i] for i in mine[start : start + self.micro_batch_size]])
            for start in range(0, len(mine), self.micro_batch_size)
        ]

    def state_dict(self) -> dict[str, int]:
        """The stream position (epoch, cursor) and the settings that must match on resume."""
        return {"epoch": self.epoch, "cursor": self.cursor, "seed": self.seed, "batch_size": self.batch_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from a saved position; the seed and global batch size must be those of the saved run."""
        if (
            state.get("seed", self.seed) != self.seed
            or state.get("batch_size", self.batch_size) != self.batch_size
        ):
            from r1kit.config import ConfigError

            raise ConfigError(
                f"cannot resume the data stream: the checkpoint's train.seed/train.batch_size "
                f"{state.get('seed')}/{state.get('batch_size')} differ from {self.seed}/{self.batch_size}; "
                f"resume with the run's own values"
            )
        self.epoch, self.cursor, self._order = int(state["epoch"]), int(state["cursor"]), None
