"""`maasjax privacy-report --workdir W`: the membership-inference check of a trained workdir."""
from __future__ import annotations

import json
import os


def add_args(p) -> None:
  p.add_argument('--workdir', required=True, help='a trained workdir (private or not)')


def run(args, overrides) -> None:
  from maasjax.config import load_workdir_config
  from maasjax.privacy.membership import write_report
  from maasjax.train.loop import restore_latest
  config = load_workdir_config(args.workdir)
  with config.unlocked():  # evaluation only: no noise calibration or sampling plan needed
    if config.get('privacy'):
      config.privacy.target_epsilon = 0.0
  exp, state, _ = restore_latest(config, args.workdir)
  summary = {}
  path = os.path.join(args.workdir, 'summary.json')
  if os.path.exists(path):
    with open(path) as f:
      summary = json.load(f)
  write_report(exp, state, args.workdir, summary)
