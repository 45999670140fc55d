"""Raw video frames as a capture process writes them: sizes, buffers and conversion to BGR.

A frame is read straight into a buffer from a small pool. BGR and gray frames are then handed on
as views of that buffer (no copy); the other formats are converted into a new array, so their
one raw buffer can be reused at once.
"""

from __future__ import annotations

import sys

import cv2
import numpy as np

# pixel format -> OpenCV conversion to BGR (None: already BGR or gray, used as it is)
_TO_BGR: dict[str, int | None] = {
    "bgr24": None,
    "gray": None,
    "rgb24": cv2.COLOR_RGB2BGR,
    "yuv420": cv2.COLOR_YUV2BGR_I420,
    "yuv420p": cv2.COLOR_YUV2BGR_I420,
    "i420": cv2.COLOR_YUV2BGR_I420,
    "nv12": cv2.COLOR_YUV2BGR_NV12,
}
PIXEL_FORMATS = frozenset(_TO_BGR)


def frame_bytes(pixel_format: str, width: int, height: int) -> int:
    """Bytes one frame takes on the pipe."""
    if pixel_format in ("bgr24", "rgb24"):
        return width * height * 3
    if pixel_format == "gray":
        return width * height
    return width * height * 3 // 2  # 4:2:0, a full Y plane and quarter-size U and V


def to_image(raw: np.ndarray, pixel_format: str, width: int, height: int) -> np.ndarray:
    """One frame's bytes as an image the preprocessing takes: H×W×3 BGR, or H×W gray."""
    if pixel_format == "bgr24":
        return raw.reshape(height, width, 3)
    if pixel_format == "gray":
        return raw.reshape(height, width)
    if pixel_format == "rgb24":
        return cv2.cvtColor(raw.reshape(height, width, 3), cv2.COLOR_RGB2BGR)
    code = _TO_BGR[pixel_format]
    assert code is not None
    # OpenCV reads 4:2:0 frames as one (H·3/2)×W plane: Y rows, then the chroma rows.
    return cv2.cvtColor(raw.reshape(height * 3 // 2, width), code)


def shares_buffer(pixel_format: str) -> bool:
    """Whether the image of a frame is a view of the buffer it was read into."""
    return _TO_BGR[pixel_format] is None


class BufferPool:
    """Frame buffers, reused once nothing refers to them any more.

    A frame handed on as a view keeps its buffer alive for as long as inference (or anything
    else) holds it; a buffer is only read into again when its reference count shows that no view
    of it is left. With a latest-frame slot that means about three buffers: one being read, one
    waiting, one being inferred.
    """

    def __init__(self, size: int, limit: int = 8):
        self._size = size
        self._limit = limit
        self._buffers: list[np.ndarray] = []

    def take(self) -> np.ndarray:
        for buffer in self._buffers:
            # References: the list, the loop variable and getrefcount's own argument.
            if sys.getrefcount(buffer) <= 3:
                return buffer
        buffer = np.empty(self._size, np.uint8)
        if len(self._buffers) < self._limit:
            self._buffers.append(buffer)  # beyond the limit a buffer is simply not kept
        return buffer
