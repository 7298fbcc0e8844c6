"""The streaming latency benchmark's parts; the command is ``benchmarks/bench_streaming_latency.py``.

Where things are:

- ``inputs``: the real-speech conversation (RAVDESS clips + espeak-ng sentences, trimmed, ordered so that the last
  utterances repeat the first ones' audio, joined by silence over a noise floor);
- ``stream``: feeding the :class:`~streaming.sources.PushSource` at real-time pace and collecting the events, and
  :class:`~latency.stream.RecordingAnalyzer`, which records each analysis;
- ``measure``: per-utterance rows, latency / real-time factor / stage / length statistics, the targets;
- ``context_cost``: the cost of context (first vs last utterance, the slope, the offline check);
- ``run``: one run (inputs, the analyzer the CLI builds, warm-up, the machine's load, the stream, the numbers);
- ``variants``: the side-by-side comparisons (speculation, checkpoints, folded answers, recognizer threads, the
  LLM's number format), streamed A / B / B / A;
- ``report``: the JSON and Markdown report.

The machine helpers (CPU model, other processes' load, waiting for idle) and the latency statistics are shared with
the other benchmarks: ``benchmarks/bench_support.py``.

What runs: the shipped checkpoint (``egmf_core/checkpoints/default.safetensors``) on CPU behind the same
:class:`streaming.pipeline.StreamAnalyzer` + :class:`streaming.analyzer.EGMFUtteranceAnalyzer` that ``python -m
streaming`` and the service use (webrtcvad segmenter, faster-whisper tiny.en with its one encoder pass, the EGMF
fusion stack and the LoRA LLM), with the CLI's default settings. The audio is real speech: RAVDESS clips from
``../shared/data/ravdess`` (one sentence each, ~1.5-2.5 s) and espeak-ng sentences of 2-7.5 s, each trimmed to its
speech +-0.15 s and separated by 1 s of silence with a -70 dBFS noise floor, pushed into a
:class:`~streaming.sources.PushSource` in 30 ms blocks (the microphone's block size) at real-time pace by a feeder
thread, while the main thread iterates the stream as the CLI does.

Measured per utterance:

* **latency**: wall time the utterance event came out of the stream minus wall time the block holding the
  utterance's reference end of speech (energy-based, independent of the VAD) was pushed. It includes the VAD's
  end-of-speech hangover (300 ms), recognition, the model, and any time the utterance waited behind the previous
  one. The events' own ``latency_ms`` (from the dequeuing of the VAD's end) is recorded too.
* **real-time factor**: analysis wall time (recognizer + model) / the utterance's speech duration (VAD span);
  ``overall`` = sum of analysis times / sum of durations. The VAD's cost is measured over the whole stream.
* **stages** (from ``AnalysisResult.timings_ms``): ``asr_encoder`` (log-mel + the Whisper encoder, which runs
  over its whole padded window, 10 s live by default, whatever the utterance's length), ``asr_decode``, ``predict``
  (the whole EGMF predictor call) and its parts ``fusion``, ``llm_prefill`` (prompt assembly + the LLM pass over the
  prompt ids the model's KV cache does not hold: after the template prefix, and with a "context_first" checkpoint
  after the question and the conversation so far; ``prompt_pass_tokens`` counts them; the pass also carries the answer
  trees of the likeliest labels by the auxiliary head and the prior, ``EGMFModel.folded_answers``) and
  ``llm_answer`` (the walk through the answer tree, plus a pass over it on the KV cache when the prompt pass did not
  carry it: ``answer_pass`` counts the utterances that needed one).
* **cost of context**: the 50 utterances are ONE conversation (one stream). Utterances 1-5 and 46-50 are the same
  five recordings (46-50 = 2, 3, 4, 5, 1), so utterance 1 and 50 are the same audio with an empty vs a full context
  window; with every context turn tokenized once and the window bounded (3 turns), model time must stay flat. An
  offline check then scores utterance 50's inputs with an empty and with its real context, interleaved, to isolate
  the model's cost of the context from the noise of the live run.

The machine: CPU model, ``os.getloadavg()`` before and after, and the CPU time other processes used during the
run (from /proc/stat): on a shared 2-core machine another busy process slows every stage, so read the numbers with
it. The targets (p95 latency <= 1.0 s for utterances up to 8 s, overall real-time factor <= 0.25) are reported as
met or not met.

The LLM's number format: each run records the format its projections ran in (``llm_precision``: ``fp32`` or
``bf16``; ``llm_precision_requested``: what was asked, ``auto`` by default, as the CLI). ``--llm-precision fp32 auto``
streams the conversation with one model loaded per format, A / B / B / A, to measure the bf16 path against fp32.
"""
