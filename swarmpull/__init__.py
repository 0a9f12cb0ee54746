"""swarmpull: peer-to-peer container image distribution.

This package is the small shared core: wire types, piece geometry, digests, the piece
store, the piece transport, configuration parsing and the command line. The roles
(``supernode``, ``peer``, ``registry_proxy``, ``loadtest``) import it; it imports none of
them except lazily from the command line, which is the composition root.
"""

__version__ = "0.1.0"
