"""`maasjax COMMAND ...`: one table of commands; each area's module is imported only when its command runs.

Every command lives in its area (`maasjax/<area>/commands.py`) as `add_args(parser)` and
`run(args, overrides)`; this file only parses and dispatches, so `maasjax --help` and
`maasjax serve --help` load neither flax nor TensorFlow. Errors a user must fix exit 2 with one line.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import NamedTuple, Sequence

from maasjax.config import ConfigError, split_overrides


class Command(NamedTuple):
  module: str  # imported only when this command runs (or its --help is asked for)
  add_args: str  # name of `add_args(parser)` in the module
  run: str  # name of `run(args, overrides)` in the module
  help: str
  takes_overrides: bool = False  # accepts --config.a.b=value


COMMANDS: dict[str, Command] = {
    'train': Command('maasjax.train.commands', 'train_args', 'train',
                     'train (resuming from the workdir), evaluate, write summary.json', True),
    'eval': Command('maasjax.train.commands', 'eval_args', 'evaluate',
                    'evaluate a trained workdir\'s latest checkpoint (its config.json; no --config needed)', True),
    'export': Command('maasjax.export.commands', 'export_args', 'export',
                      'export a workdir\'s checkpoint as a TF SavedModel at OUT/NAME/VERSION (parity-checked)', True),
    'models': Command('maasjax.export.commands', 'models_args', 'models',
                      'list every model and version under a base path (task, inputs, size, test metrics)'),
    'serve': Command('maasjax.serve.commands', 'add_args', 'run',
                     'serve every model under a base path over TF Serving REST v1 and Open Inference Protocol v2'),
    'generate': Command('maasjax.generate', 'add_args', 'run',
                        'sample a continuation from a trained language model (or an output from a seq2seq model)'),
    'compress': Command('maasjax.compress.commands', 'add_args', 'run',
                        'compress a trained workdir (prune, channels, quantize, distill, cut, fold) into a new '
                        'workdir that eval, export and serve take; --report measures a standard set', True),
    'sweep': Command('maasjax.sweep.commands', 'sweep_args', 'sweep',
                     'run a sweep of trials (config overrides), each its own maasjax train; then results'),
    'results': Command('maasjax.sweep.commands', 'results_args', 'results',
                       'tables (csv, markdown: mean ± std over seeds) and plots of a sweep folder'),
    'privacy-report': Command('maasjax.privacy.commands', 'add_args', 'run',
                              'membership-inference check of a trained workdir (AUC, advantage) beside its epsilon'),
}


class _Parser(argparse.ArgumentParser):
  def error(self, message):  # argparse's own errors: one line, exit 2 (its default too)
    raise ConfigError(f'{self.prog}: {message}')


def _chosen(argv: Sequence[str]) -> str | None:
  """The command word in argv (the first argument that is not an option), if it names a command."""
  for arg in argv:
    if not arg.startswith('-'):
      return arg if arg in COMMANDS else None
  return None


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
  """The parser, with flags only for the command named in argv (so other areas stay unimported)."""
  parser = _Parser(prog='maasjax', description='maasjax: config -> train -> evaluate -> export -> serve')
  sub = parser.add_subparsers(dest='command', metavar='COMMAND', parser_class=_Parser)
  chosen = _chosen(argv)
  for name, cmd in COMMANDS.items():
    p = sub.add_parser(name, help=cmd.help, description=cmd.help)
    if name == chosen:
      getattr(importlib.import_module(cmd.module), cmd.add_args)(p)
  return parser


# Commands whose speed depends on the allocator (JAX CPU steps), and what they re-execute with.
FAST_ALLOCATOR_COMMANDS = ('train', 'eval')
# Huge pages; no mmap per allocation (mmap_max=0) and no trimming of the heap's top (trim_threshold 16 GiB), so the
# buffers a step frees are reused by the next step instead of being returned to the kernel and faulted in again.
FAST_ALLOCATOR_ENV = {'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=1:glibc.malloc.mmap_max=0:'
                                        'glibc.malloc.trim_threshold=17179869184'}


def _reexec_with_fast_allocator(argv: Sequence[str]) -> None:
  """Re-executes this process once with glibc's malloc on transparent huge pages, keeping what it frees.

  XLA:CPU's steps allocate and free big buffers every step (the MNIST CNN's step takes a 47 MB scratch
  buffer); with glibc's defaults each is mmap'ed, unmapped and faulted in again, page by page (~12,000 faults
  per MNIST CNN step, a third of its time). Huge pages cut the faults ~6x; serving big blocks from the heap
  and never trimming it cut them to ~0 (see FAST_ALLOCATOR_ENV). The process keeps its peak heap: right
  for a trainer, whose steps need the same memory again. glibc reads GLIBC_TUNABLES only at process start, so
  the `maasjax` program sets it and re-executes itself (same pid, arguments and environment otherwise).
  Skipped when GLIBC_TUNABLES is already set (by the user, or by this re-exec), off Linux, or with
  MAASJAX_NO_REEXEC=1. A notebook gets the same by starting Jupyter with GLIBC_TUNABLES set.
  """
  if (sys.platform != 'linux' or os.environ.get('MAASJAX_NO_REEXEC') or 'GLIBC_TUNABLES' in os.environ
      or _chosen(argv) not in FAST_ALLOCATOR_COMMANDS or not sys.executable):
    return
  os.environ.update(FAST_ALLOCATOR_ENV)
  try:
    os.execv(sys.executable, [sys.executable, '-m', 'maasjax.cli', *argv])
  except OSError:  # could not re-execute: run as we are
    pass


def main(argv: Sequence[str] | None = None) -> int:
  if argv is None:  # run as the `maasjax` program (not called from Python): may re-execute, see above
    _reexec_with_fast_allocator(sys.argv[1:])
  argv = list(sys.argv[1:] if argv is None else argv)
  # TF's C++ start-up banners are not for users; set before anything imports TF. TF 2.21 prints its oneDNN
  # notice whatever the log level unless oneDNN's custom ops are off: TF here only reads data, writes
  # TensorBoard events and runs SavedModels through XLA, none of which uses them.
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
  try:
    overrides, rest = split_overrides(argv)
    parser = build_parser(rest)
    args = parser.parse_args(rest)
    if not args.command:
      parser.print_help()
      return 2
    cmd = COMMANDS[args.command]
    if overrides and not cmd.takes_overrides:
      raise ConfigError(f'maasjax {args.command} takes no --config.* overrides')
    status = getattr(importlib.import_module(cmd.module), cmd.run)(args, overrides)
    return status if isinstance(status, int) else 0  # a command may return its exit status (sweep: 1 if a trial failed)
  except ConfigError as e:
    print(f'maasjax: error: {e}', file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print('maasjax: interrupted; the last complete checkpoint is kept', file=sys.stderr)
    return 130
  except Exception as e:  # noqa: BLE001 - the loop's own typed failure; anything else is a bug: re-raised
    if type(e).__name__ == 'TrainingDiverged':
      print(f'maasjax: error: {e}', file=sys.stderr)
      return 1
    raise


if __name__ == '__main__':
  sys.exit(main())
