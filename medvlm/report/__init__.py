"""Reports: the papers' tables and "medical minus general" gaps from tracked runs, with bootstrap
intervals, paired tests and a recommendation; logged as a report run and printed.

`medvlm.report.run.run_report(cfg)` is the `report` command. This package file imports nothing, so
`medvlm report --help` reads `medvlm.report.config` without loading pandas, MLflow or torch.
"""
