"""Bundled workloads: GPT model, torchrun training, all-reduce sweep, OpenAI-compatible server."""
