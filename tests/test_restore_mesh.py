"""Checkpoints move between meshes: saved on 8 devices (data x fsdp x model) and restored on 1, and
saved on 1 and restored on 8 with FSDP; the bits survive and training continues as it would have."""
import pytest

from test_sharding import run_worker, strip


@pytest.fixture(scope='module')
def round_trip(tmp_path_factory):
  tmp = tmp_path_factory.mktemp('restore')
  eight = {'model': 'cnn', 'mesh': {'data': 2, 'fsdp': 2, 'model': 2}, 'preset': 'fsdp_tensor', 'steps': 3}
  one = {'model': 'cnn', 'mesh': {'data': 1}, 'preset': 'replicate', 'steps': 3}
  fsdp8 = {'model': 'cnn', 'mesh': {'fsdp': 8}, 'preset': 'fsdp'}
  paths = {k: str(tmp / k) for k in ('ckpt8', 'ckpt1')}
  saved8 = run_worker([{'do': 'save', 'case': eight, 'ckpt': paths['ckpt8'], 'npz': str(tmp / 'state8.npz')}],
                      8, tmp, name='a.json')[0]
  on1 = run_worker([{'do': 'restore', 'case': one, 'ckpt': paths['ckpt8'], 'npz': str(tmp / 'state8.npz')},
                    {'do': 'save', 'case': one, 'ckpt': paths['ckpt1'], 'npz': str(tmp / 'state1.npz')}],
                   1, tmp, name='b.json')
  on8 = run_worker([{'do': 'restore', 'case': fsdp8, 'ckpt': paths['ckpt1'], 'npz': str(tmp / 'state1.npz')}],
                   8, tmp, name='c.json')[0]
  return {'saved8': saved8, 'restored1': on1[0], 'saved1': on1[1], 'restored8': on8}


@pytest.mark.slow
def test_save_on_8_restore_on_1(round_trip):
  saved, restored = round_trip['saved8'], round_trip['restored1']
  assert saved['num_devices'] == 8 and restored['num_devices'] == 1
  # It really was split 3 ways on 8 devices ...
  assert strip(saved['param_specs']['Dense_0/kernel']) == ['fsdp', 'model']
  assert strip(saved['param_specs']['Conv_1/kernel']) == [None, None, None, 'fsdp']
  # ... and comes back whole, bit for bit: 8 parameters, Adam's 16 moments and 2 counts.
  assert restored['step'] == 3
  assert restored['compared'] == 26 and restored['mismatched'] == []
  assert all(strip(s) == [] for s in restored['param_specs'].values())
  # Training on from the restored state follows the 8-device run's own continuation.
  assert restored['continued_losses'] == pytest.approx(saved['continued_losses'], rel=1e-5, abs=1e-6)


@pytest.mark.slow
def test_save_on_1_restore_on_8_with_fsdp(round_trip):
  saved, restored = round_trip['saved1'], round_trip['restored8']
  assert saved['num_devices'] == 1 and restored['num_devices'] == 8
  assert restored['step'] == 3
  assert restored['mismatched'] == []
  # The restored arrays carry the new mesh's shardings.
  assert strip(restored['param_specs']['Dense_0/kernel']) == ['fsdp']
  assert strip(restored['param_specs']['Conv_0/kernel']) == [None, None, None, 'fsdp']
  assert restored['param_bytes_per_device'] * 6 < saved['param_bytes_per_device']
  assert restored['continued_losses'] == pytest.approx(saved['continued_losses'], rel=1e-5, abs=1e-6)
