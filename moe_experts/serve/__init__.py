"""``moe-experts serve``: an OpenAI-compatible HTTP server over the ``MoE`` object.

``engine`` loads the router and every expert once and answers one request at a time; ``app`` is the
FastAPI application (endpoints, streaming); ``schemas`` validates request bodies; ``errors`` gives every
refusal OpenAI's error shape; ``server`` binds the socket and runs uvicorn. FastAPI and uvicorn are
imported only when serving.
"""
