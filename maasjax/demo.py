"""`make demo`: train the default experiment (embedded digits CNN) and show the result."""
from __future__ import annotations

import argparse
import json
import os
import sys

from maasjax import cli


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument('--workdir', default='runs/digits_cnn')
  p.add_argument('--config', default='experiments/digits_cnn.py')
  args = p.parse_args(argv)
  rc = cli.main(['train', '--config', args.config, '--workdir', args.workdir])
  if rc:
    return rc
  with open(os.path.join(args.workdir, 'summary.json')) as f:
    summary = json.load(f)
  print(f"demo: test accuracy {summary['test/accuracy']:.4f} on the held-out digits in "
        f"{summary['wall_time_s']:.1f} s")
  return 0


if __name__ == '__main__':
  sys.exit(main())
