"""The server over real HTTP: both APIs and formats, every error code, auth, limits, metrics, the JAX backend."""
import concurrent.futures
import json
import os
import time

import httpx
import numpy as np
import pytest

import tritonclient.http as tritonclient_http  # a dev dependency: its absence is an error, not a skip

from conftest import run_cli
from serve_fixtures import ServerProcess, heldout_digits, jax_reference, wait_for_workers, write_broken_version
from maasjax.client import Client, ServerError

KEY_ALL = 'k-all-0123456789abcdef'
KEY_RESNET = 'k-resnet-0123456789abcdef'


@pytest.fixture(scope='module')
def server(exported):
  """The SavedModel server; `srv.while_loading` holds what it answered the moment its port opened."""
  write_broken_version(exported['base'], 'broken', 1)
  srv = ServerProcess(exported['base'], '--backend', 'savedmodel', '--max-batch-size', '8', '--buckets', '1,8',
                      '--batch-timeout-ms', '5', '--max-body-bytes', '200000', wait='live')
  srv.while_loading = {'status': httpx.get(srv.url + '/v1/models/digits_resnet').json(),
                       'ready': httpx.get(srv.url + '/v2/health/ready').status_code,
                       'model_ready': httpx.get(srv.url + '/v2/models/digits_resnet/ready').status_code,
                       'live': httpx.get(srv.url + '/v2/health/live').status_code}
  srv.wait_for('/v2/health/ready')
  yield srv
  srv.stop()


def metric_sum(text: str, prefix: str) -> float:
  return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(prefix))


@pytest.fixture(scope='module')
def jax_keyed_server(exported, server, tmp_path_factory):
  """Two worker processes, the JAX backend, API keys from a file (re-read by each worker), a tiny
  queue and a long batch timeout (to provoke 429)."""
  keys = tmp_path_factory.mktemp('keys') / 'keys.txt'
  keys.write_text(f'# test keys\n{KEY_ALL} *\n{KEY_RESNET} digits_resnet\n')
  srv = ServerProcess(exported['base'], '--workers', '2', '--backend', 'jax', '--api-keys', str(keys),
                      '--max-queue-rows', '2', '--batch-timeout-ms', '300', '--max-batch-size', '8', '--buckets', '1,8',
                      '--log-level', 'debug')
  wait_for_workers(srv, 2, ('digits', 'digits_resnet'))
  yield srv
  srv.stop()


@pytest.fixture(scope='module')
def reference(exported):
  x = heldout_digits(5)
  return x, jax_reference(exported['workdirs']['digits'], x)


def post(url, path, body, **kw):
  return httpx.post(url + path, content=body if isinstance(body, bytes) else json.dumps(body), timeout=30, **kw)


def test_v1_row_and_columnar_formats(server, reference):
  x, ref = reference
  rows = post(server.url, '/v1/models/digits:predict', {'instances': x.tolist()})
  assert rows.status_code == 200
  preds = rows.json()['predictions']
  assert len(preds) == 5 and set(preds[0]) == {'logits', 'probabilities', 'classes', 'top_k_classes',
                                                'top_k_probabilities'}
  np.testing.assert_allclose([p['logits'] for p in preds], ref['logits'], atol=1e-5)
  assert [p['classes'] for p in preds] == ref['classes'].tolist()
  cols = post(server.url, '/v1/models/digits/versions/1:predict', {'inputs': {'inputs': x.tolist()},
                                                                   'signature_name': 'serving_default'})
  assert cols.status_code == 200
  np.testing.assert_allclose(cols.json()['outputs']['probabilities'], ref['probabilities'], atol=1e-5)
  # A single-input model also takes the bare tensor as "inputs", as TF Serving does.
  bare = post(server.url, '/v1/models/digits:predict', {'inputs': x.tolist()})
  assert bare.json()['outputs']['classes'] == ref['classes'].tolist()


def test_v2_json_and_binary(server, reference):
  x, ref = reference
  body = {'id': 'r1', 'inputs': [{'name': 'inputs', 'shape': list(x.shape), 'datatype': 'FP32',
                                  'data': x.reshape(-1).tolist()}],
          'outputs': [{'name': 'logits'}, {'name': 'classes'}]}
  r = post(server.url, '/v2/models/digits/infer', body)
  assert r.status_code == 200
  resp = r.json()
  assert resp['id'] == 'r1' and resp['model_name'] == 'digits' and resp['model_version'] == '1'
  out = {o['name']: o for o in resp['outputs']}
  assert set(out) == {'logits', 'classes'} and out['logits']['shape'] == [5, 10]
  assert out['classes']['datatype'] == 'INT32' and out['classes']['data'] == ref['classes'].tolist()
  np.testing.assert_allclose(np.reshape(out['logits']['data'], (5, 10)), ref['logits'], atol=1e-5)
  with Client(server.url) as c:  # binary tensor data extension, both ways
    got = c.infer('digits', {'inputs': x}, version=1)
    np.testing.assert_allclose(got['probabilities'], ref['probabilities'], atol=1e-5)
    assert c.predict('digits_resnet', x[:2])[0]['probabilities'] == pytest.approx(
        c.infer('digits_resnet', {'inputs': x[:2]})['probabilities'][0].tolist(), abs=1e-6)


def test_tritonclient_unchanged(server, reference):
  x, ref = reference
  client = tritonclient_http.InferenceServerClient(server.url[len('http://'):])
  assert client.is_server_live() and client.is_server_ready() and client.is_model_ready('digits')
  assert client.get_model_metadata('digits')['inputs'][0]['shape'] == [-1, 8, 8, 1]
  inp = tritonclient_http.InferInput('inputs', list(x.shape), 'FP32')
  inp.set_data_from_numpy(x)  # binary by default
  result = client.infer('digits', [inp], outputs=[tritonclient_http.InferRequestedOutput('logits')])
  np.testing.assert_allclose(result.as_numpy('logits'), ref['logits'], atol=1e-5)
  assert result.as_numpy('classes') is None


def test_status_metadata_and_index(server):
  status = httpx.get(server.url + '/v1/models/digits').json()
  assert status == {'model_version_status': [{'version': '1', 'state': 'AVAILABLE',
                                              'status': {'error_code': 'OK', 'error_message': ''}}]}
  meta = httpx.get(server.url + '/v1/models/digits/versions/1/metadata').json()
  sig = meta['metadata']['signature_def']['signature_def']['serving_default']
  assert sig['inputs']['inputs']['dtype'] == 'DT_FLOAT'
  assert [d['size'] for d in sig['inputs']['inputs']['tensor_shape']['dim']] == ['-1', '8', '8', '1']
  assert sig['outputs']['classes']['dtype'] == 'DT_INT32'
  v2 = httpx.get(server.url + '/v2/models/digits').json()
  assert v2['platform'] == 'tensorflow_savedmodel' and v2['versions'] == ['1']
  assert httpx.get(server.url + '/v2').json()['extensions'] == ['binary_tensor_data', 'model_repository']
  index = httpx.post(server.url + '/v2/repository/index').json()
  by_name = {e['name']: e for e in index}
  assert by_name['digits']['state'] == 'READY' and 'test/accuracy' in by_name['digits']['metrics']
  assert by_name['broken']['state'] == 'UNAVAILABLE' and by_name['broken']['reason']
  # One broken model does not take the server (and the healthy models) out of rotation.
  assert httpx.get(server.url + '/v2/health/ready').status_code == 200
  assert httpx.get(server.url + '/v2/models/broken/ready').status_code == 503
  assert httpx.get(server.url + '/v2/health/live').status_code == 200
  assert httpx.get(server.url + '/v2/models/digits/ready').status_code == 200


@pytest.mark.parametrize('path,body,status,fragment', [
    ('/v1/models/digits:predict', {'instances': [[[1.0]]]}, 400, "input 'inputs': shape [1, 1, 1]"),
    ('/v1/models/digits:predict', {'instances': [[1, 2], [3]]}, 400, "input 'inputs': expected a nested list"),
    ('/v1/models/digits:predict', {'instances': [{'pixels': 1}]}, 400, "unknown input 'pixels'"),
    ('/v1/models/digits:predict', {'instance': []}, 400, 'exactly one of "instances"'),
    ('/v1/models/digits:predict', {'inputs': [], 'signature_name': 'nope'}, 400, "signature 'nope'"),
    ('/v1/models/digits:predict', b'{not json', 400, 'not valid JSON'),
    ('/v2/models/digits/infer', {'inputs': [{'name': 'inputs', 'shape': [1, 8, 8, 1], 'datatype': 'FP64',
                                             'data': [0.0] * 64}]}, 400, "datatype 'FP64' does not match"),
    ('/v2/models/digits/infer', {'inputs': [{'name': 'inputs', 'shape': [1, 8, 8, 1], 'datatype': 'FP32',
                                             'data': [0.0] * 63}]}, 400, '63 values do not fill shape'),
    ('/v1/models/nosuch:predict', {'instances': [0]}, 404, "model 'nosuch' is not served"),
    ('/v1/models/digits/versions/7:predict', {'instances': [0]}, 404, 'version 7 of model'),
    ('/v2/models/digits/versions/7/infer', {'inputs': []}, 404, 'version 7 of model'),
    ('/v1/models/broken:predict', {'instances': [0]}, 503, "model 'broken' has no version available"),
    ('/v1/models/digits:predict', {'instances': [[[[0.0]] * 8] * 8] * 1000}, 413, 'exceeds the limit of 200000'),
])
def test_errors_name_what_was_wrong(server, path, body, status, fragment):
  r = post(server.url, path, body)
  assert r.status_code == status, r.text
  assert fragment in r.json()['error']


def test_shared_types_have_one_home():
  """One TensorSpec, one SERVING_DEFAULT, one v2 datatype table, one power-of-two helper; the client stays light."""
  import subprocess
  import sys
  from maasjax import client, spec
  from maasjax.serve import app, backends, batching, codec, metrics, v2types
  assert not hasattr(backends, 'InputSpec') and backends.TensorSpec is spec.TensorSpec
  assert app.SERVING_DEFAULT is spec.SERVING_DEFAULT
  assert codec.v2_datatype is v2types.v2_datatype and client.v2_datatype is v2types.v2_datatype
  assert not hasattr(codec, 'V2_DATATYPES') and not hasattr(client, '_V2')
  assert metrics.powers_of_two is batching.powers_of_two and batching.bucket_sizes(12) == (1, 2, 4, 8, 12)
  assert metrics.ServerMetrics(12).batch_size._upper_bounds[:-1] == [1.0, 2.0, 4.0, 8.0, 12.0]
  code = ('import sys, maasjax.client; '
          'print(sorted(m for m in ("fastapi", "uvicorn", "tensorflow", "jax", "maasjax.serve.app") if m in sys.modules))')
  heavy = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout
  assert heavy.strip() == '[]'


def test_port_opens_at_once_with_models_loading(server):
  """TF Serving's model states from the first moment: LOADING (not a closed port) until loaded and warmed."""
  early = server.while_loading
  assert early['status']['model_version_status'] == [
      {'version': '1', 'state': 'LOADING', 'status': {'error_code': 'OK', 'error_message': ''}}]
  assert (early['live'], early['ready'], early['model_ready']) == (200, 503, 503)
  assert httpx.get(server.url + '/v1/models/digits_resnet').json()['model_version_status'][0]['state'] == 'AVAILABLE'


def test_wrong_input_name_gets_one_message_in_every_form(server):
  x = np.zeros((1, 8, 8, 1)).tolist()
  bodies = [('/v1/models/digits:predict', {'inputs': {'image': x}}),
            ('/v1/models/digits:predict', {'instances': [{'image': x[0]}]}),
            ('/v2/models/digits/infer', {'inputs': [{'name': 'image', 'shape': [1, 8, 8, 1], 'datatype': 'FP32',
                                                      'data': [0.0] * 64}]})]
  errors = [post(server.url, path, body).json()['error'] for path, body in bodies]
  assert errors == ["unknown input 'image'; this signature takes ['inputs']"] * 3


def test_wrong_method_is_405(server):
  for path in ('/v1/models/digits:predict', '/v1/models/digits/versions/1:predict', '/v2/models/digits/infer'):
    r = httpx.get(server.url + path)
    assert r.status_code == 405 and r.headers['allow'] == 'POST', (path, r.text)
    assert 'POST' in r.json()['error'] and "model 'digits:predict'" not in r.json()['error']


def test_port_in_use_exits_2_before_loading_any_model(server, exported):
  t0 = time.time()
  proc = run_cli('serve', '--model-base-path', exported['base'], '--port', str(server.port), timeout=120)
  assert proc.returncode == 2, proc.stderr
  assert f'cannot listen on 127.0.0.1:{server.port}: Address already in use' in proc.stderr
  assert 'loaded' not in proc.stdout + proc.stderr and 'Traceback' not in proc.stderr
  print(f'port in use reported in {time.time() - t0:.1f} s')


def test_base_path_without_versions_is_explained(exported, tmp_path):
  from maasjax.serve.repository import check_base_path
  one_model = os.path.join(exported['base'], 'digits')  # what a TF Serving user passes
  proc = run_cli('serve', '--model-base-path', one_model, timeout=120)
  assert proc.returncode == 2 and 'Traceback' not in proc.stderr
  assert 'holds version folders 1 directly' in proc.stderr and f'pass its parent, {exported["base"]}' in proc.stderr
  with pytest.raises(Exception, match='is one SavedModel version'):
    check_base_path(os.path.join(one_model, '1'))
  assert 'it is empty; expected BASE/NAME/VERSION/saved_model.pb' in check_base_path(str(tmp_path))
  (tmp_path / 'digits_cnn' / 'checkpoints').mkdir(parents=True)  # a runs/ folder of training workdirs
  (tmp_path / 'digits_cnn' / 'config.json').write_text('{}')
  assert 'look like training workdirs: export one' in check_base_path(str(tmp_path))
  (tmp_path / 'exports').symlink_to(exported['base'])  # one level too high
  assert f'{tmp_path / "exports"} holds model versions: pass it' in check_base_path(str(tmp_path))
  assert check_base_path(exported['base']) is None


def test_nan_refused_via_binary_input(server):
  x = np.zeros((1, 8, 8, 1), np.float32)
  x[0, 3, 3, 0] = np.nan
  with Client(server.url) as c, pytest.raises(ServerError, match="input 'inputs': contains NaN") as e:
    c.infer('digits', {'inputs': x})
  assert e.value.status == 400


def test_concurrent_requests_are_batched_and_metered(server, reference):
  x, ref = reference
  def one(i):
    r = post(server.url, '/v2/models/digits/infer', {'inputs': [{'name': 'inputs', 'shape': [1, 8, 8, 1],
                                                                 'datatype': 'FP32', 'data': x[i % 5].ravel().tolist()}]})
    return r.status_code, {o['name']: o for o in r.json()['outputs']}['classes']['data'][0]
  with concurrent.futures.ThreadPoolExecutor(16) as pool:
    results = list(pool.map(one, range(64)))
  assert all(code == 200 for code, _ in results)
  assert [cls for _, cls in results] == [int(ref['classes'][i % 5]) for i in range(64)]
  text = httpx.get(server.url + '/metrics').text
  calls = metric_sum(text, 'maasjax_batch_size_count{model="digits"}')
  rows = metric_sum(text, 'maasjax_batch_size_sum{model="digits"}')
  assert rows >= 64 and rows / calls > 1.0, (rows, calls)  # some calls carried several requests
  assert metric_sum(text, 'maasjax_requests_total{api="v2",code="200",model="digits"}') >= 64
  assert metric_sum(text, 'maasjax_request_errors_total{code="404"}') >= 1
  assert 'maasjax_request_latency_seconds_bucket' in text and 'maasjax_queue_rows' in text
  assert metric_sum(text, 'maasjax_model_events_total{event="load_failed",model="broken"}') == 1


def test_api_keys_allow_and_deny(jax_keyed_server, reference):
  url = jax_keyed_server.url
  x, _ = reference
  body = {'instances': x[:1].tolist()}
  assert post(url, '/v1/models/digits:predict', body).status_code == 401
  assert 'missing API key' in post(url, '/v1/models/digits:predict', body).json()['error']
  wrong = post(url, '/v1/models/digits:predict', body, headers={'Authorization': 'Bearer ' + KEY_ALL[:-1] + 'x'})
  assert wrong.status_code == 401 and wrong.json()['error'] == 'invalid API key'
  denied = post(url, '/v1/models/digits:predict', body, headers={'Authorization': 'Bearer ' + KEY_RESNET})
  assert denied.status_code == 403 and "model 'digits'" in denied.json()['error']
  assert post(url, '/v1/models/digits_resnet:predict', body,
              headers={'Authorization': 'Bearer ' + KEY_RESNET}).status_code == 200
  assert httpx.get(url + '/v1/models/digits', headers={'Authorization': 'Bearer ' + KEY_RESNET}).status_code == 403
  index = httpx.post(url + '/v2/repository/index', headers={'Authorization': 'Bearer ' + KEY_RESNET}).json()
  assert [e['name'] for e in index] == ['digits_resnet']
  assert httpx.get(url + '/v2/health/ready').status_code == 200  # probes need no key (both workers loaded)


def test_jax_backend_matches_savedmodel(jax_keyed_server, server, reference):
  x, ref = reference
  with Client(jax_keyed_server.url, api_key=KEY_ALL) as c:
    assert c.metadata('digits')['platform'] == 'jax'
    got = c.infer('digits', {'inputs': x})
  with Client(server.url) as c:
    tf_out = c.infer('digits', {'inputs': x})
  for name in ('logits', 'probabilities'):
    np.testing.assert_allclose(got[name], ref[name], atol=1e-5)
    np.testing.assert_allclose(got[name], tf_out[name], atol=1e-5)
  np.testing.assert_array_equal(got['classes'], tf_out['classes'])


def test_overload_gets_429(jax_keyed_server, reference):
  x, _ = reference
  headers = {'Authorization': 'Bearer ' + KEY_ALL}
  def one(_):
    return post(jax_keyed_server.url, '/v1/models/digits:predict', {'instances': x[:1].tolist()}, headers=headers)
  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    responses = list(pool.map(one, range(8)))
  codes = sorted(r.status_code for r in responses)
  assert codes.count(200) >= 1 and codes.count(429) >= 1, codes
  assert set(codes) <= {200, 429}
  assert 'overloaded' in next(r for r in responses if r.status_code == 429).json()['error']


def test_two_workers_share_the_port_and_pool_their_metrics(jax_keyed_server, reference):
  """Last in this file: it ends by stopping the two-worker server with SIGTERM."""
  x, ref = reference
  url, auth = jax_keyed_server.url, {'Authorization': 'Bearer ' + KEY_ALL}
  ok = 'maasjax_requests_total{api="v1",code="200",model="digits"}'
  before = metric_sum(httpx.get(url + '/metrics').text, ok)
  for _ in range(16):  # new connections, spread over the workers' sockets by the kernel
    r = post(url, '/v1/models/digits:predict', {'instances': x.tolist()}, headers={**auth, 'Connection': 'close'})
    assert r.status_code == 200, r.text
    assert [p['classes'] for p in r.json()['predictions']] == ref['classes'].tolist()
  assert metric_sum(httpx.get(url + '/metrics').text, ok) - before == 16  # every worker's requests counted
  pids = {line.split('maasjax.serve[')[1].split(']')[0] for line in jax_keyed_server.output().splitlines()
          if 'maasjax.serve[' in line and 'model digits version 1 loaded' in line}
  assert len(pids) == 2, jax_keyed_server.output()  # two processes, each with its own copy
  # --log-level debug: one JSON line per request; the 16 predictions were answered by both workers.
  served = [line for line in request_lines(jax_keyed_server.output())
            if line['path'] == '/v1/models/digits:predict' and line['method'] == 'POST' and line['code'] == 200]
  assert len(served) >= 16 and {str(line['pid']) for line in served[-16:]} == pids, served[-16:]
  assert jax_keyed_server.stop() == 0  # SIGTERM: the supervisor drains both workers and exits 0


def request_lines(output: str) -> list[dict]:
  """The server's per-request log lines: whole lines of JSON (nothing else on a line starting with '{')."""
  return [json.loads(line) for line in output.splitlines() if line.startswith('{')]


def test_runner_batches_what_one_loop_iteration_parses_and_runs_short_calls_on_the_loop():
  """No batch timeout: requests submitted in one event-loop iteration share one call. A call known to be short
  runs on the event loop (a hand-off to the model thread costs more); the first call of a size, and any call
  known to take longer than inline_call_s, run in the model thread."""
  import asyncio
  import threading
  from concurrent.futures import ThreadPoolExecutor
  from maasjax.serve.batching import Runner

  def runner(delay_s, inline_call_s):  # thresholds far from the delays: a busy machine cannot flip them
    calls = []
    def run(arrays):
      calls.append((threading.get_ident(), arrays['x'].shape[0]))
      time.sleep(delay_s)
      return {'y': arrays['x'] * 2}
    return calls, Runner(run, ThreadPoolExecutor(1), max_batch_size=8, batch_timeout_s=0.0, buckets=(1, 8),
                         max_queue_rows=64, observe_batch=lambda rows: None, set_queue=lambda rows: None,
                         inline_call_s=inline_call_s)

  async def bursts(r):
    out = []
    for _ in range(3):
      results = await asyncio.gather(*(r.submit({'x': np.full((1, 2), i, np.float32)}, 1) for i in range(5)))
      out.append([float(y['y'][0, 0]) for y in results])
    return threading.get_ident(), out

  fast_calls, fast = runner(0.0, inline_call_s=0.5)
  loop_thread, results = asyncio.run(bursts(fast))
  assert results == [[0.0, 2.0, 4.0, 6.0, 8.0]] * 3  # each request gets its own rows back
  assert [rows for _, rows in fast_calls] == [8, 8, 8]  # one call per burst, padded to the bucket
  assert [t == loop_thread for t, _ in fast_calls] == [False, True, True]
  slow_calls, slow = runner(0.05, inline_call_s=0.01)
  loop_thread, _ = asyncio.run(bursts(slow))
  assert len(slow_calls) == 3 and all(t != loop_thread for t, _ in slow_calls)

  async def unbatchable_burst(r):  # rows that cannot be stacked: each request in the batch gets the error
    return await asyncio.wait_for(asyncio.gather(
        r.submit({'x': np.zeros((1, 2), np.float32)}, 1), r.submit({'x': np.zeros((1, 3), np.float32)}, 1)), 5)
  with pytest.raises(ValueError, match='concatenat'):
    asyncio.run(unbatchable_burst(runner(0.0, inline_call_s=0.5)[1]))


def test_predict_routes_answer_in_front_of_fastapi(exported):
  """POSTs to the predict routes never enter FastAPI (its middleware, routing and Request/Response objects
  cost more per request than a small model) and answer with codec's body and the headers a Starlette Response
  would send; other methods on those paths still get FastAPI's 405."""
  import gc
  from fastapi.testclient import TestClient
  from starlette.responses import Response
  from maasjax.serve import codec
  from maasjax.serve.app import ServeSettings
  from maasjax.serve.server import build
  gc.unfreeze()
  app, repo = build(exported['base'], ServeSettings(max_batch_size=8, buckets=(8,), max_body_bytes=20_000))
  repo.poll()
  assert gc.get_freeze_count() > 0  # what a load leaves alive is hidden from the collector's full passes
  fastapi_app, entered = app.app, []

  async def spy(scope, receive, send):
    if scope['type'] == 'http':
      entered.append(scope['path'])
    await fastapi_app(scope, receive, send)
  app.app = spy
  x = heldout_digits(3)
  out8 = repo.get('digits').run('serving_default', {'inputs': np.concatenate([x, np.zeros((5, 8, 8, 1), np.float32)])})
  outputs = {k: v[:3] for k, v in out8.items()}  # what a batch padded to 8 rows gives these 3
  tensor = {'name': 'inputs', 'shape': [3, 8, 8, 1], 'datatype': 'FP32'}
  as_json = {'id': 'a', 'inputs': [dict(tensor, data=x.ravel().tolist())], 'outputs': [{'name': 'logits'}]}
  as_binary = {'inputs': [dict(tensor, parameters={'binary_data_size': x.nbytes})],
               'parameters': {'binary_data_output': True}}
  head = json.dumps(as_binary).encode()
  with TestClient(app) as client:
    for path, body, headers, (content, extra) in [
        ('/v2/models/digits/infer', json.dumps(as_json).encode(), {}, codec.v2_response(as_json, 'digits', 1, outputs)),
        ('/v2/models/digits/versions/1/infer', head + x.tobytes(), {'Inference-Header-Content-Length': str(len(head))},
         codec.v2_response(as_binary, 'digits', 1, outputs)),
        ('/v1/models/digits:predict', json.dumps({'instances': x.tolist()}).encode(), {},
         (codec.v1_response(outputs, True), None))]:
      r = client.post(path, content=body, headers=headers)
      want = Response(content, media_type='application/octet-stream' if extra else 'application/json', headers=extra)
      assert (r.status_code, r.content, r.headers.raw) == (200, content, want.raw_headers), path
    r = client.post('/v1/models/nosuch/versions/1:predict', content=b'{}')
    assert r.status_code == 404 and r.headers.raw == Response(r.content, 404, media_type='application/json').raw_headers
    chunked = client.post('/v2/models/digits/infer', content=iter([b' ' * 30_000]))  # no Content-Length
    assert chunked.status_code == 413 and 'exceeds the limit of 20000 bytes' in chunked.json()['error']
    assert entered == []
    assert client.get('/v2/models/digits/infer').status_code == 405 and entered == ['/v2/models/digits/infer']


def test_a_response_leaves_in_one_write():
  """uvicorn writes a response's headers, then its body: the server's transport holds both until the end of the
  loop iteration and writes them with one syscall (on loopback, one wake-up of the client instead of two)."""
  import asyncio
  from maasjax.serve.server import _CoalescedWrites

  class Transport:
    def __init__(self):
      self.writes, self.closed = [], False

    def write(self, data):
      self.writes.append(data)

    def is_closing(self):
      return self.closed

    def close(self):
      self.closed = True

    def get_extra_info(self, name):
      return name

  async def respond(t, transport):
    t.write(b'HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n')
    t.write(b'{}')
    held = list(transport.writes)
    await asyncio.sleep(0)
    t.write(b'bye')
    t.close()  # a closing connection writes what it holds first
    return held

  transport = Transport()
  t = _CoalescedWrites(transport, asyncio.new_event_loop())
  held = t._loop.run_until_complete(respond(t, transport))
  assert held == [] and transport.writes == [b'HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}', b'bye']
  assert transport.closed and t.get_extra_info('peername') == 'peername'
