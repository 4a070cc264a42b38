"""A sweep's results: results.csv (a row per trial), results.md (mean ± std over seeds per setting, the best
marked) and PNG plots (the final metric against each swept setting; every trial's learning curve)."""
from __future__ import annotations

import csv
import json
import math
import os
from collections import defaultdict
from typing import Any

import numpy as np

from maasjax.config import ConfigError


def collect(workdir: str) -> list[dict[str, Any]]:
  """One row per trial folder with a summary.json: its overrides (from sweep.json) and final metrics."""
  index = os.path.join(workdir, 'sweep.json')
  if not os.path.exists(index):
    raise ConfigError(f'{workdir!r} holds no sweep.json; expected a folder written by maasjax sweep')
  with open(index) as f:
    trials = json.load(f)['trials']
  rows = []
  for name, trial in trials.items():
    path = os.path.join(workdir, name, 'summary.json')
    if not os.path.exists(path):
      continue
    with open(path) as f:
      summary = json.load(f)
    row = {'trial': name, **{k[len('config.'):]: v for k, v in trial.items()}}
    row.update({k: v for k, v in summary.items() if k.startswith(('test/', 'eval/'))})
    row.update(steps=summary.get('steps'), wall_time_s=summary.get('wall_time_s'))
    rows.append(row)
  return rows


def _metric(rows) -> tuple[str, bool]:
  """The metric to rank settings by: test accuracy (higher is better) or else test loss (lower)."""
  keys = set().union(*rows) if rows else set()
  for key, higher in (('test/accuracy', True), ('test/exact_match', True), ('test/loss', False)):
    if key in keys:
      return key, higher
  return 'test/loss', False


def write(workdir: str) -> dict[str, str]:
  rows = collect(workdir)
  if not rows:
    raise ConfigError(f'no trial in {workdir!r} has finished yet (no summary.json)')
  with open(os.path.join(workdir, 'sweep.json')) as f:
    swept = sorted({k[len('config.'):] for t in json.load(f)['trials'].values() for k in t})
  columns = ['trial'] + swept + sorted({k for r in rows for k in r if '/' in k}) + ['steps', 'wall_time_s']
  with open(os.path.join(workdir, 'results.csv'), 'w', newline='') as f:
    writer = csv.DictWriter(f, columns)
    writer.writeheader()
    for r in rows:
      writer.writerow({c: r.get(c, '') for c in columns})
  metric, higher = _metric(rows)
  settings = [k for k in swept if k != 'seed']
  groups = defaultdict(list)
  for r in rows:
    groups[tuple(r.get(k) for k in settings)].append(r)
  means = {g: float(np.mean([r[metric] for r in rs if metric in r])) for g, rs in groups.items()}
  best = (max if higher else min)(means, key=means.get)
  metrics = sorted({k for r in rows for k in r if k.startswith('test/')})
  lines = [f'| {" | ".join(settings) or "setting"} | seeds | ' + ' | '.join(metrics) + ' |',
           '|' + '---|' * (max(1, len(settings)) + 1 + len(metrics))]
  for g, rs in sorted(groups.items(), key=lambda kv: str(kv[0])):
    cells = []
    for m in metrics:
      vals = [r[m] for r in rs if m in r and r[m] is not None]
      cells.append(f'{np.mean(vals):.4f} ± {np.std(vals):.4f}' if vals else '-')
    mark = ' **best**' if g == best else ''
    lines.append(f'| {" | ".join(str(v) for v in g) or "-"}{mark} | {len(rs)} | ' + ' | '.join(cells) + ' |')
  with open(os.path.join(workdir, 'results.md'), 'w') as f:
    f.write(f'Mean ± std over seeds of each setting; best by {metric} ({"higher" if higher else "lower"} is '
            'better).\n\n' + '\n'.join(lines) + '\n')
  plots = _plots(workdir, rows, settings, metric)
  return {'csv': os.path.join(workdir, 'results.csv'), 'md': os.path.join(workdir, 'results.md'), **plots}


def _plots(workdir: str, rows, settings: list[str], metric: str) -> dict[str, str]:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  out = {}
  numeric = [k for k in settings if all(isinstance(r.get(k), (int, float)) for r in rows)]
  if numeric:
    fig, axes = plt.subplots(1, len(numeric), figsize=(5 * len(numeric), 3.6), squeeze=False)
    for ax, key in zip(axes[0], numeric):
      by = defaultdict(list)
      for r in rows:
        by[r[key]].append(r[metric])
      xs = sorted(by)
      ax.errorbar(xs, [np.mean(by[x]) for x in xs], yerr=[np.std(by[x]) for x in xs], fmt='o-', capsize=4)
      if all(x > 0 for x in xs) and max(xs) / min(xs) >= 10:
        ax.set_xscale('log')
      ax.set_xlabel(key)
      ax.set_ylabel(f'{metric} (mean ± std over seeds)')
      ax.grid(alpha=0.3)
    fig.tight_layout()
    out['metric_plot'] = os.path.join(workdir, 'results_metric.png')
    fig.savefig(out['metric_plot'], dpi=110)
    plt.close(fig)
  fig, ax = plt.subplots(figsize=(6.5, 4))
  for r in rows:
    path = os.path.join(workdir, r['trial'], 'metrics.jsonl')
    if os.path.exists(path):
      points = [(d['step'], d['train/loss']) for d in map(json.loads, open(path)) if 'train/loss' in d
                and math.isfinite(d['train/loss'])]
      if points:
        ax.plot(*zip(*points), label=r['trial'], alpha=0.8)
  ax.set_yscale('log')
  ax.set_xlabel('step')
  ax.set_ylabel('train loss')
  ax.grid(alpha=0.3)
  ax.legend(fontsize=6)
  fig.tight_layout()
  out['curves_plot'] = os.path.join(workdir, 'results_curves.png')
  fig.savefig(out['curves_plot'], dpi=110)
  plt.close(fig)
  return out
