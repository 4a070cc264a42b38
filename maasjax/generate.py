"""`maasjax generate`: sample from a trained Transformer LM (a continuation) or seq2seq model (an output).

Reads the workdir's config.json and latest checkpoint; decoding uses the KV cache (maasjax.models.decoding).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from maasjax.config import ConfigError, load_workdir_config

TEXT_TASKS = ('language_modelling', 'seq2seq')


def load_dataset_info(workdir: str):
  from maasjax.data.base import DatasetInfo
  path = os.path.join(workdir, 'dataset_info.json')
  if not os.path.exists(path):
    raise ConfigError(f'workdir {workdir!r} has no dataset_info.json; train a model there first with maasjax train')
  with open(path) as f:
    return DatasetInfo(**json.load(f))


def prompt_batch(task: str, tok, model, input_width: int, prompts: list[str], max_new_tokens: int) -> np.ndarray:
  """Token rows for the prompts: left-padded for a language model (generation continues from each row's
  end), right-padded to the input width for seq2seq (as in training)."""
  rows = []
  for prompt in prompts:
    ids = tok.encode(prompt)
    if task == 'language_modelling' and tok.bos_id is not None:
      ids = np.concatenate([[tok.bos_id], ids])
    if len(ids) == 0:
      raise ConfigError('the prompt is empty; a character LM needs at least one character to continue')
    rows.append(ids)
  width = max(len(r) for r in rows)
  if task == 'seq2seq':
    if width > input_width:
      raise ConfigError(f'input of {width} tokens is longer than the model\'s inputs ({input_width})')
    width = input_width
    if max_new_tokens + 1 > model.max_len:  # the decoder's cache holds BOS + the output
      raise ConfigError(f'--max-new-tokens {max_new_tokens}: this seq2seq model writes at most {model.max_len - 1} '
                        f'output tokens (its decoder max_len={model.max_len}, one slot for BOS)')
  elif width + max_new_tokens > model.max_len:
    raise ConfigError(f'prompt of {width} tokens + --max-new-tokens {max_new_tokens} exceeds the model\'s '
                      f'max_len={model.max_len}; shorten the prompt or lower --max-new-tokens')
  batch = np.zeros((len(rows), width), np.int32)
  for i, r in enumerate(rows):
    if task == 'language_modelling':
      batch[i, width - len(r):] = r
    else:
      batch[i, :len(r)] = r
  return batch


def generate_text(workdir: str, prompts: list[str], max_new_tokens: int | None = None, temperature: float = 0.8,
                  top_k: int = 0, seed: int = 0, use_cache: bool = True) -> tuple[str, list[str]]:
  """(task name, one sampled continuation (LM) or output (seq2seq) per prompt), from the latest checkpoint.

  `max_new_tokens` None: 200 for a language model, the training targets' length for seq2seq.
  """
  import functools

  import jax

  from maasjax.tokenizers import tokenizer_from_info
  from maasjax.models import build_model, decoding
  from maasjax.train.loop import model_extra_fields, restore_latest
  config, info = load_workdir_config(workdir), load_dataset_info(workdir)
  if info.task not in TEXT_TASKS:
    raise ConfigError(f'workdir {workdir!r} holds a {info.task!r} model; generate needs a language model or a '
                      'seq2seq model (e.g. experiments/char_lm.py, experiments/seq2seq_transformer.py)')
  if max_new_tokens is None:
    max_new_tokens = int(info.extra.get('target_length', 200)) if info.task == 'seq2seq' else 200
  if max_new_tokens < 1 or temperature < 0 or top_k < 0:
    raise ConfigError(f'--max-new-tokens {max_new_tokens}, --temperature {temperature}, --top-k {top_k}: expected '
                      'max-new-tokens >= 1, temperature >= 0 (0 is greedy), top-k >= 0 (0 keeps all tokens)')
  tok = tokenizer_from_info(info)
  # Prompts are checked before the checkpoint is read: a bad request fails in a moment.
  batch = prompt_batch(info.task, tok, build_model(config, **model_extra_fields(info)), int(info.input_shape[0]),
                       prompts, max_new_tokens)
  exp, state, _ = restore_latest(config, workdir)
  model, task = exp.model, info.task
  if task == 'seq2seq':
    fn = functools.partial(decoding.seq2seq_generate, model, bos_id=tok.bos_id, eos_id=tok.eos_id)
  else:
    fn = functools.partial(decoding.lm_generate, model, eos_id=tok.eos_id)
  run_fn = jax.jit(lambda params, x, key: fn(params, x, max_new_tokens, key, temperature=temperature, top_k=top_k,
                                             use_cache=use_cache))
  out = np.asarray(run_fn(state.params, batch, jax.random.key(seed)))
  return task, [tok.decode(row) for row in out]


def generate_remote(server: str, model: str | None, prompts: list[str], max_new_tokens: int | None,
                    temperature: float, top_k: int, seed: int, api_key: str | None = None) -> list[str]:
  """One continuation per prompt from a server's /v1/completions (the route OpenAI clients use)."""
  import httpx
  base = server.rstrip('/')
  base = base if base.endswith('/v1') else base + '/v1'
  headers = {'Authorization': f'Bearer {api_key}'} if api_key else {}
  try:
    with httpx.Client(base_url=base, headers=headers, timeout=600) as client:
      if model is None:
        listed = client.get('/models')
        names = [m['id'] for m in listed.json().get('data', [])] if listed.status_code == 200 else []
        if len(names) != 1:
          raise ConfigError(f'--server {server} serves {len(names)} language models ({", ".join(names) or "none"}); '
                            'name one with --model')
        model = names[0]
      body = {'model': model, 'prompt': prompts, 'max_tokens': 200 if max_new_tokens is None else max_new_tokens,
              'temperature': temperature, 'top_k': top_k, 'seed': seed}
      r = client.post('/completions', json=body)
  except httpx.HTTPError as e:
    raise ConfigError(f'--server {server}: {type(e).__name__}: {e}') from None
  if r.status_code != 200:
    try:
      message = r.json()['error']['message']
    except (ValueError, KeyError, TypeError):
      message = r.text[:300]
    raise ConfigError(f'--server {server}: {r.status_code}: {message}')
  return [c['text'] for c in sorted(r.json()['choices'], key=lambda c: c['index'])]


class _Deprecated(argparse.Action):
  """An old underscore spelling of a flag: stored under the new one's name, with a line saying so."""

  def __init__(self, option_strings, dest, new: str = '', **kw):
    self.new = new
    super().__init__(option_strings, dest, **kw)

  def __call__(self, parser, namespace, values, option_string=None):
    print(f'maasjax generate: {option_string} is deprecated; use {self.new}', file=sys.stderr)
    setattr(namespace, self.dest, True if self.nargs == 0 else values)


def add_args(p):
  p.add_argument('--workdir', help='a workdir trained with a transformer_lm or transformer_seq2seq config')
  p.add_argument('--server', help='instead of --workdir: a maasjax serve URL (http://HOST:PORT), through its '
                                  '/v1/completions route')
  p.add_argument('--model', help='with --server: the served model (default: the only language model it serves)')
  p.add_argument('--api-key', default=os.environ.get('MAASJAX_API_KEY'),
                 help='with --server: the API key (default $MAASJAX_API_KEY)')
  p.add_argument('--prompt', required=True, action='append',
                 help='text to continue (LM) or to transform (seq2seq); repeat for a batch of prompts')
  p.add_argument('--max-new-tokens', type=int, default=None,
                 help='tokens to generate (default: 200 for a language model, the target length for seq2seq)')
  p.add_argument('--temperature', type=float, default=0.8, help='0 is greedy decoding')
  p.add_argument('--top-k', type=int, default=0, help='sample from the k most likely tokens (0: all)')
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--no-cache', action='store_true', help='re-run the whole sequence per token (slow reference)')
  p.add_argument('--max_new_tokens', type=int, dest='max_new_tokens', action=_Deprecated, new='--max-new-tokens',
                 help=argparse.SUPPRESS)
  p.add_argument('--top_k', type=int, dest='top_k', action=_Deprecated, new='--top-k', help=argparse.SUPPRESS)
  p.add_argument('--no_cache', dest='no_cache', action=_Deprecated, nargs=0, new='--no-cache', help=argparse.SUPPRESS)


def run(args, overrides):
  if (args.workdir is None) == (args.server is None):
    raise ConfigError('give one of --workdir (a trained checkpoint) or --server (a maasjax serve URL)')
  if args.server:
    outputs = generate_remote(args.server, args.model, args.prompt, args.max_new_tokens, args.temperature, args.top_k,
                              args.seed, args.api_key)
    for prompt, out in zip(args.prompt, outputs):
      print(prompt + out if len(args.prompt) == 1 else f'{prompt} -> {out}', flush=True)
    return
  task, outputs = generate_text(args.workdir, args.prompt, args.max_new_tokens, args.temperature, args.top_k,
                                args.seed, use_cache=not args.no_cache)
  continuation = task == 'language_modelling' and len(args.prompt) == 1
  for prompt, out in zip(args.prompt, outputs):
    # One LM prompt reads as text (prompt + continuation); otherwise show each input and its output.
    print(prompt + out if continuation else f'{prompt} -> {out}', flush=True)
