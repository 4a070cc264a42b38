"""LLM serving over real HTTP with the official openai client: a char LM trained a few steps, exported with
decode slots, served once for the module (continuous batching, streaming, errors, keys, `generate --server`)."""
import json
import os
import threading
import time

import httpx
import jax
import numpy as np
import openai
import pytest

from conftest import experiment_config
from maasjax import cli
from serve_fixtures import ServerProcess

SLOTS, MAX_LENGTH = 2, 256
KEY = 'completions-test-key-0123456789'
PROMPT = 'The light'


@pytest.fixture(scope='module')
def served(tmp_path_factory):
  from maasjax.train.loop import train_and_evaluate
  root = tmp_path_factory.mktemp('completions')
  workdir, base = str(root / 'lm'), str(root / 'models')
  config = experiment_config('char_lm', num_train_steps=60, log_every_steps=60, eval_every_steps=60)
  config.optimizer.warmup_steps, config.optimizer.learning_rate = 0, 3e-3
  config.model.update({'num_layers': 1, 'emb_dim': 32, 'mlp_dim': 64, 'num_heads': 2, 'max_len': 128,
                       'attention_window': 32})
  config.dataset.seq_len = 32
  train_and_evaluate(config, workdir)
  assert cli.main(['export', '--workdir', workdir, '--model-name', 'charlm', '--out', base, '--platforms', 'cpu',
                   '--parity-examples', '4', '--decode-slots', str(SLOTS), '--max-length', str(MAX_LENGTH)]) == 0
  srv = ServerProcess(base, '--max-batch-size', '1', env={'MAASJAX_API_KEYS': f'{KEY} *'})
  yield {'workdir': workdir, 'base': base, 'server': srv,
         'client': openai.OpenAI(base_url=srv.url + '/v1', api_key=KEY, max_retries=0)}
  assert srv.stop() == 0


def test_slot_decode_equals_uncached_reference(served):
  """The exported prefill/insert/decode modules, two requests sharing the slots at different offsets, give
  the uncached reference's tokens (greedy, and seeded sampling with top-k)."""
  from maasjax.config import from_json
  from maasjax.export import lm, portable
  from maasjax.models import decoding
  from maasjax.train.loop import restore_latest
  with open(os.path.join(served['workdir'], 'config.json')) as f:
    exp, state, _ = restore_latest(from_json(f.read()), served['workdir'])
  version = os.path.join(served['base'], 'charlm', '1')
  with open(os.path.join(version, 'assets.extra', 'maasjax.json')) as f:
    meta = json.load(f)
  fns = lm.load(version, meta['lm'])
  with np.load(os.path.join(version, 'jax', 'variables.npz')) as npz:
    variables = portable.unflatten({k: npz[k] for k in npz.files})
  prompts = [np.array([5, 6, 7, 8, 9, 10, 11], np.int32), np.array([12, 13, 14], np.int32)]
  temperature, top_k, seed = np.array([0.0, 0.9], np.float32), np.array([0, 5], np.int32), np.array([0, 11], np.int32)
  new, z = 20, np.zeros(SLOTS, np.int32)
  cache, out = fns['empty_cache'](), [[], []]
  tokens, positions, steps = z.copy(), z.copy(), z.copy()
  for i, p in enumerate(prompts):
    padded = np.zeros((1, 16), np.int32)
    padded[0, :len(p)] = p
    first, one = fns['lm_prefill'](variables, padded, np.int32(len(p)), temperature[i], top_k[i], seed[i])
    cache = fns['lm_insert'](cache, one, np.int32(i))
    tokens[i], positions[i], steps[i] = int(first[0]), len(p), 1
    out[i].append(int(first[0]))
  for _ in range(new - 1):
    next_s, cache = fns['lm_decode'](variables, cache, tokens, positions, steps, temperature, top_k, seed)
    tokens, positions, steps = np.asarray(next_s), positions + 1, steps + 1
    for i in range(2):
      out[i].append(int(tokens[i]))
  for i, p in enumerate(prompts):
    ref = decoding.decode_uncached(lambda x: exp.model.apply({'params': state.params}, x), p[None], new,
                                   jax.random.key(int(seed[i]))[None], float(temperature[i]), int(top_k[i]))
    assert out[i] == np.asarray(ref)[0].tolist()


def test_stream_equals_non_stream_and_first_chunk_comes_early(served):
  client = served['client']
  args = dict(model='charlm', prompt=PROMPT, max_tokens=100, temperature=0.9, top_k=8, seed=5)
  whole = client.completions.create(**{k: v for k, v in args.items() if k != 'top_k'}, extra_body={'top_k': 8})
  t0, times, texts, finish = time.perf_counter(), [], [], None
  for chunk in client.completions.create(**{k: v for k, v in args.items() if k != 'top_k'}, extra_body={'top_k': 8},
                                         stream=True):
    times.append(time.perf_counter() - t0)
    texts.append(chunk.choices[0].text)
    finish = chunk.choices[0].finish_reason or finish
  assert ''.join(texts) == whole.choices[0].text and len(whole.choices[0].text) == 100
  assert finish == whole.choices[0].finish_reason == 'length'
  assert whole.usage.completion_tokens == 100 and whole.usage.prompt_tokens == len(PROMPT)
  assert len(texts) > 50 and times[0] < times[-1]  # one chunk per token, the first long before the last
  # Another seed draws other text: the seed is what made the two equal.
  other = client.completions.create(model='charlm', prompt=PROMPT, max_tokens=100, temperature=0.9, seed=6,
                                    extra_body={'top_k': 8})
  assert other.choices[0].text != whole.choices[0].text


def test_greedy_equals_maasjax_generate_and_generate_server(served, capsys):
  want = 40
  capsys.readouterr()
  assert cli.main(['generate', '--workdir', served['workdir'], '--prompt', PROMPT, '--max-new-tokens', str(want),
                   '--temperature', '0']) == 0
  local = capsys.readouterr().out.rstrip('\n')
  got = served['client'].completions.create(model='charlm', prompt=PROMPT, max_tokens=want, temperature=0)
  assert PROMPT + got.choices[0].text == local
  assert cli.main(['generate', '--server', served['server'].url, '--api-key', KEY, '--prompt', PROMPT,
                   '--max-new-tokens', str(want), '--temperature', '0']) == 0
  assert capsys.readouterr().out.rstrip('\n') == local
  assert cli.main(['generate', '--server', served['server'].url, '--api-key', KEY, '--model', 'nope',
                   '--prompt', PROMPT]) == 2
  err = capsys.readouterr().err
  assert "404: model 'nope' is not served" in err and 'Traceback' not in err


def _metric(url: str, name: str) -> float:
  text = httpx.get(url + '/metrics').text
  return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def test_disconnect_frees_the_slot(served):
  url, client = served['server'].url, served['client']
  before = _metric(url, 'maasjax_lm_inter_token_latency_seconds_count')
  streams = [client.completions.create(model='charlm', prompt=PROMPT, max_tokens=MAX_LENGTH - len(PROMPT),
                                       temperature=0.8, stream=True) for _ in range(SLOTS)]
  for s in streams:  # every slot busy; read a chunk, then go away
    next(iter(s))
    s.close()
  deadline = time.time() + 30
  while _metric(url, 'maasjax_lm_active_slots') > 0:
    assert time.time() < deadline
    time.sleep(0.05)
  # The slots were freed early: far fewer tokens than the abandoned requests asked for.
  generated = _metric(url, 'maasjax_lm_inter_token_latency_seconds_count') - before
  assert generated < SLOTS * (MAX_LENGTH - len(PROMPT)) / 2
  nxt = client.completions.create(model='charlm', prompt=PROMPT, max_tokens=10, temperature=0)
  assert nxt.choices[0].finish_reason == 'length' and nxt.usage.completion_tokens == 10


def test_bad_fields_are_4xx_and_the_server_stays_up(served):
  client = served['client']
  with pytest.raises(openai.NotFoundError, match="model 'nope' is not served"):
    client.completions.create(model='nope', prompt=PROMPT)
  with pytest.raises(openai.BadRequestError, match='max_tokens=-1: expected an integer >= 1'):
    client.completions.create(model='charlm', prompt=PROMPT, max_tokens=-1)
  with pytest.raises(openai.BadRequestError, match=f'longer than this model.s maximum length \\({MAX_LENGTH}'):
    client.completions.create(model='charlm', prompt='a' * MAX_LENGTH)
  with pytest.raises(openai.BadRequestError, match='top_p=0.5 is not supported'):
    client.completions.create(model='charlm', prompt=PROMPT, top_p=0.5)
  with pytest.raises(openai.BadRequestError, match='not in the vocabulary'):
    client.completions.create(model='charlm', prompt='\u2603')
  with pytest.raises(openai.AuthenticationError, match='invalid API key'):
    openai.OpenAI(base_url=served['server'].url + '/v1', api_key='wrong-key-0123456789', max_retries=0
                  ).completions.create(model='charlm', prompt=PROMPT)
  # Still serving; /v1/models lists the LM in OpenAI's shape; chat uses a plain template; stop strings end it.
  assert [m.id for m in client.models.list().data] == ['charlm']
  chat = client.chat.completions.create(model='charlm', messages=[{'role': 'user', 'content': 'The light'}],
                                        max_tokens=8, temperature=0)
  assert chat.choices[0].message.role == 'assistant' and chat.usage.completion_tokens <= 8
  full = client.completions.create(model='charlm', prompt=PROMPT, max_tokens=30, temperature=0.8, seed=1).choices[0]
  stop = full.text[5:7]
  cut = client.completions.create(model='charlm', prompt=PROMPT, max_tokens=30, temperature=0.8, seed=1,
                                  stop=[stop]).choices[0]
  assert cut.finish_reason == 'stop' and cut.text == full.text[:full.text.index(stop)]


def test_short_request_started_after_a_long_one_finishes_first(served):
  """S slots, 4S concurrent streams: one long, then shorter ones of mixed lengths; each short one ends
  before the long one (no request waits for a longer one to finish)."""
  client, done, lock = served['client'], {}, threading.Lock()
  long_tokens = MAX_LENGTH - len(PROMPT)

  started = threading.Event()

  def run(i, max_tokens):
    texts = []
    for chunk in client.completions.create(model='charlm', prompt=PROMPT, max_tokens=max_tokens, temperature=0.8,
                                           seed=i, stream=True):
      texts.append(chunk.choices[0].text)
      started.set()
    with lock:
      done[i] = (time.perf_counter(), len(''.join(texts)))

  threads = [threading.Thread(target=run, args=(0, long_tokens))]
  threads[0].start()
  assert started.wait(30)  # the long one is decoding in a slot
  for i in range(1, 4 * SLOTS):
    threads.append(threading.Thread(target=run, args=(i, 3 + i)))
    threads[-1].start()
  for t in threads:
    t.join(120)
  assert len(done) == 4 * SLOTS
  assert all(done[i][0] < done[0][0] for i in range(1, 4 * SLOTS)), done
  text = httpx.get(served['server'].url + '/metrics').text
  for name in ('maasjax_lm_time_to_first_token_seconds_count', 'maasjax_lm_tokens_per_second_count',
               'maasjax_lm_queue_depth', 'maasjax_lm_active_slots'):
    assert name in text
