"""Scaling ladders analysed: point fits (fits.py), their bootstrap intervals, comparisons and held-out check
(intervals.py), a ladder's runs read back as records (records.py), the learning-rate rule's check (lr_rule.py),
what the ladder says (analysis.py), and its report and pictures (report.py, plots.py). Pure numpy/scipy on finished
runs' JSON: nothing here trains or imports train/, model/ or data/ (a contract in pyproject.toml holds it);
experiments/ladder.py runs the ladder."""
