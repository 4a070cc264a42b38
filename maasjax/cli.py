"""`maasjax train|eval ...`: parses arguments and calls the library; errors exit 2 with one message."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Callable, Sequence

from maasjax.config import ConfigError, load_config, split_overrides

COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable]] = {}

# Modules that define more subcommands with `@command(...)` (imported lazily by build_parser).
# Each area adds its own module here: one line, so parallel work does not collide.
COMMAND_MODULES: list[str] = [
    'maasjax.export.commands',
    'maasjax.serve.commands',
    'maasjax.generate',
]


class _Parser(argparse.ArgumentParser):
  def error(self, message):  # argparse's own errors: one line, exit 2 (its default too)
    raise ConfigError(f'{self.prog}: {message}')


def command(name: str, help_text: str, add_args: Callable[[argparse.ArgumentParser], None] | None = None):
  """Registers `fn(args, overrides)` as `maasjax NAME`; `add_args(parser)` declares its flags."""
  def wrap(fn):
    COMMANDS[name] = (help_text, add_args or (lambda p: None), fn)
    return fn
  return wrap


def add_config_args(p: argparse.ArgumentParser) -> None:
  p.add_argument('--config', required=True,
                 help='experiment config file, e.g. experiments/digits_cnn.py; override keys with --config.a.b=value')
  p.add_argument('--workdir', required=True, help='directory for checkpoints, metrics, summaries')


@command('train', 'train (resuming from the workdir), evaluate, write summary.json', add_config_args)
def cmd_train(args, overrides):
  from maasjax.train.loop import train_and_evaluate
  config = load_config(args.config, overrides)
  summary = train_and_evaluate(config, args.workdir)
  keys = [k for k in summary if k.startswith(('test/', 'eval/'))]
  print('summary: ' + ', '.join(f'{k}={summary[k]:.4f}' for k in keys) +
        f', wall_time_s={summary["wall_time_s"]:.1f}, params={summary["num_params"]}')
  print(f'wrote {os.path.join(args.workdir, "summary.json")} and {os.path.join(args.workdir, "learning_curves.png")}')



def _eval_args(p):
  add_config_args(p)
  p.add_argument('--split', default='test', help='split to evaluate (default: test)')


@command('eval', 'evaluate the latest checkpoint of a workdir on the test split', _eval_args)
def cmd_eval(args, overrides):
  from maasjax.train.loop import evaluate
  config = load_config(args.config, overrides)
  metrics = evaluate(config, args.workdir, args.split)
  print(json.dumps(metrics, indent=2))



def build_parser() -> argparse.ArgumentParser:
  import importlib
  for module in COMMAND_MODULES:
    importlib.import_module(module)
  parser = _Parser(prog='maasjax', description='maasjax: config -> train -> evaluate -> export -> serve')
  sub = parser.add_subparsers(dest='command', metavar='COMMAND', parser_class=_Parser)
  for name, (help_text, add_args, _) in COMMANDS.items():
    add_args(sub.add_parser(name, help=help_text, description=help_text))
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  try:
    overrides, rest = split_overrides(argv)
    parser = build_parser()
    args = parser.parse_args(rest)
    if not args.command:
      parser.print_help()
      return 2
    if overrides and not hasattr(args, 'config'):
      raise ConfigError(f'maasjax {args.command} takes no --config.* overrides')
    COMMANDS[args.command][2](args, overrides)
    return 0
  except ConfigError as e:
    print(f'maasjax: error: {e}', file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print('maasjax: interrupted; the last complete checkpoint is kept', file=sys.stderr)
    return 130
  except Exception as e:  # noqa: BLE001 - the loop's own typed failures
    from maasjax.train.loop import TrainingDiverged
    if isinstance(e, TrainingDiverged):
      print(f'maasjax: error: {e}', file=sys.stderr)
      return 1
    raise


if __name__ == '__main__':
  # Run the importable module, not this __main__ copy: COMMAND_MODULES register into maasjax.cli.COMMANDS.
  from maasjax.cli import main as _main
  sys.exit(_main())
