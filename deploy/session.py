"""One WebSocket connection of a stream (:func:`run_stream`): its messages in, its analysis on a worker thread, its
events out, and the close code it ends with.

The ingress (``deploy/app.py``) accepts the connection, checks the start message and the stream limits, and hands
the stream over here; this module is everything after that: the input chain (:class:`deploy.protocol.StreamInput`
-> :class:`streaming.sources.PushSource`, bounded by :class:`deploy.protocol.AudioBudget`), a
:class:`streaming.pipeline.StreamAnalyzer` on a worker thread, a bounded outgoing queue with its sender task, and the
stream's record for a client that resumes (:class:`deploy.resume.StreamRecord`). Apart from the ingress because it
is the one long-running, concurrent part of the service (the ingress's routes are short).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import WebSocket

from deploy.protocol import AudioBudget, InputError, MeteredSource, StreamInput, loads_json
from deploy.remote_analyzer import RemoteAnalyzer
from deploy.resume import StreamRecord, rebase
from deploy.settings import AppArgs
from deploy.start import MAX_TEXT_CHARS, StartMessage
from streaming.events import ErrorEvent, Event, UtteranceEvent
from streaming.pipeline import StreamAnalyzer, StreamConfig
from streaming.sources import PushSource

__all__ = ["run_stream", "CLOSE_NORMAL", "CLOSE_POLICY", "CLOSE_INTERNAL", "CLOSE_TRY_AGAIN", "CLOSE_IDLE",
           "MAX_QUEUED_ITEMS"]

log = logging.getLogger("deploy")

# A safeguard only: the input queue is bounded in seconds of audio (max_buffered_audio_s); this caps the item count
# of a client that sends one sample per message.
MAX_QUEUED_ITEMS = 1 << 16

# WebSocket close codes (deploy/README.md, "Close codes").
CLOSE_NORMAL = 1000
CLOSE_POLICY = 1008  # bad or unauthorized start message, start timeout
CLOSE_INTERNAL = 1011  # the stream's analysis stopped (stream_failed)
CLOSE_TRY_AGAIN = 1013  # busy, stream_in_use, unavailable
CLOSE_IDLE = 4408  # no message for idle_timeout_s


async def run_stream(ws: WebSocket, start: StartMessage, record: StreamRecord, replay: list[str], *, args: AppArgs,
                     remote_analyzer: Callable[[Callable[[], int]], RemoteAnalyzer],
                     blocking: Callable[..., Awaitable[Any]], face_error: Callable[[], Awaitable[str | None]]) -> None:
    """One connection of a stream: receive its messages, analyze them on a worker thread, send the events.

    ``replay``: events (JSON) sent before the new ones, for a resumed stream. From the ingress: its ``args``,
    ``remote_analyzer(next_utterance_id)`` (the stream's per-utterance step), ``blocking(fn, *fn_args)`` (runs
    blocking work in its worker pool) and ``face_error()`` (why the face model is unavailable, or None).

    Events go through a bounded queue to a sender task; each is also kept in the stream's record before it is
    queued, so a client that leaves or stops reading can get it again by resuming. Nothing here blocks the
    event loop: pushing audio, ending the input and decoding JPEGs run in the worker pool."""
    loop = asyncio.get_running_loop()
    stream_id = record.stream_id
    id_base, t_base = record.next_utterance_id, record.audio_s
    budget = AudioBudget(args.max_buffered_audio_s)
    push = PushSource(start.sample_rate, start.channels, has_video=start.video, max_queue=MAX_QUEUED_ITEMS,
                      name=f"ws:{stream_id}")
    source = MeteredSource(push, budget)
    inbound = StreamInput(push, start.sample_format, args.input_limits(start.video), budget)
    analyzer: StreamAnalyzer | None = None
    remote = remote_analyzer(lambda: id_base + (analyzer.utterance_count if analyzer else 0))
    analyzer = StreamAnalyzer(remote, StreamConfig(stream_id=stream_id, stereo_speakers=start.channels == 2,
                                                   speakers=start.speakers, speculative=args.speculative))
    analyzer.conversation = record.conversation  # the model's context goes on across connections
    out: asyncio.Queue[str | None] = asyncio.Queue(maxsize=args.max_outgoing_events)
    failed = asyncio.Event()
    worker_done = loop.create_future()
    alive = True  # the client can still be sent events

    async def emit(ev: Event) -> None:  # on the loop, in the stream's order
        ev = rebase(ev, id_base, t_base)
        uid = ev.utterance_id if isinstance(ev, UtteranceEvent) else None
        text = ev.to_json()
        record.remember(uid, text, args.max_resume_events)
        if uid is not None:
            record.next_utterance_id = uid + 1
        if alive:
            await out.put(text)  # waits while the client is behind: back-pressure on the analysis

    def worker() -> None:  # segmentation + analysis of this stream, in order, off the event loop
        def post(ev: Event) -> None:
            asyncio.run_coroutine_threadsafe(emit(ev), loop).result()

        try:
            for ev in analyzer.run(source):
                if isinstance(ev, ErrorEvent) and ev.code == "analysis_failed":
                    ev = remote.public_error(ev)  # on this connection's clock: emit rebases it
                post(ev)
        except Exception:
            log.exception("stream %s: analysis stopped", stream_id)
            source.close()  # a message waiting for room in the buffer is refused now (stream_closed)
            post(ErrorEvent(stream_id, "stream_failed", "the stream's analysis stopped on an internal error (the "
                            "details are in the server log); reconnect with this stream_id to go on"))
            loop.call_soon_threadsafe(failed.set)
        finally:
            loop.call_soon_threadsafe(worker_done.set_result, None)

    async def sender() -> None:
        nonlocal alive
        while (text := await out.get()) is not None:
            if not alive:
                continue  # kept in the record for a resume
            try:
                await asyncio.wait_for(ws.send_text(text), args.send_timeout_s)
            except Exception as e:
                alive = False
                log.info("stream %s: client gone or not reading (%s); its events are kept for a resume",
                         stream_id, type(e).__name__)

    async def report(errors: list[InputError]) -> None:
        for e in errors:
            await emit(ErrorEvent(stream_id, e.code, e.message, e.field))

    send_task = asyncio.create_task(sender())
    for text in replay:
        await out.put(text)
    threading.Thread(target=worker, name=f"stream-{stream_id}", daemon=True).start()
    stopped = asyncio.ensure_future(failed.wait())
    close_code = CLOSE_NORMAL
    try:
        if start.video:
            face_error = await face_error()
            if face_error:
                await emit(ErrorEvent(stream_id, "video_unavailable", face_error, "video"))
        while True:
            receive = asyncio.ensure_future(ws.receive())
            await asyncio.wait({receive, stopped}, timeout=args.idle_timeout_s,
                               return_when=asyncio.FIRST_COMPLETED)
            if not receive.done():
                receive.cancel()
                if stopped.done():
                    close_code = CLOSE_INTERNAL
                else:
                    close_code = CLOSE_IDLE
                    await emit(ErrorEvent(stream_id, "idle_timeout", f"no message for {args.idle_timeout_s:g} s "
                                          "(idle_timeout_s): the stream was ended"))
                break
            msg = receive.result()
            if msg["type"] == "websocket.disconnect":
                alive = False
                break
            data, text = msg.get("bytes"), msg.get("text")
            if data is not None:  # audio or video: framing, limits and decoding in deploy/protocol/
                await report(await blocking(inbound.handle, data))
                continue
            try:
                d = loads_json(text) if text is not None and len(text) <= MAX_TEXT_CHARS else None
                kind = d.get("type") if isinstance(d, dict) else None
            except ValueError:
                kind = None
            if kind == "end":
                break
            await emit(ErrorEvent(stream_id, "invalid_message", "text messages after the start message must be "
                                  "{\"type\": \"end\"}; audio and video go in binary messages", "type"))
    finally:
        stopped.cancel()
        if failed.is_set():
            source.close()  # nobody reads the input any more: wake a push waiting for room
        else:  # analyze what was received, also for a client that left (its events are kept for a resume)
            await report(inbound.finish())
            await blocking(push.end)
        await worker_done  # bounded: the buffered audio and the replica timeouts bound the analysis left
        if failed.is_set():  # also when it stopped after the client's end: 1011, not 1000
            close_code = CLOSE_INTERNAL
        await out.put(None)
        await send_task
        record.audio_s = t_base + inbound.audio_s
    if alive:
        try:
            await ws.close(code=close_code)
        except Exception:
            pass
