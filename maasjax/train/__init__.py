"""Training: state, pure steps, tasks, checkpointing and the loop."""
