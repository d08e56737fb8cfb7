"""Errors of the wire layer. Whatever a peer sends, the wire layer raises only these."""

from __future__ import annotations


class CodecError(Exception):
    """Bytes that are not a well-formed message, or a message that cannot be encoded."""


class FrameTooLarge(CodecError):
    """A frame whose declared length exceeds the configured limit (``max_frame_bytes``)."""
