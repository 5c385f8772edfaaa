"""Serving benchmarks: servers the suite starts (or a user's endpoint), an asynchronous
streaming client that loads them, and the ``served`` kind of case the ``serve`` scenario drives."""
