"""Studies over several runs: ``compare`` and ``sweep`` drivers (``compare.py``) and their report
(``report.py``)."""
