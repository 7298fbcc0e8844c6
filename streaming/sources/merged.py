"""Audio from one source and video from another (:class:`MergedSource`), e.g. a microphone and a webcam."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator

from .base import Source, SourceError, SourceItem, VideoFrame

log = logging.getLogger(__name__)


class MergedSource(Source):
    """Audio from ``audio`` and video frames from ``video`` (e.g. a microphone and a v4l2 webcam).

    The video source is read on a helper thread and its frames are interleaved with the audio chunks as they come.
    Both clocks start when the sources start, so their origins agree to within the devices' start-up skew (tens of
    ms), which is well inside the margin used to pick the frames of an utterance.
    """

    def __init__(self, audio: Source, video: Source):
        self.audio, self.video = audio, video
        self.channels = audio.channels
        self.has_video = True
        self.name = f"{audio.name} + {video.name}"
        self._frames: queue.Queue[VideoFrame | None] = queue.Queue(maxsize=256)
        self._thread: threading.Thread | None = None
        self._video_error: SourceError | None = None

    def open(self) -> None:
        self.audio.open()
        try:
            self.video.open()
        except SourceError:
            self.audio.close()
            raise

    def _pump_video(self) -> None:
        try:
            for item in self.video:
                if isinstance(item, VideoFrame):
                    try:
                        self._frames.put(item, timeout=1.0)
                    except queue.Full:
                        log.debug("merged source: dropping a video frame, consumer busy")
        except SourceError as e:
            self._video_error = e
            log.warning("video input stopped: %s", e)
        finally:
            self._frames.put(None)

    def close(self) -> None:
        self.audio.close()
        self.video.close()

    def __iter__(self) -> Iterator[SourceItem]:
        self.open()
        self._thread = threading.Thread(target=self._pump_video, name="video-source", daemon=True)
        self._thread.start()
        video_alive = True
        for item in self.audio:
            while video_alive:
                try:
                    f = self._frames.get_nowait()
                except queue.Empty:
                    break
                if f is None:
                    video_alive = False
                else:
                    yield f
            yield item
        self.video.close()
