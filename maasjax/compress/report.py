"""`maasjax compress --report`: a standard set of variants of one trained workdir, each its own compressed
workdir under OUT, compared in compression_report.md/.json and a PNG (test accuracy against size and latency)."""
from __future__ import annotations

import json
import os
from typing import Any

from maasjax.config import ConfigError

# (variant name, method, compress settings, the variant it compresses further or None for the source)
VARIANTS = (
    ('prune50', 'prune', {'sparsity': 0.5}, None),
    ('prune80', 'prune', {'sparsity': 0.8}, None),
    ('prune90', 'prune', {'sparsity': 0.9}, None),
    ('prune2of4', 'prune', {'pattern': '2:4'}, None),
    ('channels50', 'channels', {'fraction': 0.5}, None),
    ('int8_ptq', 'quantize', {'mode': 'ptq'}, None),
    ('int8_qat', 'quantize', {'mode': 'qat'}, None),
    ('prune80_int8', 'quantize', {'mode': 'ptq'}, 'prune80'),  # TF-MOT's "collaborative" prune + quantize
    ('fold', 'fold', {}, None),
)
SIZE_KEYS = ('params', 'nonzero_params', 'bytes', 'gzip_bytes')


def summary_row(name: str, method: str, summary: dict[str, Any]) -> dict[str, Any]:
  """A report row from a compressed workdir's summary.json."""
  block = summary['compression']
  row = {'variant': name, 'method': method, 'test/accuracy': summary.get('test/accuracy'),
         **{k: block[k] for k in SIZE_KEYS}, 'latency_ms': block.get('latency_ms'),
         'settings': block['settings']}
  return row


def _baseline_row(summary: dict[str, Any]) -> dict[str, Any]:
  base = summary['compression']['baseline']
  while 'compression' in base:  # a chained variant's baseline is the first source's
    base = base['compression']['baseline']
  return {'variant': 'dense baseline', 'method': '', 'test/accuracy': base.get('test/accuracy'),
          **{k: base[k] for k in SIZE_KEYS}, 'latency_ms': base.get('latency_ms'), 'settings': {}}


def run_variants(source: str, out: str, overrides=(), measure_latency: bool = True, variants=VARIANTS,
                 log=print) -> tuple[list[dict], list[dict]]:
  """(rows, skipped): one row per variant that applies to the source's model (the baseline first)."""
  from maasjax.compress.workdir import compress_workdir
  rows, skipped, done = [], [], {}
  for name, method, settings, parent in variants:
    if parent is not None and parent not in done:
      skipped.append({'variant': name, 'why': f'needs variant {parent}'})
      continue
    workdir = os.path.join(out, name)
    extra = [(f'compress.{k}', str(v)) for k, v in settings.items()]
    try:  # latency is measured below, every variant side by side
      summary = compress_workdir(done.get(parent, source), workdir, method, list(overrides) + extra,
                                 measure_latency=False, verbose=False)
    except ConfigError as e:
      skipped.append({'variant': name, 'why': str(e)})
      log(f'{name}: skipped ({e})')
      continue
    done[name] = workdir
    if not rows:
      rows.append(_baseline_row(summary))
    rows.append(summary_row(name, method, summary))
    block = summary['compression']
    log(f'{name}: test/accuracy {summary["test/accuracy"]:.4f}, gzip {block["gzip_bytes"]} bytes, nonzero '
        f'{block["nonzero_params"]} of {block["params"]}', flush=True)
  if measure_latency and rows:
    measure_side_by_side(rows, [source] + list(done.values()))
  return rows, skipped


def measure_side_by_side(rows: list[dict], workdirs: list[str]) -> None:
  """Each row's latency_ms, all models timed in the same interleaved rounds (one process, one machine state)."""
  from maasjax.compress import measure
  from maasjax.config import load_workdir_config
  from maasjax.train.loop import restore_latest
  calls = []
  for workdir in workdirs:
    exp, state, _ = restore_latest(load_workdir_config(workdir), workdir)
    calls.append(measure.serving_call(exp, state))
  for row, ms in zip(rows, measure.latencies_ms(calls)):
    row['latency_ms'] = ms


def _fmt_ms(row, batch) -> str:
  ms = (row.get('latency_ms') or {}).get(f'batch_{batch}')
  return f'{ms:.3f}' if ms is not None else '-'


def markdown(source: str, rows: list[dict], skipped: list[dict]) -> str:
  base = rows[0]
  lines = [f'# Compression report: {source}', '',
           '| variant | test accuracy | Δ points | params | nonzero | bytes | gzip bytes | gzip vs dense | '
           'ms @1 | ms @64 |', '|---|---|---|---|---|---|---|---|---|---|']
  for r in rows:
    delta = 100 * (r['test/accuracy'] - base['test/accuracy'])
    lines.append(f'| {r["variant"]} | {r["test/accuracy"]:.4f} | {delta:+.2f} | {r["params"]:,} | '
                 f'{r["nonzero_params"]:,} | {r["bytes"]:,} | {r["gzip_bytes"]:,} | '
                 f'{base["gzip_bytes"] / r["gzip_bytes"]:.2f}x | {_fmt_ms(r, 1)} | {_fmt_ms(r, 64)} |')
  if skipped:
    lines += ['', 'Not applicable here:', ''] + [f'- {s["variant"]}: {s["why"]}' for s in skipped]
  lines += ['', 'bytes: the variables as the export saves them (jax/variables.npz); gzip: the same, gzip -9. '
            'Latency: the serving function (jit, XLA:CPU here), median ms per call, every model timed in the same '
            'interleaved rounds.', '']
  return '\n'.join(lines)


def plot(rows: list[dict], path: str) -> None:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  has_latency = all(r.get('latency_ms') for r in rows)
  fig, axes = plt.subplots(1, 2 if has_latency else 1, figsize=(11 if has_latency else 5.5, 4), squeeze=False)
  panels = [('gzip_bytes', 'gzip bytes of the saved variables', lambda r: r['gzip_bytes'])]
  if has_latency:
    panels.append(('latency', 'latency at batch 64 (ms)', lambda r: r['latency_ms']['batch_64']))
  for ax, (_, label, x_of) in zip(axes[0], panels):
    for r in rows:
      baseline = r['variant'] == 'dense baseline'
      ax.scatter(x_of(r), 100 * r['test/accuracy'], marker='*' if baseline else 'o', s=160 if baseline else 40,
                 color='black' if baseline else None, zorder=3)
      ax.annotate(r['variant'], (x_of(r), 100 * r['test/accuracy']), fontsize=7, xytext=(4, 3),
                  textcoords='offset points')
    ax.set_xlabel(label)
    ax.set_ylabel('test accuracy (%)')
    ax.grid(alpha=0.3)
  axes[0][0].set_xscale('log')
  fig.suptitle('accuracy against size and latency (★ dense baseline)')
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write_report(source: str, out: str, overrides=(), measure_latency: bool = True, variants=VARIANTS) -> list[str]:
  """Runs the variants into OUT/<variant>/ and writes the report files; returns their paths."""
  if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
    raise ConfigError(f'--out {out!r} already exists and is not empty; choose a new folder for the report')
  os.makedirs(out, exist_ok=True)
  rows, skipped = run_variants(source, out, overrides, measure_latency, variants)
  if not rows:
    raise ConfigError(f'no compression variant applies to {source!r}: ' + '; '.join(s['why'] for s in skipped))
  paths = [os.path.join(out, f'compression_report.{ext}') for ext in ('md', 'json', 'png')]
  with open(paths[0], 'w') as f:
    f.write(markdown(source, rows, skipped))
  with open(paths[1], 'w') as f:
    json.dump({'source': os.path.abspath(source), 'rows': rows, 'skipped': skipped}, f, indent=2)
  plot(rows, paths[2])
  return paths
