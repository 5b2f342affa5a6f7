"""ACE Bridge protocol v1: messages, image payloads, codec, errors, geometry, discovery and a blocking client.

Imports only the standard library, msgpack and websockets, so it runs inside Krita's and GIMP's Python.
"""

PROTOCOL_VERSION = 1
__version__ = "0.1.0"
