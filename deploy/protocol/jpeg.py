"""JPEG frames of a video stream: the client's encoder and the service's decoder.

The decoder reads the declared image size from the start-of-frame marker before decoding (:func:`jpeg_size`), so
that a small file declaring a huge image is refused without allocating it, and refuses damaged files instead of
decoding FFmpeg's concealment of them. Both use PyAV's MJPEG codec.
"""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np

from deploy.protocol.framing import JPEG_SOI, FrameError

__all__ = ["encode_jpeg", "jpeg_size", "decode_jpeg"]

# Start-of-frame markers (baseline, progressive, lossless, arithmetic ...): they hold the image size.
_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


def encode_jpeg(rgb: np.ndarray, qscale: int = 5) -> bytes:
    """RGB uint8 (H, W, 3) -> JPEG bytes with PyAV's MJPEG encoder (``qscale`` 2 best .. 31 smallest; 5 keeps the
    facial detail the face landmarker needs at about 15-30 KB for a 640 x 640 frame)."""
    h, w = rgb.shape[:2]
    ctx = av.CodecContext.create("mjpeg", "w")
    ctx.width, ctx.height, ctx.pix_fmt = w - w % 2, h - h % 2, "yuvj420p"  # 4:2:0 needs even sizes
    ctx.time_base = Fraction(1, 1)
    ctx.options = {"qmin": str(qscale), "qmax": str(qscale)}
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb[: ctx.height, : ctx.width]), format="rgb24")
    packets = ctx.encode(frame.reformat(format="yuvj420p")) + ctx.encode(None)
    return b"".join(bytes(p) for p in packets)


def jpeg_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the JPEG's start-of-frame marker, read before decoding so that a small file declaring a
    huge image (a decompression bomb) is refused without allocating it."""
    if not data.startswith(JPEG_SOI):
        got = data[:3].hex(" ") or "nothing"
        raise FrameError("invalid_video", "video.jpeg",
                         f"payload is not a JPEG image: it must start with FF D8 FF, got {got}")
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            break
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if marker in _SOF_MARKERS and i + 9 <= len(data):
            height = int.from_bytes(data[i + 5:i + 7], "big")
            width = int.from_bytes(data[i + 7:i + 9], "big")
            return width, height
        i += 2 + length
    raise FrameError("invalid_video", "video.jpeg", "JPEG has no readable start-of-frame marker (truncated or corrupt)")


def decode_jpeg(data: bytes, max_pixels: int, max_width: int | None = None) -> np.ndarray:
    """JPEG bytes -> RGB uint8 (H, W, 3), C-contiguous, downscaled to ``max_width`` (keeping the aspect ratio).

    FFmpeg's MJPEG decoder conceals damage by default (a truncated file decodes to a half-grey picture); with
    ``err_detect=explode`` a truncated or corrupt JPEG is an error instead of a fake frame."""
    width, height = jpeg_size(data)
    if width * height > max_pixels or not width or not height:
        raise FrameError("invalid_video", "video.jpeg",
                         f"JPEG of {width} x {height} pixels: expected 1 to {max_pixels} pixels (max_video_pixels)")
    ctx = av.CodecContext.create("mjpeg", "r")
    ctx.options = {"err_detect": "explode", "max_pixels": str(max_pixels)}
    try:
        frames = ctx.decode(av.Packet(data)) + ctx.decode(None)
    except av.error.FFmpegError as e:
        raise FrameError("invalid_video", "video.jpeg", f"JPEG cannot be decoded (truncated or corrupt): {e}") from None
    if len(frames) != 1:
        raise FrameError("invalid_video", "video.jpeg", f"JPEG decoded to {len(frames)} pictures, expected 1")
    frame = frames[0]
    w, h = frame.width, frame.height
    if max_width and w > max_width:
        h, w = max(2, round(h * max_width / w / 2) * 2), max_width
    # mediapipe reads densely packed rows; PyAV pads the rows of odd widths.
    return np.ascontiguousarray(frame.to_ndarray(format="rgb24", width=w, height=h))
