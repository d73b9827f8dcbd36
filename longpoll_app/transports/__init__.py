"""How wake-ups from other processes reach a hub: one module per transport,
behind ``base.Transport``.

* ``layer``: a shared channel layer (Redis): a group per followed session.
* ``watcher``: no shared layer: one indexed look at the queue per interval.
"""
