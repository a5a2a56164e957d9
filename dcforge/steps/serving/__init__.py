"""What the `inference` and `inference_failover` checks share, one module per concern: `settings` (the check
settings and the model choice), `credentials` (the API key and TLS material in a private directory), `server` (the
local server under gunicorn and its replica processes), `load` (the Locust run and its request log), `scraping`
(figures read from the server's Prometheus endpoint), `summary` (load figures as check metrics), `plots`."""
