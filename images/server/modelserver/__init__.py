"""modelserver: the bundled OpenAI- and TGI-compatible inference server of modeldeploy."""

__version__ = "0.1.0"
