"""The parts of the bundled OpenAI-compatible server: settings, batching engine, wire protocol, ASGI app, worker.

`workloads/serve.py` is the entry point; it runs the app under gunicorn with one uvicorn worker per replica.
"""
