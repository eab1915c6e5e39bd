"""Typed errors shared by every SplitWire layer.

Everything a user can get wrong (a flag, a frame, a file, a shape) raises a subclass of
``SplitWireError``; the CLI turns any of them into a one-line message and exit code 2.
"""

from __future__ import annotations


class SplitWireError(Exception):
    """Base class of every error SplitWire raises on purpose."""


class ConfigError(SplitWireError, ValueError):
    """A flag, option or configuration value is invalid."""


class DataUnavailableError(SplitWireError):
    """A dataset is missing locally (and no download was asked for) or needs an extra."""


class FrameError(SplitWireError, ValueError):
    """A frame on the wire is malformed, truncated, oversized or otherwise invalid."""


class CodecError(FrameError):
    """A codec refused a payload (wrong length, failed authentication, ...)."""


class CaptureFileError(SplitWireError, ValueError):
    """A capture file is not a valid SplitWire capture."""


class ShapeError(SplitWireError, ValueError):
    """A tensor has the wrong shape, dtype or non-finite values."""
