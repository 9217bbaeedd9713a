"""seer-serve: engine directories behind the OpenAI-style images API on Ray Serve (serve/app.py), the
request and response format without Ray (serve/api.py), and the command (serve/cli.py)."""
