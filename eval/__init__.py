"""Benchmark harness: loaders, streaming protocols, judges, scoring, reports.

One streaming pass per video: every benchmark turns its items into time-stamped queries and asks
them while the video is ingested once (``eval.protocol.stream_queries``).
"""
