"""The workstation server: ``edgevqa serve`` answers over HTTP from one shared pipeline.

``app.py`` builds the FastAPI app from a pipeline and a :class:`~edgevqa.serve.app.ServeSettings`;
``upload.py`` parses what a request carries; ``chat.py`` is the OpenAI-compatible
``/v1/chat/completions``; ``work.py`` is what runs in the worker threads; ``engine.py`` bounds and
serialises the work on the pipeline; ``middleware.py`` checks the host, the origin, the token and
the body (size and deadline), adds the headers every response carries and counts and logs what
``/metrics`` reports; ``metrics.py`` holds the prometheus_client metrics; ``server.py`` runs
uvicorn; ``page.html`` is the clinician's page at ``/``. Needs the ``serve`` extra (fastapi,
uvicorn, python-multipart, prometheus_client); never imports torch.
"""
