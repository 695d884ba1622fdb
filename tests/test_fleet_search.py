"""Fleet.ask_all ranks the stream that saw the event first (real RapidOCR + MiniLM on synthetic scenes)."""
from __future__ import annotations

from conftest import tiny_adapter
from vstream.api import Agent
from vstream.config import from_name
from vstream.fleet.core import Fleet
from vstream.sources import SyntheticSource

SCENES = {"cam-dock": "BLUE BOAT AT THE DOCK", "cam-street": "RED CAR PARKED", "cam-park": "GREEN TREE IN A PARK"}


def _source(i: int, text: str) -> SyntheticSource:
    return SyntheticSource(seed=i, duration_s=6, fps=2, size=(320, 180), caption="", clock=False, n_shapes=0,
                           events=[{"kind": "text", "text": text, "start_s": 1.0, "end_s": 3.0, "scale": 1.6,
                                    "pos": (0.05, 0.3)}])


def test_ask_all_ranks_the_stream_with_the_event_first():
    cfg = from_name("tiny").replace(**{"memory.ocr": True, "memory.retriever": "text", "memory.window_chunks": 2})
    with Fleet(Agent(tiny_adapter("tiny-smolvlm"), cfg)) as fleet:
        for i, (sid, text) in enumerate(SCENES.items()):
            fleet.add(sid, _source(i, text))
        for sid in SCENES:
            assert fleet.stream(sid).wait_chunks(6, timeout=120)
        for sid in SCENES:  # the event (1-3 s) left the 2-chunk window: it is found in long-term memory
            assert len(fleet.stream(sid).long_term) >= 3
        for sid, question in (("cam-street", "Which camera saw a red car?"),
                              ("cam-dock", "where was the boat"), ("cam-park", "a tree in the park")):
            hits = fleet.ask_all(question, top=3)
            assert [h.stream for h in hits][0] == sid, [(h.stream, h.score) for h in hits]
            assert len(hits) == 3 and hits[0].score > hits[1].score >= hits[2].score
            best = hits[0].evidence[0]
            assert best.tier == "long_term" and 1.0 <= best.start_s < 3.0  # the chunk showing the event
