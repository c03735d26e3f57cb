"""The demo sentencepiece model and pi0's prompt format: [BOS] + prompt + "\\n", zero-padded, masked."""

import io
import logging

import numpy as np
import pytest
import sentencepiece as spm

from pi0_jax.data import tokenizer

SENTENCES = [
    "push the puck to the goal", "pick up the puck and place it at the goal", "open the door",
    "close the drawer", "press the button from the top", "sweep the puck into the hole", "pull the lever up",
]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("tok") / "demo.model")
  tokenizer.train_tokenizer(SENTENCES, path, vocab_size=128)
  return path


def test_training_is_deterministic_and_order_free(tmp_path, model_path):
  with open(model_path, "rb") as f:
    written = f.read()
  again = tokenizer.train_tokenizer(SENTENCES, str(tmp_path / "again.model"), vocab_size=128)
  # Order and repetition of the sentences do not matter either: the corpus is a sorted set.
  shuffled = tokenizer.train_tokenizer(list(reversed(SENTENCES)) + SENTENCES[:3], None, vocab_size=128)
  assert again == written
  assert shuffled == written
  assert (tmp_path / "again.model").read_bytes() == written
  other = tokenizer.train_tokenizer(SENTENCES + ["stack the blocks"], None, vocab_size=128)
  assert other != written


def test_special_ids_and_newline_piece(model_path):
  sp = spm.SentencePieceProcessor(model_file=model_path)
  assert (sp.pad_id(), sp.eos_id(), sp.bos_id(), sp.unk_id()) == (0, 1, 2, 3)
  newline = sp.piece_to_id("\n")
  assert newline > 3 and sp.id_to_piece(newline) == "\n"
  assert sp.encode("\n") == [newline]
  assert 16 < sp.get_piece_size() <= 128
  # Gemma-style normalisation: no dummy prefix, so the first word carries no "▁".
  assert not sp.encode("push the puck", out_type=str)[0].startswith("\u2581")


def test_prompt_format_and_mask(model_path):
  sp = spm.SentencePieceProcessor(model_file=model_path)
  tok = tokenizer.PromptTokenizer(model_path, max_len=32)
  tokens, mask = tok.tokenize("push the puck to the goal")
  body = sp.encode("push the puck to the goal")
  n = len(body) + 2
  assert tokens.dtype == np.int32 and mask.dtype == np.bool_
  assert tokens.shape == mask.shape == (32,)
  assert tokens[0] == 2
  assert tokens[1:n - 1].tolist() == body
  assert tokens[n - 1] == sp.piece_to_id("\n")
  assert (tokens[n:] == 0).all()
  assert mask.tolist() == [True] * n + [False] * (32 - n)
  assert tok.decode(tokens[mask]) == "push the puck to the goal\n"


def test_prompt_cleaning(model_path):
  tok = tokenizer.PromptTokenizer(model_path, max_len=32)
  clean, clean_mask = tok.tokenize("push the puck to the goal")
  messy, messy_mask = tok.tokenize("  push_the puck\nto the goal \n")
  np.testing.assert_array_equal(messy, clean)
  np.testing.assert_array_equal(messy_mask, clean_mask)


def test_truncation_warns_once(model_path, caplog):
  tok = tokenizer.PromptTokenizer(model_path, max_len=5)
  full = tok.ids("pick up the puck and place it at the goal")
  assert len(full) > 5
  with caplog.at_level(logging.WARNING):
    tokens, mask = tok.tokenize("pick up the puck and place it at the goal")
    tok.tokenize("pick up the puck and place it at the goal")
  assert tokens.tolist() == full[:5]
  assert mask.all()
  assert sum("max_len=5" in r.getMessage() for r in caplog.records) == 1


def test_batch_matches_single(model_path):
  tok = tokenizer.PromptTokenizer(model_path, max_len=16)
  tokens, mask = tok.tokenize_batch(["open the door", "close the drawer", "pull the lever up"])
  assert tokens.shape == mask.shape == (3, 16)
  for i, prompt in enumerate(["open the door", "close the drawer", "pull the lever up"]):
    one, one_mask = tok.tokenize(prompt)
    np.testing.assert_array_equal(tokens[i], one)
    np.testing.assert_array_equal(mask[i], one_mask)
  assert mask.sum(1).tolist() == [len(tok.ids(p)) for p in ["open the door", "close the drawer", "pull the lever up"]]


def test_unseen_words_still_encode(model_path):
  tok = tokenizer.PromptTokenizer(model_path, max_len=48)
  tokens, mask = tok.tokenize("stack the blocks")
  assert tokens[0] == 2 and mask.sum() > 3
  assert tok.decode(tokens[mask]).endswith("\n")


def test_other_special_id_layout(tmp_path):
  # A model with BOS elsewhere (as any non-Gemma tokenizer may have): the prompt starts with *its* BOS.
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(SENTENCES), model_writer=model, vocab_size=64, model_type="bpe", unk_id=0, bos_id=1,
      eos_id=2, pad_id=3, user_defined_symbols=["\n"], normalization_rule_name="identity", add_dummy_prefix=False,
      hard_vocab_limit=False, minloglevel=2)
  path = tmp_path / "other.model"
  path.write_bytes(model.getvalue())
  tok = tokenizer.PromptTokenizer(str(path), max_len=24)
  tokens, mask = tok.tokenize("open the door")
  n = int(mask.sum())
  assert tokens[0] == 1
  assert tokens[n - 1] == spm.SentencePieceProcessor(model_file=str(path)).piece_to_id("\n")
  assert (tokens[n:] == 0).all()


def test_bad_arguments(tmp_path, model_path):
  with pytest.raises(ValueError, match="max_len"):
    tokenizer.PromptTokenizer(model_path, max_len=1)
  with pytest.raises(FileNotFoundError, match="missing.model"):
    tokenizer.PromptTokenizer(str(tmp_path / "missing.model"), max_len=8)
  with pytest.raises(ValueError, match="no non-empty sentence"):
    tokenizer.train_tokenizer(["  ", ""], None)


def test_token_cache_tokenizes_each_prompt_once_and_checks_shapes(model_path):
  tok = tokenizer.PromptTokenizer(model_path, max_len=16)
  calls = []

  def counting(prompt):
    calls.append(prompt)
    return tok.tokenize(prompt)

  cache = tokenizer.TokenCache(counting, 16)
  ids, masks = cache.batch(["open the door", b"open the door", "close the drawer", "open the door"])
  assert ids.shape == masks.shape == (4, 16) and ids.dtype == np.int32 and masks.dtype == np.bool_
  np.testing.assert_array_equal(ids[0], tok.tokenize("open the door")[0])
  np.testing.assert_array_equal(ids[1], ids[0])  # UTF-8 bytes (as tf.data yields) are the same prompt.
  assert sorted(calls) == ["close the drawer", "open the door", "open the door"]  # Once per distinct key.
  with pytest.raises(ValueError, match=r"tokenizer returned shapes \(16,\), \(16,\) .* expected \(8,\)"):
    tokenizer.TokenCache(tok, 8)("open the door")


def test_decoder_names_known_prompts_even_when_cut(model_path):
  tok = tokenizer.PromptTokenizer(model_path, max_len=5)
  long_a, long_b = "pick up the puck and place it at the goal", "push the puck to the goal"
  decode = tok.decoder([long_a, "open the door"])
  ids, mask = tok.tokenize(long_a)
  assert decode(ids, mask) == long_a  # Cut at 5 tokens, still recognised whole.
  other_ids, other_mask = tok.tokenize(long_b)
  assert decode(other_ids, other_mask) == tok.decode(other_ids[other_mask].tolist()).strip()  # Unknown: decoded.
  # Two known prompts whose cut tokens collide cannot be told apart: both come back decoded.
  same = tokenizer.PromptTokenizer(model_path, max_len=2)
  both = same.decoder(["open the door", "open the drawer"])
  ids, mask = same.tokenize("open the door")
  assert both(ids, mask) == same.decode(ids[mask].tolist()).strip()
