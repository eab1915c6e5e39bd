"""Bytes on the wire: the frame, codecs, link crypto, captures.

Importing the package registers every built-in codec, so ``codec_names()`` lists them all.
"""

from protocol import codecs, encrypted  # noqa: F401  (registration side effects)
