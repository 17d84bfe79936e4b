"""Security and governance (issue 13): certificates, identities, permissions, keys, audit.

One concept per module, each a pure core the coordinator, the worker and the CLI share.
"""
