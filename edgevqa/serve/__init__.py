"""The workstation server: ``edgevqa serve`` answers over HTTP from one shared pipeline.

``app.py`` builds the FastAPI app from a pipeline and a :class:`~edgevqa.serve.app.ServeSettings`;
``upload.py`` parses what a request carries; ``engine.py`` bounds and serialises the work on the
pipeline; ``middleware.py`` checks the host, the token and the body size and counts what
``/metrics`` reports; ``page.html`` is the clinician's page at ``/``. Needs the ``serve`` extra
(fastapi, uvicorn, python-multipart); never imports torch.
"""
