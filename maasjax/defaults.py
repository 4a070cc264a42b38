"""Defaults shared by every experiment config (`from maasjax.defaults import base_config`)."""
import ml_collections


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.dtype = 'float32'  # compute dtype; params and optimizer state stay float32
  c.batch_size = 128
  c.eval_batch_size = 256
  c.num_train_steps = 1000
  c.log_every_steps = 50
  c.eval_every_steps = 250
  c.progress_bar = True
  # Training batches built (and sent to the devices) this many steps ahead on a thread; 0: inline; -1: 2 on a
  # GPU/TPU, inline on CPU (there the thread competes with XLA's for the cores: digits_cnn's loop ran at 76%
  # of its bare step with it, 87-90% without; benchmarks/loop_vs_step.py).
  c.prefetch_batches = -1
  # On CPU: run each single-device step on XLA's runtime thread (True, JAX's default) or inline in the calling
  # thread (False). Inline wins for steps of ~10 ms and more: mnist_cnn +5-18%, char_lm +12%, cifar10_resnet
  # +9% (a big step's scratch buffer then comes from the main heap, which the CLI's allocator keeps, instead of
  # being mapped and faulted in every step). It loses for tiny steps: digits_cnn's step -15%, its loop -35%
  # (dispatch no longer overlaps the step). Set before JAX starts its CPU backend (maasjax.parallel).
  c.cpu_async_dispatch = True
  # Parallelism (docs/tpu.md, docs/gpu.md): mesh axes 'data', 'fsdp', 'model' (-1 = the rest);
  # sharding.preset replicate | fsdp | tensor | fsdp_tensor; sharding.rules (regex, axes) win over it.
  c.mesh = ml_collections.ConfigDict({'data': -1, 'fsdp': 1, 'model': 1})
  c.sharding = ml_collections.ConfigDict({'preset': 'replicate', 'rules': (), 'fsdp_min_size': 0})
  # Multi-host: 'auto' joins jax.distributed on a Cloud TPU VM / Slurm / Open MPI, or when a coordinator is given.
  c.distributed = ml_collections.ConfigDict({
      'initialize': 'auto', 'coordinator_address': '', 'num_processes': 0, 'process_id': -1, 'timeout_s': 300})
  c.checkpoint = ml_collections.ConfigDict({'every_steps': 250, 'keep': 3, 'async_save': True})
  # Transfer learning (maasjax.train.transfer): a new run's parameters from a trained workdir's checkpoint
  # (step -1: its latest); `skip` and `freeze` are regexes over paths like 'params/Dense_1/kernel'.
  c.init_from = ml_collections.ConfigDict({'workdir': '', 'step': -1, 'skip': (), 'freeze': ()})
  # DP-SGD (maasjax.privacy): per-example clipping + Gaussian noise, epsilon from dp-accounting.
  # delta 0: 1 / (10 N); target_epsilon > 0 calibrates noise_multiplier for num_train_steps.
  c.privacy = ml_collections.ConfigDict({
      'enabled': False, 'l2_norm_clip': 1.0, 'noise_multiplier': 1.1, 'target_epsilon': 0.0, 'delta': 0.0,
      'sampling': 'poisson', 'accountant': 'rdp'})
  # Compression (maasjax.compress; `maasjax compress --method M` sets `method` in the new workdir). During
  # `maasjax train`, method prune (masks in the optimizer state), quantize with mode qat (fake-quantized int8)
  # and distill (a teacher workdir's softened logits) act on the run itself; -1 means the method's default.
  c.compress = ml_collections.ConfigDict({
      'method': '',  # '' (none), prune, channels, quantize, distill, cut, fold
      'fine_tune_steps': -1,  # steps after the transform (-1: prune/channels/cut 300, qat 200, distill the
      'learning_rate': 5e-4,  # teacher's num_train_steps, ptq/fold 0); the fine-tune's peak learning rate
      # prune: magnitude pruning of kernels (ndim > 1). overrides: ((layer path regex, share), ...), the first
      # match wins over sparsity (prune) or fraction (channels); 0 keeps a layer whole
      'sparsity': 0.8, 'pattern': 'unstructured', 'distribution': 'erk', 'schedule': 'gradual',
      'start_step': 0, 'end_step': -1, 'update_every': 10, 'overrides': (),
      'fraction': 0.5,  # channels: share of conv channels / dense units removed from each hidden layer
      'mode': 'ptq', 'calibration_batches': 8,  # quantize: ptq or qat (w8a8 int8); training batches calibrated on
      # distill: teacher workdir (maasjax compress: the --workdir), student model settings ('features=(8, 16),
      # dense=32'), softmax temperature T (soft loss scaled by T^2), the soft loss's weight alpha, and mixup:
      # Beta(m, m) mixing of each training input with another that teacher and student both see (0: off)
      'teacher': '', 'student': '', 'temperature': 4.0, 'alpha': 0.9, 'mixup': 0.0,
      'layers': (),  # cut: indices of the CNN/ResNet stages, MLP hidden layers or Transformer blocks to remove
  })
  c.optimizer = ml_collections.ConfigDict({
      'name': 'adamw', 'learning_rate': 1e-3, 'schedule': 'cosine', 'warmup_steps': 50,
      'end_learning_rate_factor': 0.0, 'momentum': 0.9, 'b1': 0.9, 'b2': 0.999, 'eps': 1e-8,
      'weight_decay': 1e-4, 'grad_clip_norm': 0.0, 'grad_accum_steps': 1})
  return c
