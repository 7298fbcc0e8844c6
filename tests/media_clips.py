"""Test helpers that build data-set fixtures from real media: cutting clips with PyAV, speech with espeak-ng."""

from __future__ import annotations

import subprocess
from fractions import Fraction
from pathlib import Path

import av

# Container -> (video codec, audio codec): MELD.Raw ships H.264/AAC mp4, IEMOCAP DivX (MPEG-4 part 2) avi.
CODECS = {".mp4": ("libx264", "aac"), ".avi": ("mpeg4", "pcm_s16le")}


def cut_clip(source: Path, target: Path, start_s: float, end_s: float, width: int = 320) -> Path:
    """Re-encode [start_s, end_s) of a real video (picture and sound) into `target`, scaled to `width` pixels wide."""
    video_codec, audio_codec = CODECS[target.suffix]
    with av.open(str(source)) as src, av.open(str(target), "w") as dst:
        vin, ain = src.streams.video[0], src.streams.audio[0]
        fps = Fraction(vin.average_rate).limit_denominator(1000)
        height = round(vin.codec_context.height * width / vin.codec_context.width / 2) * 2
        vout = dst.add_stream(video_codec, rate=fps)
        vout.width, vout.height, vout.pix_fmt = width, height, "yuv420p"
        rate = ain.codec_context.sample_rate
        aout = dst.add_stream(audio_codec, rate=rate, layout="mono")
        resampler = av.AudioResampler(format=aout.codec_context.format.name, layout="mono", rate=rate)
        fifo = av.AudioFifo()
        frame_size = aout.codec_context.frame_size or 1024
        index = 0
        for frame in src.decode(vin, ain):
            t = float(frame.time)
            if not start_s <= t < end_s:
                continue
            if isinstance(frame, av.VideoFrame):
                out = frame.reformat(width=width, height=height, format="yuv420p")
                out.pts, out.time_base = index, 1 / fps
                index += 1
                dst.mux(vout.encode(out))
            else:
                frame.pts = None
                for chunk in resampler.resample(frame):
                    fifo.write(chunk)
                while (chunk := fifo.read(frame_size)) is not None:
                    dst.mux(aout.encode(chunk))
        dst.mux(vout.encode(None))
        dst.mux(aout.encode(None))
    return target


def speak(text: str, target: Path, voice: str = "en") -> Path:
    """Real synthetic speech for `text` (espeak-ng `voice`, e.g. "cmn" for Mandarin), as 16 kHz mono 16-bit wav."""
    raw = target.with_suffix(".espeak.wav")
    subprocess.run(["espeak-ng", "-v", voice, "-w", str(raw), text], check=True, capture_output=True)
    with av.open(str(raw)) as src, av.open(str(target), "w") as dst:
        out = dst.add_stream("pcm_s16le", rate=16000, layout="mono")
        resampler = av.AudioResampler(format="s16", layout="mono", rate=16000)
        for frame in src.decode(audio=0):
            for chunk in resampler.resample(frame):
                dst.mux(out.encode(chunk))
        for chunk in resampler.resample(None):
            dst.mux(out.encode(chunk))
        dst.mux(out.encode(None))
    raw.unlink()
    return target
