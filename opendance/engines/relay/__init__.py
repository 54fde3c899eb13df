"""The ``relay`` engine: hand the job to an upstream video API and bring its video home.

A relay model lists one or more upstream **channels** (``options.ChannelOptions``: protocol,
base_url, upstream_model, api_key_env, priority, weight). One small class per protocol says
how to create, poll, find the video and cancel (``legacy``, ``openai``, ``ark``); the
``ChannelBoard`` picks the channel for a create and keeps each one's health (a circuit
breaker); ``RelayJob`` does one task: create with failover, checkpoint the upstream id and
channel, poll, download; ``fit`` turns the upstream's MP4 into the task's exact output.

Servers run relays on the upstream executor (asyncio tasks sharing one HTTP client, hundreds at
once, no worker process); ``RelayEngine`` runs the same job as an ordinary engine. The API key
is read from the environment variable ``api_key_env`` and sent only to the channel's own host,
never to the host of a download link.
"""

from .engine import RelayEngine, channel_keys
from .job import PROTOCOLS, RelayContext, RelayJob

__all__ = ["PROTOCOLS", "RelayContext", "RelayEngine", "RelayJob", "channel_keys"]
