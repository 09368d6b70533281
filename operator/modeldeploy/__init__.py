"""modeldeploy: a kopf operator that turns a ModelDeployment into a served LLM."""

__version__ = "0.1.0"
