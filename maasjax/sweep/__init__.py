"""Ablation sweeps: a sweep file names trials as config overrides; each trial is its own `maasjax train`
process in DIR/<trial name>/; results gather into tables and plots."""
