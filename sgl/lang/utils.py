"""Small helpers the SGLang docs use: ``print_highlight`` and ``load_image``."""

from __future__ import annotations

import base64
import os
import sys
from typing import Optional, Tuple


def print_highlight(content, file=None) -> None:
    """Print ``content`` in bold green (ANSI) when writing to a terminal, plainly otherwise."""
    out = file or sys.stdout
    text = str(content)
    if getattr(out, "isatty", lambda: False)():
        text = f"\033[1m\033[32m{text}\033[0m"
    print(text, file=out, flush=True)


def _image_size(data: bytes) -> Optional[Tuple[int, int]]:
    """(width, height) from PNG / GIF / JPEG headers; None for other formats."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        return int.from_bytes(data[6:8], "little"), int.from_bytes(data[8:10], "little")
    if data[:2] == b"\xff\xd8":
        i = 2
        while i + 9 < len(data):
            if data[i] != 0xFF:
                return None
            marker, seg_len = data[i + 1], int.from_bytes(data[i + 2:i + 4], "big")
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                return int.from_bytes(data[i + 7:i + 9], "big"), int.from_bytes(data[i + 5:i + 7], "big")
            i += 2 + seg_len
    return None


def load_image(image_file) -> Tuple[bytes, Optional[Tuple[int, int]]]:
    """Load an image as encoded bytes plus its ``(width, height)`` when known.

    Args:
        image_file: raw bytes, a PIL image, a file path, an ``http(s)://`` URL,
            a ``data:...;base64,`` URL or a bare base64 string.

    Returns:
        ``(data, size)``: the encoded image bytes (PNG for PIL input) and the
        size parsed from the header (None for unknown formats).

    Raises:
        ValueError: the input is none of the above.
    """
    if isinstance(image_file, (bytes, bytearray)):
        data = bytes(image_file)
    elif hasattr(image_file, "save"):  # PIL.Image.Image
        import io

        buf = io.BytesIO()
        image_file.save(buf, format="PNG")
        data = buf.getvalue()
    elif isinstance(image_file, str) and image_file.startswith(("http://", "https://")):
        import requests

        resp = requests.get(image_file, timeout=30)
        resp.raise_for_status()
        data = resp.content
    elif isinstance(image_file, str) and image_file.startswith("data:"):
        data = base64.b64decode(image_file.split(",", 1)[1])
    elif isinstance(image_file, str) and os.path.exists(image_file):
        with open(image_file, "rb") as f:
            data = f.read()
    elif isinstance(image_file, str):
        try:
            data = base64.b64decode(image_file, validate=True)
        except Exception as e:
            raise ValueError(f"load_image: {image_file[:60]!r} is not a file, URL or base64 image") from e
    else:
        raise ValueError(f"load_image: unsupported input type {type(image_file).__name__}")
    return data, _image_size(data)
