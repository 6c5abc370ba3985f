"""Supervised models shared by both planes: training sets and XGBoost models (``training``),
the MLflow registry and the ``champion`` alias (``registry``), the promotion gate (``gate``).

Import direction: ``models`` uses ``physics`` and ``lake``; ``bytewax_flows`` and
``dagster_project`` use ``models``, never each other.
"""
