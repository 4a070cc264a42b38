"""The task table: `DatasetInfo.task` -> the Task class that trains and scores it (one explicit list)."""
from __future__ import annotations

from maasjax.config import check_name
from maasjax.data.base import DatasetInfo
from maasjax.train.graph_tasks import GraphClassification, GraphMultiLabel, NodeClassification
from maasjax.train.sequence_tasks import LanguageModelling, Seq2Seq, SequenceClassification
from maasjax.train.tasks import Classification, Task

TASKS: dict[str, type[Task]] = {
    'classification': Classification,
    'node_classification': NodeClassification,
    'graph_classification': GraphClassification,
    'graph_multilabel': GraphMultiLabel,
    'language_modelling': LanguageModelling,
    'seq2seq': Seq2Seq,
    'sequence_classification': SequenceClassification,
}


def get_task(info: DatasetInfo) -> Task:
  check_name('task', info.task, TASKS)
  return TASKS[info.task](info)
