"""Prompt tokenisation in pi0's format, and a small sentencepiece model for tests and the demo.

pi0 feeds the language model  [BOS] + encode(cleaned prompt) + encode("\\n"),  where cleaning strips the
prompt and turns "_" and "\\n" into spaces; the result is cut to `max_len` and right-padded with 0 (a mask
marks the real tokens). `PromptTokenizer` does exactly that with any sentencepiece model: PaliGemma's own
tokenizer file (Gemma's vocabulary, BOS 2) or one made by `train_tokenizer`.

`train_tokenizer` fits a small BPE model on a list of instructions with Gemma's special ids (pad 0, eos 1,
bos 2, unk 3), a piece of its own for "\\n", and Gemma's normalisation (none: no dummy prefix, whitespace
kept), so prompts are split the way the real tokenizer splits them. Same sentences in, same bytes out.

  python -m pi0_jax.data.tokenizer --out=/data/mw/tokenizer.model \\
      --dataset_dirs=/data/mw/metaworld_ml10_train/1.0.0,/data/mw/metaworld_ml10_test/1.0.0

trains one from the instructions of RLDS datasets (every split).
"""

from __future__ import annotations

import io
import os
from typing import Callable, Iterable, Sequence

import numpy as np
import sentencepiece as spm

from pi0_jax import files

PAD_ID, EOS_ID, BOS_ID, UNK_ID = 0, 1, 2, 3  # Gemma's
NEWLINE = "\n"


def clean_prompt(prompt: str) -> str:
  """pi0's prompt cleaning: strip, and "_" / "\\n" become spaces (the newline ends every prompt)."""
  return prompt.strip().replace("_", " ").replace("\n", " ")


def train_tokenizer(sentences: Iterable[str], out_path: str | None = None, vocab_size: int = 256) -> bytes:
  """Trains a BPE sentencepiece model on `sentences`; returns its serialized bytes and writes them to out_path.

  Sentences are cleaned like prompts, deduplicated and sorted, so neither their order nor how often each
  occurs changes the model. `vocab_size` is an upper bound: a tiny corpus may give fewer pieces.
  """
  corpus = sorted({clean_prompt(s) for s in sentences} - {""})
  if not corpus:
    raise ValueError("train_tokenizer: no non-empty sentence to train on")
  if vocab_size < 8:
    raise ValueError(f"train_tokenizer: vocab_size must be >= 8 (4 special ids, newline, characters), "
                     f"got {vocab_size}")
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(corpus), model_writer=model, vocab_size=vocab_size, model_type="bpe",
      pad_id=PAD_ID, eos_id=EOS_ID, bos_id=BOS_ID, unk_id=UNK_ID,
      user_defined_symbols=[NEWLINE],
      # Gemma's normaliser: identity (keeps "\n"), no dummy "▁" before the first word, whitespace as given.
      normalization_rule_name="identity", add_dummy_prefix=False, remove_extra_whitespaces=False,
      # Byte-identical output: one thread, every sentence, no sampling.
      num_threads=1, input_sentence_size=0, shuffle_input_sentence=False,
      character_coverage=1.0, hard_vocab_limit=False, minloglevel=2)
  blob = model.getvalue()
  if out_path:
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with open(out_path, "wb") as f:
      f.write(blob)
  return blob


class PromptTokenizer:
  """Prompt -> (int32 ids [max_len], bool mask [max_len]) in pi0's format, for any sentencepiece model."""

  def __init__(self, model_path: str, max_len: int):
    if max_len < 2:
      raise ValueError(f"PromptTokenizer: max_len must be >= 2 (BOS and newline), got {max_len}")
    if not files.exists(model_path):
      raise FileNotFoundError(f"PromptTokenizer: no sentencepiece model at {model_path}")
    # Read through pi0_jax.files, so that an export in a bucket (gs://) loads too: sentencepiece opens local files only.
    self._sp = spm.SentencePieceProcessor(model_proto=files.read_bytes(model_path))
    if self._sp.bos_id() < 0:
      raise ValueError(f"{model_path}: the sentencepiece model has no BOS piece; pi0's prompts start with one")
    self.model_path, self.max_len = model_path, max_len
    self.bos_id = self._sp.bos_id()
    self.newline_ids = tuple(self._sp.encode(NEWLINE))
    self._warned = False

  @property
  def vocab_size(self) -> int:
    return self._sp.get_piece_size()

  def ids(self, prompt: str) -> list[int]:
    """The unpadded, untruncated token ids of a prompt."""
    return [self.bos_id, *self._sp.encode(clean_prompt(prompt)), *self.newline_ids]

  def tokenize(self, prompt: str) -> tuple[np.ndarray, np.ndarray]:
    ids = self.ids(prompt)
    if len(ids) > self.max_len:
      if not self._warned:
        # Once per tokenizer: a data pipeline calls this for every frame.
        from absl import logging  # pylint: disable=g-import-not-at-top
        logging.warning("PromptTokenizer: %d tokens cut to max_len=%d (warned once): %r", len(ids), self.max_len,
                        prompt)
        self._warned = True
      ids = ids[:self.max_len]
    tokens = np.zeros(self.max_len, np.int32)  # pi0 pads with 0 whatever the model's pad id
    tokens[:len(ids)] = ids
    mask = np.arange(self.max_len) < len(ids)
    return tokens, mask

  def tokenize_batch(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """[B, max_len] int32 ids and bool masks."""
    pairs = [self.tokenize(p) for p in prompts]
    if not pairs:
      return np.zeros((0, self.max_len), np.int32), np.zeros((0, self.max_len), bool)
    return np.stack([t for t, _ in pairs]), np.stack([m for _, m in pairs])

  def decode(self, ids: Sequence[int]) -> str:
    """Text of ids; BOS, EOS and pad decode to nothing."""
    return self._sp.decode([int(i) for i in ids])

  def decoder(self, known: Iterable[str] = ()) -> Callable[[np.ndarray, np.ndarray], str]:
    """fn(ids [max_len], mask [max_len]) -> prompt text, memoised per token sequence.

    The `known` prompts are recognised by their exact tokens, truncation included, so a prompt cut at max_len
    still comes back whole; one that shares its cut tokens with another known prompt, and any unknown one,
    comes back decoded (stripped).
    """
    texts: dict[bytes, str] = {}

    def decoded(ids, mask) -> str:
      return self.decode(np.asarray(ids)[np.asarray(mask, bool)].tolist()).strip()

    for text in sorted(set(known)):
      ids, mask = self.tokenize(text)
      key = np.asarray(ids[mask], np.int32).tobytes()
      texts[key] = text if key not in texts else decoded(ids, mask)

    def decode_prompt(ids: np.ndarray, mask: np.ndarray) -> str:
      key = np.asarray(np.asarray(ids)[np.asarray(mask, bool)], np.int32).tobytes()
      if key not in texts:
        texts[key] = decoded(ids, mask)
      return texts[key]

    return decode_prompt


class TokenCache:
  """Memoised prompt -> (int32 ids [max_len], bool mask [max_len]) of any tokenize fn, shapes checked once.

  A control loop or a data stream sees few distinct prompts over many frames: each is tokenised once. Prompts
  may be str or UTF-8 bytes (as tf.data yields them).
  """

  def __init__(self, tokenize: Callable[[str], tuple[np.ndarray, np.ndarray]] | PromptTokenizer, max_len: int):
    self._tokenize = tokenize.tokenize if hasattr(tokenize, "tokenize") else tokenize
    self.max_len = max_len
    self._cache: dict[str | bytes, tuple[np.ndarray, np.ndarray]] = {}

  def __call__(self, prompt: str | bytes) -> tuple[np.ndarray, np.ndarray]:
    hit = self._cache.get(prompt)
    if hit is None:
      ids, mask = self._tokenize(prompt.decode("utf-8") if isinstance(prompt, bytes) else prompt)
      ids, mask = np.asarray(ids, np.int32), np.asarray(mask, bool)
      if ids.shape != (self.max_len,) or mask.shape != (self.max_len,):
        raise ValueError(f"tokenizer returned shapes {ids.shape}, {mask.shape} for prompt {prompt!r}; expected "
                         f"({self.max_len},) each (the model's max_token_len).")
      hit = self._cache[prompt] = (ids, mask)
    return hit

  def batch(self, prompts: Iterable[str | bytes]) -> tuple[np.ndarray, np.ndarray]:
    """[B, max_len] int32 ids and bool masks of B prompts."""
    pairs = [self(p) for p in prompts]
    return np.stack([t for t, _ in pairs]), np.stack([m for _, m in pairs])


def dataset_instructions(dataset_dirs: Sequence[str], key: str = "language_instruction") -> list[str]:
  """The distinct instructions (step key `key`) in every split of RLDS datasets on disk, sorted."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  found = set()
  for d in dataset_dirs:
    if not os.path.exists(os.path.join(d, "dataset_info.json")):
      raise FileNotFoundError(f"{d}: no dataset_info.json; expected a TFDS dataset version directory")
    builder = tfds.builder_from_directory(d)
    if key not in builder.info.features["steps"].feature:
      raise KeyError(f"{d}: steps have no {key!r}; step keys: {sorted(builder.info.features['steps'].feature)}")
    for split in builder.info.splits:
      # Steps stay encoded: only the instruction strings are needed, not the frames.
      ds = builder.as_dataset(split=split, decoders={"steps": tfds.decode.SkipDecoding()})
      for instructions in ds.map(lambda ep: ep["steps"][key]).as_numpy_iterator():
        found.update(s.decode() for s in instructions)
  return sorted(found - {""})


def main(argv):
  del argv
  from absl import flags  # pylint: disable=g-import-not-at-top
  from absl import logging  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  sentences = dataset_instructions(f.dataset_dirs, f.instruction_key) + list(f.extra_sentences)
  train_tokenizer(sentences, f.out, f.vocab_size)
  sp = spm.SentencePieceProcessor(model_file=f.out)
  logging.info("Wrote %s: %d pieces from %d instructions", f.out, sp.get_piece_size(), len(sentences))
  print(f"Wrote {f.out}: {sp.get_piece_size()} pieces from {len(sentences)} distinct instructions")


def _define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("out", None, "Path of the sentencepiece model to write.", required=True)
  flags.DEFINE_list("dataset_dirs", [], "TFDS dataset version directories whose instructions are the corpus.")
  flags.DEFINE_list("extra_sentences", [], "More sentences for the corpus (comma-separated).")
  flags.DEFINE_string("instruction_key", "language_instruction", "Step key of the instruction.")
  flags.DEFINE_integer("vocab_size", 256, "Upper bound on the number of pieces.")


def cli():
  """Console script entry point (see setup.cfg); also `python -m pi0_jax.data.tokenizer`."""
  from pi0_jax import cli as cli_lib  # pylint: disable=g-import-not-at-top
  cli_lib.run(main, _define_flags, __name__)


if __name__ == "__main__":
  cli()
