"""Hot reload under load with zero failed requests, a broken version refused, SIGTERM losing no request."""
import concurrent.futures
import os
import shutil
import threading
import time

import httpx
import numpy as np
import pytest

from serve_fixtures import ServerProcess, copy_version, write_broken_version

BODY = {'inputs': [{'name': 'inputs', 'shape': [1, 8, 8, 1], 'datatype': 'FP32', 'data': [1.0] * 64}]}


@pytest.fixture(scope='module')
def reload_base(exported, tmp_path_factory):
  base = str(tmp_path_factory.mktemp('reload') / 'models')
  os.makedirs(base)
  shutil.copytree(os.path.join(exported['base'], 'digits', '1'), os.path.join(base, 'digits', '1'))
  return base


def wait_for(predicate, timeout=120.0):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if predicate():
      return True
    time.sleep(0.2)
  return False


@pytest.mark.slow
def test_hot_reload_under_load_and_broken_version(exported, reload_base):
  srv = ServerProcess(reload_base, '--poll-seconds', '0.3', '--max-batch-size', '8', '--buckets', '1,8')
  stop = threading.Event()
  results = []  # (status, version)

  def load():
    with httpx.Client(base_url=srv.url, timeout=30) as c:
      while not stop.is_set():
        r = c.post('/v2/models/digits/infer', json=BODY)
        results.append((r.status_code, r.json().get('model_version') if r.status_code == 200 else r.text))

  try:
    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
      t.start()
    assert wait_for(lambda: len(results) > 20)
    copy_version(reload_base, 'digits', 1, 'digits', 2)  # a new version appears under load
    assert wait_for(lambda: any(v == '2' for _, v in results[-20:]))
    n_swapped = len(results)
    write_broken_version(reload_base, 'digits', 3)  # a broken one must not replace version 2
    status = lambda: httpx.get(srv.url + '/v1/models/digits').json()['model_version_status']
    assert wait_for(lambda: any(s['version'] == '3' and s['state'] == 'END' for s in status()))
    assert wait_for(lambda: len(results) > n_swapped + 40)
  finally:
    stop.set()
    for t in threads:
      t.join()
  try:
    failures = [r for r in results if r[0] != 200]
    assert not failures, failures[:5]
    versions = [v for _, v in results]
    assert versions[0] == '1' and versions[-1] == '2'
    assert versions.index('2') > 0 and '1' not in versions[versions.index('2') + 50:]  # swapped, not flapping
    by_version = {s['version']: s for s in status()}
    assert by_version['2']['state'] == 'AVAILABLE'
    assert by_version['3']['status']['error_message']  # the logged reason is reported too
    assert 'version 3 refused' in srv.output()
    metrics = httpx.get(srv.url + '/metrics').text
    assert 'maasjax_model_events_total{event="load_failed",model="digits"} 1.0' in metrics
    assert 'maasjax_model_events_total{event="unloaded",model="digits"} 1.0' in metrics
  finally:
    assert srv.stop() == 0


@pytest.mark.slow
def test_sigterm_finishes_in_flight_requests(reload_base):
  # A long batch timeout keeps requests in flight when SIGTERM arrives.
  srv = ServerProcess(reload_base, '--batch-timeout-ms', '1500', '--max-batch-size', '64', '--buckets', '1,64')
  try:
    def one(_):
      return httpx.post(srv.url + '/v2/models/digits/infer', json=BODY, timeout=30)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
      futures = [pool.submit(one, i) for i in range(8)]
      time.sleep(0.7)  # all 8 sent and waiting in the batch queue
      assert not any(f.done() for f in futures)
      t0 = time.time()
      srv.proc.send_signal(15)
      responses = [f.result() for f in futures]
    assert [r.status_code for r in responses] == [200] * 8
    assert len({tuple(np.round(r.json()['outputs'][0]['data'], 5)) for r in responses}) == 1
    assert srv.proc.wait(60) == 0
    assert time.time() - t0 < 30
    with pytest.raises(httpx.ConnectError):  # no longer accepting
      httpx.post(srv.url + '/v2/models/digits/infer', json=BODY, timeout=5)
  finally:
    srv.stop()
