"""The WebUI integration. Only `script.py`, `settings.py` and `api.py` touch WebUI modules; `args.py`, `job.py` and
`runtime.py` are plain Python over duck-typed objects so that tests can drive them without a WebUI."""
