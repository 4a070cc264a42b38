r"""Character-level language model: a decoder-only Transformer over a local text file.

  maasjax train --config experiments/char_lm.py --workdir runs/char_lm
  maasjax generate --workdir runs/char_lm --prompt "The light " --max-new-tokens 200 --temperature 0.8

Default text: maasjax/data/texts/keepers_log.txt (44 KB, written for this repo); any UTF-8 file with
--config.dataset.path=FILE. The first 90% of the text is training, the next 5% validation and the last
5% test (`validation_fraction` / `test_fraction`): held-out text is contiguous, never seen in training.
The number to beat is the text's unigram entropy (a model with no context): see dataset_info.json.
"""
import ml_collections

from maasjax.defaults import base_config


def get_config():
  c = base_config()
  c.model = ml_collections.ConfigDict({
      'name': 'transformer_lm', 'num_layers': 3, 'num_heads': 4, 'emb_dim': 128, 'mlp_dim': 512,
      'dropout': 0.2, 'attention_dropout': 0.0, 'positions': 'rotary', 'max_len': 1024,
      # Generation runs past the 128 characters trained on: a 128-token window keeps every relative
      # distance one the model has seen (exact with rotary positions).
      'attention_window': 128, 'remat': False})
  c.dataset = ml_collections.ConfigDict({
      'name': 'char_text', 'path': '', 'seq_len': 128, 'validation_fraction': 0.05, 'test_fraction': 0.05})
  c.batch_size = 16
  c.cpu_async_dispatch = False  # steps of 10+ ms on CPU run faster inline (+12% per step; maasjax/defaults.py)
  c.eval_batch_size = 32
  c.num_train_steps = 1200
  c.optimizer.learning_rate = 2e-3
  c.optimizer.warmup_steps = 100
  c.optimizer.weight_decay = 0.1
  c.optimizer.grad_clip_norm = 1.0
  c.log_every_steps = 100
  c.eval_every_steps = 300
  c.checkpoint.every_steps = 600
  return c
