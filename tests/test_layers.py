"""Imports run one way (DESIGN.md, Layers), and the CLI loads an area only when its command runs."""
import json
import subprocess
import sys

from conftest import ROOT


def _modules_after(code: str) -> list[str]:
  """The module names loaded after running `code` in a fresh interpreter."""
  script = code + '\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))'
  out = subprocess.run([sys.executable, '-c', script], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_library_never_imports_the_cli_and_training_never_imports_export():
  loaded = _modules_after('import maasjax.train.loop, maasjax.export.exporter, maasjax.serve.server')
  assert not [m for m in loaded if m == 'maasjax.cli' or m.startswith('maasjax.cli.')]
  # Each area's command module too: the CLI imports them, never the reverse.
  loaded = _modules_after('import maasjax.train.commands, maasjax.export.commands, maasjax.serve.commands, '
                          'maasjax.generate, maasjax.privacy.commands')
  assert 'maasjax.cli' not in loaded
  loaded = _modules_after('import maasjax.train.loop')
  assert 'maasjax.train.loop' in loaded
  assert not [m for m in loaded if m.startswith(('maasjax.export', 'maasjax.serve'))]


def test_help_and_listing_load_neither_flax_nor_tensorflow(tmp_path):
  for argv in (['--help'], ['serve', '--help'], ['models', '--model-base-path', str(tmp_path)]):
    code = (f'import contextlib, io\nfrom maasjax import cli\n'
            f'with contextlib.redirect_stdout(io.StringIO()):\n'
            f'  try:\n    cli.main({argv!r})\n  except SystemExit:\n    pass')
    loaded = _modules_after(code)
    heavy = [m for m in ('flax', 'tensorflow', 'jax', 'maasjax.train', 'maasjax.models') if m in loaded]
    assert not heavy, (argv, heavy)


def test_training_on_embedded_data_loads_neither_tensorflow_nor_sklearn_datasets(tmp_path):
  """TensorFlow (~4 s) is for tfds data and export; sklearn.datasets (~1.6 s) only held the digits file. A
  digits run's start-up pays for neither, TensorBoard scalars included."""
  code = ('from maasjax.config import load_config\nfrom maasjax.train.loop import train_and_evaluate\n'
          "config = load_config('experiments/digits_mlp.py')\n"
          'config.num_train_steps = config.log_every_steps = config.eval_every_steps = 2\n'
          'config.checkpoint.every_steps = 2\n'
          f'train_and_evaluate(config, {str(tmp_path / "run")!r})')
  loaded = _modules_after(code)
  assert 'maasjax.train.scalars' in loaded and (tmp_path / 'run' / 'summary.json').exists()
  assert not [m for m in ('tensorflow', 'sklearn.datasets') if m in loaded]
