"""A loss-threshold membership-inference attack (Yeom et al. 2018; TF Privacy's `membership_inference_attack`
reports the same figures): can the model's loss tell its training examples from held-out ones?

ROC AUC 0.5 and advantage (max TPR - FPR) 0 mean the attack learns nothing; DP-SGD bounds the advantage by
e^epsilon - 1 + delta, so a private model should sit near 0.5.
"""
from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np


def per_example_losses(exp, state, split: str, limit: int) -> np.ndarray:
  """The model's loss on each of the first `limit` examples of a split (no dropout, no augmentation)."""
  task, model = exp.task, exp.model
  arrays = {k: v[:limit] for k, v in exp.dataset.split_arrays(split).items()}
  variables = {'params': state.params, **state.model_state}

  @jax.jit
  def losses(batch):
    outputs = task.forward(model, variables, batch, train=False)
    one = lambda o, b: task.loss_and_sums(o[None], jax.tree.map(lambda x: x[None], b))[0]
    return jax.vmap(one)(outputs, batch)

  size = int(exp.config.eval_batch_size)
  out = []
  for start in range(0, len(arrays['labels']), size):
    chunk = {k: v[start:start + size] for k, v in arrays.items()}
    pad = size - len(chunk['labels'])
    chunk = {k: np.concatenate([v, np.repeat(v[:1], pad, axis=0)]) if pad else v for k, v in chunk.items()}
    out.append(np.asarray(losses(chunk))[:size - pad])
  return np.concatenate(out)


def loss_threshold_attack(member_losses: np.ndarray, nonmember_losses: np.ndarray) -> dict[str, float]:
  """AUC and advantage of guessing 'member' when the loss is below a threshold, over every threshold."""
  from sklearn.metrics import roc_auc_score, roc_curve
  labels = np.concatenate([np.ones(len(member_losses)), np.zeros(len(nonmember_losses))])
  scores = -np.concatenate([member_losses, nonmember_losses])  # lower loss: more likely a member
  fpr, tpr, _ = roc_curve(labels, scores)
  return {'auc': float(roc_auc_score(labels, scores)), 'advantage': float(np.max(tpr - fpr))}


def report(exp, state) -> dict[str, Any]:
  """The attack on as many training examples as there are test examples (or the reverse)."""
  n = min(len(exp.dataset.split_arrays('train')['labels']), len(exp.dataset.split_arrays('test')['labels']))
  members = per_example_losses(exp, state, 'train', n)
  nonmembers = per_example_losses(exp, state, 'test', n)
  result = loss_threshold_attack(members, nonmembers)
  result.update(attack='loss threshold', members=int(n), nonmembers=int(n),
                mean_member_loss=float(members.mean()), mean_nonmember_loss=float(nonmembers.mean()))
  return result


def write_report(exp, state, workdir: str, summary: dict[str, Any]) -> dict[str, Any]:
  """privacy_report.json: the attack's AUC and advantage beside the run's epsilon (if it trained privately)."""
  if not hasattr(exp.dataset, 'split_arrays'):
    from maasjax.config import ConfigError
    raise ConfigError(f'privacy-report: dataset {exp.dataset.info.name!r} is not held as rows in memory; the '
                      'membership-inference check needs train and test examples by index')
  result = report(exp, state)
  result.update({k: v for k, v in summary.items() if k.startswith('privacy/')})
  result['private'] = 'privacy/epsilon' in summary
  with open(os.path.join(workdir, 'privacy_report.json'), 'w') as f:
    json.dump(result, f, indent=2)
  eps = f'epsilon {summary["privacy/epsilon"]:.3g}' if result['private'] else 'not trained privately'
  print(f'membership inference (loss threshold, {result["members"]} train vs {result["nonmembers"]} test '
        f'examples): AUC {result["auc"]:.3f}, advantage {result["advantage"]:.3f} ({eps}); '
        f'wrote {os.path.join(workdir, "privacy_report.json")}', flush=True)
  return result
