"""Just enough H.264 bitstream parsing to learn how far back a motion vector may point.

FFmpeg exports motion vectors but not the reference picture each one uses, and PyAV does not
expose `AVCodecContext.refs`. The sequence parameter set (SPS) carries `max_num_ref_frames`: when
it is 1 (and the stream has no reordering) every P block predicts from the previous frame, so
every exported vector spans exactly one frame step. This module finds SPS NAL units in
`avcC` extradata, Annex-B extradata or Annex-B packets and reads that field.
"""

from __future__ import annotations

from dataclasses import dataclass

# profile_idc values whose SPS carries chroma_format_idc / bit depths / scaling matrices
_HIGH_PROFILES = {100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135}


@dataclass(frozen=True)
class SpsInfo:
    """The fields of one H.264 SPS that motion extraction cares about."""

    sps_id: int
    profile_idc: int
    max_num_ref_frames: int
    pic_order_cnt_type: int


class _Bits:
    """MSB-first bit reader over an RBSP (emulation-prevention bytes already removed)."""

    def __init__(self, data: bytes):
        self.value = int.from_bytes(data, "big")
        self.left = len(data) * 8

    def u(self, n: int) -> int:
        if n > self.left:
            raise ValueError("SPS truncated")
        self.left -= n
        return (self.value >> self.left) & ((1 << n) - 1)

    def ue(self) -> int:
        zeros = 0
        while self.u(1) == 0:
            zeros += 1
            if zeros > 31:
                raise ValueError("bad exp-Golomb code in SPS")
        return (1 << zeros) - 1 + (self.u(zeros) if zeros else 0)

    def se(self) -> int:
        k = self.ue()
        return (k + 1) // 2 if k & 1 else -(k // 2)


def _rbsp(nal: bytes) -> bytes:
    """Remove emulation-prevention bytes (00 00 03 -> 00 00)."""
    return nal.replace(b"\x00\x00\x03", b"\x00\x00")


def _skip_scaling_list(bits: _Bits, size: int) -> None:
    last = nxt = 8
    for _ in range(size):
        if nxt != 0:
            nxt = (last + bits.se() + 256) % 256
        last = nxt if nxt != 0 else last


def parse_sps(nal: bytes) -> SpsInfo:
    """Parse an SPS NAL unit (starting with its one-byte NAL header, type 7)."""
    if not nal or nal[0] & 0x1F != 7:
        raise ValueError("not an SPS NAL unit")
    bits = _Bits(_rbsp(nal[1:]))
    profile_idc = bits.u(8)
    bits.u(16)  # constraint flags + reserved, level_idc
    sps_id = bits.ue()
    if profile_idc in _HIGH_PROFILES:
        chroma_format_idc = bits.ue()
        if chroma_format_idc == 3:
            bits.u(1)  # separate_colour_plane_flag
        bits.ue()  # bit_depth_luma_minus8
        bits.ue()  # bit_depth_chroma_minus8
        bits.u(1)  # qpprime_y_zero_transform_bypass_flag
        if bits.u(1):  # seq_scaling_matrix_present_flag
            for i in range(8 if chroma_format_idc != 3 else 12):
                if bits.u(1):
                    _skip_scaling_list(bits, 16 if i < 6 else 64)
    bits.ue()  # log2_max_frame_num_minus4
    poc_type = bits.ue()
    if poc_type == 0:
        bits.ue()  # log2_max_pic_order_cnt_lsb_minus4
    elif poc_type == 1:
        bits.u(1)  # delta_pic_order_always_zero_flag
        bits.se()  # offset_for_non_ref_pic
        bits.se()  # offset_for_top_to_bottom_field
        for _ in range(bits.ue()):  # num_ref_frames_in_pic_order_cnt_cycle
            bits.se()
    max_refs = bits.ue()
    return SpsInfo(sps_id, profile_idc, max_refs, poc_type)


def _annexb_nals(data: bytes) -> list[bytes]:
    """Split an Annex-B byte stream on 00 00 01 start codes."""
    nals, start = [], None
    i = data.find(b"\x00\x00\x01")
    while i != -1:
        if start is not None:
            nals.append(data[start:i].rstrip(b"\x00"))
        start = i + 3
        i = data.find(b"\x00\x00\x01", start)
    if start is not None:
        nals.append(data[start:])
    return [n for n in nals if n]


def _avcc_nals(extradata: bytes) -> list[bytes]:
    """SPS and PPS NAL units of an `avcC` (ISO/IEC 14496-15) decoder configuration record."""
    nals, pos = [], 5
    count = extradata[pos] & 0x1F
    pos += 1
    for _ in range(count):
        size = int.from_bytes(extradata[pos:pos + 2], "big")
        nals.append(extradata[pos + 2:pos + 2 + size])
        pos += 2 + size
    return nals


def _length_prefixed_nals(data: bytes, length_size: int = 4) -> list[bytes]:
    nals, pos = [], 0
    while pos + length_size <= len(data):
        size = int.from_bytes(data[pos:pos + length_size], "big")
        pos += length_size
        if size <= 0 or pos + size > len(data):
            break
        nals.append(data[pos:pos + size])
        pos += size
    return nals


def sps_from_bytes(data: bytes | None, *, avcc_packets: bool = False) -> list[SpsInfo]:
    """Every SPS found in extradata (`avcC` or Annex B) or in one packet's payload.

    `avcc_packets=True` means `data` is a packet of an `avcC` stream (4-byte length prefixes).
    NAL units that fail to parse are skipped.
    """
    if not data:
        return []
    data = bytes(data)
    if data[0] == 1 and len(data) > 6 and not avcc_packets:
        nals = _avcc_nals(data)
    elif avcc_packets:
        nals = _length_prefixed_nals(data)
    else:
        nals = _annexb_nals(data)
    found = []
    for nal in nals:
        if nal and nal[0] & 0x1F == 7:
            try:
                found.append(parse_sps(nal))
            except (ValueError, IndexError):
                continue
    return found
