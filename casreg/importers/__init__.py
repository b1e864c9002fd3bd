"""Importers: integrations that bring models from other registries into casreg through
the public :class:`casreg.Registry` API (an interface layer, docs/ARCHITECTURE.md).

- :mod:`casreg.importers.mlflow`: an MLflow model registry (``casreg import mlflow``,
  docs/migrate-mlflow.md); needs the ``mlflow`` extra.
"""
