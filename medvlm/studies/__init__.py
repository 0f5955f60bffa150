"""Studies: data-fraction ablations, hyperparameter-stability studies and declarative spec sweeps.

A study is an Optuna study (resumable, shared by many workers through one RDB storage) and an
MLflow parent run with one nested child run per trial. See `runner.run_study`.
"""
