"""Not decoding what the sampler drops: the non-reference pictures a sampling plan does not keep.

A picture that no other picture refers to (H.264: every slice has ``nal_ref_idc == 0``; HEVC with one
temporal sub-layer: every slice of a ``*_N`` type; any codec whose demuxer flags the packet disposable)
can be left out of the decoder without changing one pixel of any other picture; ffmpeg's
``-skip_frame noref`` relies on the same fact. A file decoded at a sampling
rate far below its frame rate keeps one picture in thirty, and about half of an H.264 stream with
B-frames is non-reference: those are never decoded unless the sampler keeps them.

A ``SkipPlan`` reads packet times with a second demuxer a little ahead of the decoder (no decoding:
about 20 ms per minute of 720p), runs the sampler's own rule over them, and the decoder leaves out each
non-reference packet whose picture the sampler will not keep. The source
still yields a (lazy) frame for every picture, in presentation order, so the sampler downstream sees
exactly the frames and times it would have seen; should a left-out picture ever be read after all, it is
decoded alone (``fetch_one``), so a plan that disagrees with the sampler costs time, never pixels.
"""
from __future__ import annotations

import collections
import heapq
import logging
import math
from typing import Callable

logger = logging.getLogger(__name__)

#: H.264 NAL unit types: a coded slice of a non-IDR picture, of an IDR picture.
_H264_SLICE, _H264_IDR = 1, 5
#: H.264 VCL NAL types whose reference status this reader does not decide (partitions, extensions).
_H264_OTHER_VCL = frozenset({2, 3, 4, 20, 21})


def pts_time(pts: int, time_base) -> float:
    """Seconds of a timestamp in ``time_base`` units (the value PyAV's ``frame.time`` gives)."""
    return float(pts * time_base)


def h264_length_size(extradata: bytes | None) -> int:
    """NAL length-prefix size of an H.264 stream from its extradata: 1, 2 or 4 for avcC (MP4/MKV), 0 for
    Annex B start codes (MPEG-TS, raw .h264, no extradata)."""
    if extradata and len(extradata) >= 7 and extradata[0] == 1:
        return (extradata[4] & 0x03) + 1
    return 0


def _nal_headers(data: bytes, length_size: int):
    """The first byte of each NAL unit in one H.264 access unit (length-prefixed or Annex B)."""
    n = len(data)
    if length_size:
        i = 0
        while i + length_size < n:
            size = int.from_bytes(data[i:i + length_size], "big")
            yield data[i + length_size]
            if size <= 0:
                return
            i += length_size + size
        return
    i = data.find(b"\x00\x00\x01")
    while 0 <= i and i + 3 < n:
        yield data[i + 3]
        i = data.find(b"\x00\x00\x01", i + 3)


def h264_is_nonref(data: bytes, length_size: int) -> bool:
    """True when the access unit ``data`` holds slices and every one has ``nal_ref_idc == 0`` (a picture no
    other picture refers to). Anything this reader does not decide (no slice, partitions) is False."""
    slices = 0
    for header in _nal_headers(data, length_size):
        kind = header & 0x1F
        if kind in _H264_OTHER_VCL or kind == _H264_IDR:
            return False
        if kind == _H264_SLICE:
            if (header >> 5) & 0x03:
                return False
            slices += 1
    return slices > 0


#: HEVC VCL NAL types of sub-layer non-reference pictures (TRAIL_N, TSA_N, STSA_N, RADL_N, RASL_N).
_HEVC_NONREF = frozenset({0, 2, 4, 6, 8})


def hevc_single_layer_length_size(extradata: bytes | None) -> int | None:
    """NAL length-prefix size of an HEVC stream whose hvcC (MP4/MKV) says it has one temporal sub-layer; None
    otherwise (Annex B, or sub-layers: a higher one may refer to a lower one's "non-reference" picture)."""
    if not extradata or len(extradata) < 23 or extradata[0] != 1:
        return None
    if (extradata[21] >> 3) & 0x07 != 1:  # numTemporalLayers
        return None
    return (extradata[21] & 0x03) + 1


def hevc_is_nonref(data: bytes, length_size: int) -> bool:
    """True when the HEVC access unit ``data`` (length-prefixed) holds slices and each is of a sub-layer
    non-reference type (TRAIL_N, TSA_N, STSA_N, RADL_N, RASL_N); with one sub-layer nothing refers to it."""
    slices = 0
    for header in _nal_headers(data, length_size):
        kind = (header >> 1) & 0x3F
        if kind < 32:  # a VCL NAL unit: a slice
            if kind not in _HEVC_NONREF:
                return False
            slices += 1
    return slices > 0


def nonref_reader(codec_context) -> Callable[[object], bool]:
    """A test ``packet -> bool``: True when the packet's picture is one no other picture refers to.

    H.264 is read from its NAL headers, HEVC too when its hvcC says it has one temporal sub-layer; other
    streams trust the demuxer's disposable flag (set from MP4's ``sdtp`` box, for one), False when the
    container does not say."""
    if codec_context.name == "h264":
        size = h264_length_size(codec_context.extradata)
        return lambda packet: h264_is_nonref(bytes(packet), size)
    if codec_context.name == "hevc":
        hsize = hevc_single_layer_length_size(codec_context.extradata)
        if hsize is not None:
            return lambda packet: hevc_is_nonref(bytes(packet), hsize)
    return lambda packet: bool(getattr(packet, "is_disposable", False))


#: Kept times older than this (seconds before the latest picture asked about) are forgotten; a picture that
#: old asked about later is decoded (decode order never lags presentation order by that much).
HORIZON_S = 10.0


class _T:
    """A stand-in frame for the sampler: its time only."""

    __slots__ = ("t",)

    def __init__(self, t: float) -> None:
        self.t = t


class SkipPlan:
    """Which non-reference pictures a ``Sampler(fps)`` will not keep, decided packet by packet.

    A second demuxer (``container``, positioned where decoding starts; the plan owns it: ``close()``) reads
    packet times a little ahead of the decoder. A picture's time is final once a packet with a later decode
    time has been read (pts >= dts), and the sampler's own rule runs over the final times in order. So the
    read-ahead stays about one sampling period plus the reorder depth, only the kept times of the last
    ``HORIZON_S`` seconds are held, and the first frame does not wait for a pass over the file.
    """

    def __init__(self, container, fps: float, *, start_s: float = 0.0, end_s: float | None = None,
                 origin: float = 0.0, path: str = "") -> None:
        from vstream.sources.chunking import Sampler

        vs = container.streams.video[0]
        self.container, self.path = container, path  # path: for decoding a left-out picture alone
        self.tb, self.origin, self.start_s, self.end_s = vs.time_base, origin, start_s, end_s
        self.is_nonref = nonref_reader(vs.codec_context)
        self.skipped = 0  # packets left out of the decoder so far
        self.fetched = 0  # left-out pictures read after all (decoded alone)
        self.read_ahead_s = 0.0  # the furthest the planning demuxer was ahead of a picture asked about
        self.exact = True  # False once the planner met a packet without a timestamp or a demux error
        self._warned = False
        self._demux = container.demux(vs)
        self._last_read = -math.inf  # decode time of the last packet the planner read
        self._kept: collections.deque[float] = collections.deque()  # kept times, in order (recent ones)
        self._kept_set: set[float] = set()
        self._decided = -math.inf  # the status of every time up to this one is known
        self._latest = -math.inf  # the latest time asked about
        self._kept_iter = Sampler(fps)(self._final_times())

    @property
    def read_upto_s(self) -> float:
        """Decode time of the last packet the planner read (inf once it read them all)."""
        return self._last_read

    @property
    def kept_held(self) -> int:
        """How many kept times the plan holds now (those of the last ``HORIZON_S`` seconds)."""
        return len(self._kept)

    def _time(self, ts: int) -> float:
        return pts_time(ts, self.tb) - self.origin

    def _final_times(self):
        """Stand-in frames in time order, each given once no later packet can show a picture before it."""
        import av

        heap: list[float] = []
        try:
            for packet in self._demux:
                if packet.size == 0:  # the demuxer's end-of-stream flush packet
                    continue
                if packet.pts is None:
                    self.exact = False
                    return
                if packet.dts is not None:
                    self._last_read = self._time(packet.dts)
                    while heap and heap[0] < self._last_read:
                        yield _T(heapq.heappop(heap))
                    if self.end_s is not None and self._last_read >= self.end_s:
                        break
                t = self._time(packet.pts)
                if t >= self.start_s - 1e-6 and (self.end_s is None or t < self.end_s):
                    heapq.heappush(heap, t)
        except (av.FFmpegError, EOFError, OSError) as exc:  # a damaged file: the decode pass reports it
            logger.debug("planning %r stopped (%s); decoding every picture from here", self.path, exc)
            self.exact = False
            return
        self._last_read = math.inf
        while heap:
            yield _T(heapq.heappop(heap))

    def keeps(self, t: float) -> bool | None:
        """Whether the sampler keeps the picture at time ``t``; None when that cannot be known (decode it)."""
        while self._decided < t:
            stub = next(self._kept_iter, None)
            if stub is None:
                self._decided = math.inf
                break
            self._kept.append(stub.t)
            self._kept_set.add(stub.t)
            self._decided = stub.t
        if not self.exact:
            return None
        if t > self._latest:
            self._latest = t
            while self._kept and self._kept[0] < t - HORIZON_S:
                self._kept_set.discard(self._kept.popleft())
        if t < self._latest - HORIZON_S:
            return None  # forgotten
        if self._last_read < math.inf:
            self.read_ahead_s = max(self.read_ahead_s, self._last_read - t)
        return t in self._kept_set

    def leave_out(self, packet) -> bool:
        """True when ``packet`` need not be decoded: a non-reference picture the sampler will not keep."""
        if packet.pts is None or packet.size == 0 or not self.is_nonref(packet):
            return False
        if self.keeps(self._time(packet.pts)) is not False:
            return False
        self.skipped += 1
        return True

    def note_fetch(self, name: str, t: float) -> None:
        """Count a left-out picture read after all; warn once (the plan disagreed with the sampler)."""
        self.fetched += 1
        if not self._warned:
            self._warned = True
            logger.warning("video %r: the frame at t=%.3fs was left out of decoding by the sampling plan but was "
                           "read; decoding such frames one by one (slower, same pixels)", name, t)

    def close(self) -> None:
        """Close the planning demuxer's container."""
        self.container.close()
