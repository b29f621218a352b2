"""The study of the MobileNet claims: ``mobilenets study`` and :func:`run_study`.

Modules: ``cells`` (the grid and the one adapter to training), ``runner`` (parallel cells),
``measure`` (profile, bench, dead channels), ``estimate`` (``--plan --estimate``), ``collapse``
(V2 Fig. 1), ``blocks`` (inverted residual vs ResNet bottleneck), ``structure`` (layer counts,
shortcuts, expansion ratios, the planner's whole-network memory), ``claims`` (figures and
verdicts), ``report`` (study.json, study.csv, plots, report.html), ``run`` (the command).
"""

from .run import run_study

__all__ = ["run_study"]
