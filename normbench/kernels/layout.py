"""How the kernels see an input: the grouped view as strides, and the tiling that follows from it.

Every norm views x (N, C, *spatial), L = prod(spatial), as x[b, k, c, l] with B = N / K, and takes
one mean and variance per (b, group of C / G channels) over (k, c in the group, l) (see
normbench.norms.core). In memory that is four strides: NCHW has l innermost (stride 1), channels_last
has c innermost. When k and l form one evenly strided axis (channels_last; or L == 1) they are merged
into one long l, so a statistic covers a single 2-D (channel, position) slab per b. Three paths:

- fused (`fused.fused_*`): one program holds whole (b, group) slabs in registers: x is read once and y
  written once (backward: x and dy read once, dx written once). When K == 1 after merging and the
  slab fits FUSED_MAX_ELEMENTS.
- looped (`fused.looped_*`): persistent programs take whole slabs too, streaming each twice
  (statistics, then output), with few enough programs in flight that the second read comes from L2.
  When K == 1, the slab is too big for registers and there are enough slabs to fill the GPU.
- coop (`coop.py`): the split tiling below in one cooperative launch per pass: each tile's second
  touch comes D work items after its first, and `coop_plan` sizes D so that those items fit L2_SHARE
  of the L2 together, so x (backward: x and dy) is read from HBM once. Only with
  KernelSettings.cooperative (off by default: their atomics can cost more than the second read they
  save, much of which an L2 serves anyway; docs/triton.md has the timings) it takes BatchNorm over N x
  spatial, few big slabs, and slabs too big for the looped path's programs to keep in L2, wherever
  its plan fits.
- split (`split.py`): programs over (b, channel block, split of the (k, l) tiles) write per-channel
  partial moments, a small kernel combines them per (b, group), and a second sweep normalizes: x is
  read twice (backward: x and dy twice). For BatchNorm over N x spatial and for few, big slabs
  (LayerNorm on a small batch of large images); also normalize and input_grad of eval-mode BatchNorm.

The numbers below are fixed heuristics, not autotuned, so a sweep spends no time tuning; they are
written for an H100 (132 SMs, 64K 32-bit registers per SM). What the planning takes besides the input
(the cooperative kernels, a forced path, the GPU planned for) comes in as a KernelSettings value.
"""

from __future__ import annotations

import functools
import math
import operator
from dataclasses import dataclass

import torch
from torch import Tensor

from normbench.errors import Unsupported
from normbench.kernels.settings import DEFAULT, KernelSettings

FUSED_MAX_ELEMENTS = 8192  # values of x per fused program: 32 (fwd) / 64 (bwd, x and dy) per thread at 8 warps
FUSED_MIN_ELEMENTS = 1024  # pack several small groups into one fused program up to about this many
MAX_SLAB_CHANNELS = 16384  # channels of one group in a streamed tile (LayerNorm on (N, C) rows up to 16K)
TILE_ELEMENTS = 4096  # values per loop step of a split program (16 KiB of float32)
MAX_CHANNELS_INNER = 64  # channels per tile when they are the contiguous axis: 256 B rows in float32
MIN_CHANNELS_INNER = 32  # and at least this many (when C allows) so each row is one 128 B transaction
MIN_POSITIONS_INNER = 32  # likewise positions per tile row when they are the contiguous axis (NCHW)
MAX_POSITIONS_INNER = 1024  # and at most this many in a split tile, leaving room for 4+ channels
MAX_GROUPS_PER_PROGRAM_CHANNELS = 64  # group sums inside a program use a (BLOCK_C, BLOCK_C) mask
PROGRAMS_PER_SM = 4  # split programs aimed at per SM, so a small B x C still fills the GPU
SLAB_PROGRAMS_PER_SM = 2  # streamed slabs only when there are at least this many slabs per SM
L2_SHARE = 0.5  # of the L2 that the looped programs' live slabs may fill (an H100 SXM has 50 MB)
MAX_LOOPED_PROGRAMS_PER_SM = 4
PARTIAL_SHARE = 0.02  # of a slab backward's bytes that its rows of dweight/dbias partials may add
PERSISTENT_WARPS_PER_SM = 8  # warps per SM of persistent slab-backward programs (their loads in flight)
INTERPRETER_PROGRAMS = 1  # under the CPU interpreter every program is slow Python: as few as possible
COOP_PROGRAMS_PER_SM = 2  # cooperative programs per SM (more may not fit: any number is deadlock-free)
COOP_ITEM_BYTES = 32 * 1024  # of x per cooperative work item: amortizes the ticket's atomic
COOP_BLOCK_S = 64  # splits combined per step of a unit's combine
COOP_BATCH = 4  # stream steps a cooperative program claims per atomic
COOP_STAGES = 2  # software-pipelining depth of the cooperative kernels' tile loops (tl.range num_stages)
SECTOR_BYTES = 32  # the GPU's memory access granule: a channels_last tile row is at least this wide
INT32_LIMIT = 2**31


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


@dataclass(frozen=True)
class GroupedView:
    """x[b, k, c, l] as element strides; statistics per (b, group) over (k, channels of the group, l)."""

    B: int
    K: int
    C: int
    L: int
    G: int
    sb: int
    sk: int
    sc: int
    sl: int

    @property
    def cg(self) -> int:
        return self.C // self.G

    @property
    def channels_inner(self) -> bool:
        return self.sc == 1 and self.L > 1

    @property
    def count(self) -> int:
        """Values behind each statistic."""
        return self.K * self.cg * self.L

    @property
    def align(self) -> int:
        """The kernels' ALIGN: the largest power of two up to 16 dividing L and the strides of an NCHW
        view (positions contiguous), so that loads along positions vectorize where Triton's own
        specialization (integers divisible by 16) misses it, e.g. at 14 x 14. 1 otherwise: channels
        contiguous, whose sizes and strides of 16 or more channels Triton already sees."""
        if self.sl != 1 or self.sc == 1:
            return 1
        g = math.gcd(self.L, self.sb, self.sk, self.sc)
        return min(16, g & -g)


def dense_layout(x: Tensor) -> tuple[Tensor, bool]:
    """x as a dense tensor, contiguous (NCHW) or channels_last (channels innermost), and which one.

    Inputs in neither layout are made contiguous; outputs are allocated with x's strides, so a
    channels_last input gives a channels_last output.
    """
    if x.is_contiguous():
        return x, False
    if x.dim() > 2 and _channels_last(x.shape, x.stride()):
        return x, True
    return x.contiguous(), False


@functools.lru_cache(maxsize=1024)
def _channels_last(shape: torch.Size, strides: tuple[int, ...]) -> bool:
    """Whether these strides are channels innermost, then positions, then samples (once per geometry: the
    permuted view this takes is a torch operator, host time on every call otherwise)."""
    x = torch.empty_strided(shape, strides, device="meta")
    return x.permute(0, *range(2, x.dim()), 1).is_contiguous()


def grouped_view(x: Tensor, samples: int, groups: int, channels_last: bool) -> GroupedView:
    return view_of(x.shape, samples, groups, channels_last)


def view_of(shape: torch.Size, samples: int, groups: int, channels_last: bool) -> GroupedView:
    n, c = shape[:2]
    length = math.prod(shape[2:])
    if channels_last:
        s_sample, sc, sl = length * c, 1, c
    else:
        s_sample, sc, sl = c * length, length, 1
    b, k = n // samples, samples
    sb, sk = k * s_sample, s_sample
    if k > 1 and length == 1:  # (N, C) input: the samples are the only positions
        length, sl, k, sk = k, sk, 1, 0
    elif k > 1 and sk == length * sl and k * length * c < INT32_LIMIT:  # channels_last: (k, l) is one axis
        length, k, sk = k * length, 1, 0
    if length == 1:
        sl = 0  # no positions to step over: lets the compiler see the channels as the contiguous axis
    if (c - 1) * sc + (length - 1) * sl >= INT32_LIMIT:
        raise Unsupported(
            f"impl=triton indexes within a sample in 32 bits; shape {tuple(shape)} has 2**31 or more "
            "values per sample: use impl=native for it"
        )
    return GroupedView(b, k, c, length, groups, sb, sk, sc, sl)


@dataclass(frozen=True)
class Plans:
    """What a call's launches need that depends only on the input's geometry, device and the settings."""

    view: GroupedView
    slab: SlabPlan | None  # the fused/looped tiling of batch statistics; None: coop or split
    coop: CoopPlan | None  # the cooperative kernels' tiling and stream, when slab is None and they apply
    split: SplitPlan  # the split tiling (split path; normalize and input_grad of eval-mode BatchNorm)
    slab_programs: tuple[int, int] | None  # programs of the slab kernels, forward and backward


def plans(x: Tensor, samples: int, groups: int, channels_last: bool, settings: KernelSettings = DEFAULT) -> Plans:
    """The grouped view and tilings of x, computed once per (shape, dtype size, device, statistics,
    settings, heuristics): planning is pure Python, too slow to repeat in every pass."""
    key = cache_key(x.device, settings)
    return plans_of(x.shape, samples, groups, channels_last, x.element_size(), x.device, settings, key)


# The heuristics above, part of the plan caches' key beside the settings, so that a test that changes
# one (tiny tiles to run every loop) gets fresh plans instead of a stale cached one.
_HEURISTICS = operator.itemgetter(
    "FUSED_MAX_ELEMENTS",
    "FUSED_MIN_ELEMENTS",
    "MAX_SLAB_CHANNELS",
    "TILE_ELEMENTS",
    "MAX_CHANNELS_INNER",
    "MIN_CHANNELS_INNER",
    "MIN_POSITIONS_INNER",
    "MAX_POSITIONS_INNER",
    "MAX_GROUPS_PER_PROGRAM_CHANNELS",
    "PROGRAMS_PER_SM",
    "SLAB_PROGRAMS_PER_SM",
    "L2_SHARE",
    "MAX_LOOPED_PROGRAMS_PER_SM",
    "PARTIAL_SHARE",
    "PERSISTENT_WARPS_PER_SM",
    "INTERPRETER_PROGRAMS",
    "INT32_LIMIT",
    "COOP_PROGRAMS_PER_SM",
    "COOP_ITEM_BYTES",
    "COOP_BLOCK_S",
    "COOP_BATCH",
    "COOP_STAGES",
    "SECTOR_BYTES",
)


def cache_key(device: torch.device, settings: KernelSettings) -> tuple:
    """What plans depend on besides the input and the settings: the heuristics, and, where the
    device's own SMs are planned for, whether the interpreter runs (target_programs asks)."""
    values = _HEURISTICS(globals())
    if settings.plan_for is None and device.type == "cuda":
        return (*values, _interpreting())
    return values


@functools.lru_cache(maxsize=1024)
def plans_of(shape, samples, groups, channels_last, element_size, device, settings, key) -> Plans:
    s = settings
    v = view_of(shape, samples, groups, channels_last)
    slab = None if s.force_path == "coop" else slab_plan(v, device, s)
    programs = None
    if slab is not None:
        forward, backward = (
            (looped_programs(slab, v, device, n * element_size, s) for n in (1, 2))
            if slab.looped
            else (slab.slabs, slab.slabs)
        )
        programs = (forward, slab_backward_programs(slab, v, device, element_size, backward, s))
    coop = None
    if s.force_path == "coop" or (
        s.cooperative
        and s.force_path is None
        and (slab is None or (slab.looped and _slabs_per_sm(slab, v, device, 2 * element_size, s) < 1))
    ):
        # the split path, or looped programs whose backward slabs overflow the L2 share (their second
        # read would come from HBM): the cooperative kernels where their plan reads HBM once
        coop = coop_plan(v, device, element_size, s)
        if coop is not None and (coop.fits_l2[1] or s.force_path == "coop"):
            slab = programs = None
        else:
            coop = None
    return Plans(v, slab, coop, split_plan(v, device, s), programs)


@dataclass(frozen=True)
class SlabPlan:
    """One program per GPB whole groups of one b: a single tile (`looped` False) or BLOCK_L steps."""

    block_c: int
    block_l: int
    groups_per_program: int
    slabs: int  # programs of the fused kernel; work items of the persistent looped ones
    looped: bool
    num_warps: int


@dataclass(frozen=True)
class SplitPlan:
    block_c: int
    block_l: int
    channel_blocks: int
    l_blocks: int
    tiles: int  # (k, l-block) tiles per (b, channel block)
    tiles_per_split: int
    splits: int
    num_warps: int

    @property
    def programs(self) -> int:
        return self.splits * self.channel_blocks


def _warps(elements: int) -> int:
    return min(16, max(1, elements // 512))


def slab_plan(v: GroupedView, device: torch.device, settings: KernelSettings = DEFAULT) -> SlabPlan | None:
    """The slab tiling, or None where the split kernels do better (or must be used: K > 1)."""
    force = settings.force_path
    if v.K != 1 or force == "split":
        return None
    cg = next_pow2(v.cg)
    block_l = next_pow2(v.L)
    # Pack more groups per program when they are small (fewer, fuller programs) and, in channels_last,
    # so that a row of the tile spans MIN_CHANNELS_INNER contiguous channels.
    inner = MIN_CHANNELS_INNER if v.channels_inner else 1
    want = max(FUSED_MIN_ELEMENTS // block_l, inner)
    block_c = max(cg, min(next_pow2(v.C), want, MAX_GROUPS_PER_PROGRAM_CHANNELS))
    if block_c * block_l <= FUSED_MAX_ELEMENTS and force != "looped":
        per = max(1, block_c // v.cg)
        return SlabPlan(block_c, block_l, per, v.B * -(-v.G // per), False, _warps(block_c * block_l))
    # Streamed slab: worth it only with enough slabs to fill the GPU (else split them across programs).
    block_c = max(cg, min(next_pow2(v.C), inner, MAX_GROUPS_PER_PROGRAM_CHANNELS))
    inner_l = 1 if v.channels_inner else min(block_l, MIN_POSITIONS_INNER)
    block_l = min(block_l, max(1, inner_l, TILE_ELEMENTS // block_c))
    # A group's channels must fit in one tile (LayerNorm on (N, C) rows: up to MAX_SLAB_CHANNELS), with
    # rows long enough to coalesce; past that, splitting channels across programs does better.
    if block_c > MAX_SLAB_CHANNELS or (block_l > 1 and block_c * block_l > FUSED_MAX_ELEMENTS):
        return None
    per = max(1, block_c // v.cg)
    programs = v.B * -(-v.G // per)
    if programs < SLAB_PROGRAMS_PER_SM * sm_count(device, settings) and force != "looped":
        return None
    return SlabPlan(block_c, block_l, per, programs, True, _warps(block_c * block_l))


def looped_programs(
    plan: SlabPlan, v: GroupedView, device: torch.device, bytes_per_value: int, settings: KernelSettings = DEFAULT
) -> int:
    """Persistent programs for the looped kernels: as many as keep their slabs in L2 together.

    Each program reads its slab twice; with P programs in flight, P slabs are live between the two
    reads. P = SMs x (slabs per SM whose bytes fit L2_SHARE of the L2), at most
    MAX_LOOPED_PROGRAMS_PER_SM per SM. Where even one slab per SM overflows that, every slab gets its
    own program (full occupancy; the second read then comes from memory, as in the split path).
    `bytes_per_value` counts every tensor a pass reads twice (x; x and dy backward).
    """
    per_sm = _slabs_per_sm(plan, v, device, bytes_per_value, settings)
    if per_sm < 1:
        return plan.slabs
    return min(plan.slabs, sm_count(device, settings) * min(per_sm, MAX_LOOPED_PROGRAMS_PER_SM))


def slab_backward_programs(
    plan: SlabPlan,
    v: GroupedView,
    device: torch.device,
    element_size: int,
    programs: int,
    settings: KernelSettings = DEFAULT,
) -> int:
    """Programs of the slab backward, from `programs` (one per slab fused; looped_programs looped).

    Each program sums dy and dy * xhat per channel over the slabs it takes and writes them as one
    partial row (fused.fused_backward), so the count is a multiple of the channel blocks per b: a
    program keeps one block. Those rows cost 16 bytes per channel (two float32 sums, written, then read
    by torch). Where they would add more than PARTIAL_SHARE to the pass's 3 x input bytes (short slabs:
    LayerNorm on (N, C) rows, where a row per slab moves more bytes than x), the programs become
    persistent, PERSISTENT_WARPS_PER_SM warps' worth per SM: one per SM from 8 warps up, as
    Liger-Kernel's LayerNorm backward runs (linkedin/Liger-Kernel, ops/layer_norm.py), more for small
    tiles so that each SM still keeps that many warps' loads in flight.
    """
    blocks = plan.slabs // v.B
    if programs // blocks * v.C * 16 > PARTIAL_SHARE * 3 * v.B * v.C * v.L * element_size:
        per_sm = max(1, PERSISTENT_WARPS_PER_SM // plan.num_warps)
        programs = min(programs, sm_count(device, settings) * per_sm // blocks * blocks)
    return max(blocks, programs // blocks * blocks)


def _slabs_per_sm(
    plan: SlabPlan, v: GroupedView, device: torch.device, bytes_per_value: int, settings: KernelSettings
) -> int:
    """How many slabs per SM fit L2_SHARE of the L2 together."""
    slab_bytes = sm_count(device, settings) * plan.block_c * v.L * bytes_per_value
    return int(l2_bytes(device, settings) * L2_SHARE // slab_bytes)


def l2_bytes(device: torch.device, settings: KernelSettings = DEFAULT) -> int:
    if settings.plan_for is not None:
        return settings.plan_for[1]
    if device.type == "cuda":
        return _cuda_l2_bytes(device.index if device.index is not None else torch.cuda.current_device())
    return 50 * 2**20  # the interpreter: any size works; an H100's


@functools.cache
def _cuda_l2_bytes(index: int) -> int:
    return getattr(torch.cuda.get_device_properties(index), "L2_cache_size", 50 * 2**20)


def sm_count(device: torch.device, settings: KernelSettings = DEFAULT) -> int:
    if settings.plan_for is not None:
        return settings.plan_for[0]
    if device.type == "cuda":
        return _cuda_sm_count(device.index if device.index is not None else torch.cuda.current_device())
    return 1  # the interpreter: one program at a time anyway


@functools.cache
def _cuda_sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def target_programs(device: torch.device, per_sm: int | None = None, settings: KernelSettings = DEFAULT) -> int:
    """Programs to launch: per_sm (PROGRAMS_PER_SM) on each SM of a GPU, few under the interpreter."""
    if settings.plan_for is not None or (device.type == "cuda" and not _interpreting()):
        return (PROGRAMS_PER_SM if per_sm is None else per_sm) * sm_count(device, settings)
    return INTERPRETER_PROGRAMS


def _interpreting() -> bool:
    from triton import knobs

    return bool(knobs.runtime.interpret)


def split_plan(v: GroupedView, device: torch.device, settings: KernelSettings = DEFAULT) -> SplitPlan:
    if v.channels_inner:
        block_c = min(next_pow2(v.C), MAX_CHANNELS_INNER)
        block_l = min(next_pow2(v.L), max(1, TILE_ELEMENTS // block_c))
    else:
        block_l = min(next_pow2(v.L), MAX_POSITIONS_INNER)
        block_c = min(next_pow2(v.C), max(1, TILE_ELEMENTS // block_l))
    channel_blocks = -(-v.C // block_c)
    l_blocks = -(-v.L // block_l)
    tiles = v.K * l_blocks
    splits = min(tiles, max(1, -(-target_programs(device, settings=settings) // (v.B * channel_blocks))))
    per = -(-tiles // splits)
    splits = -(-tiles // per)
    return SplitPlan(block_c, block_l, channel_blocks, l_blocks, tiles, per, splits, _warps(block_c * block_l))


@dataclass(frozen=True)
class CoopPlan:
    """The cooperative kernels' work: units of GBLK channel blocks of one b (whole groups), SPB items of
    TPS tiles per block; the B step of an item comes `delay[pass]` items after its A step."""

    block_c: int
    block_l: int
    gpb: int  # groups per channel block (1: a group spans GBLK >= 1 blocks)
    gblk: int
    units: int
    units_per_b: int
    l_blocks: int
    tiles: int  # (k, l-block) tiles per channel block
    tiles_per_item: int
    items_per_block: int
    programs: int
    batch: int  # stream steps per claim
    delay: tuple[int, int]  # forward, backward
    fits_l2: tuple[bool, bool]  # whether the items in flight between two touches fit the L2 share
    num_warps: int

    @property
    def items(self) -> int:
        return self.units * self.gblk * self.items_per_block


def coop_plan(
    v: GroupedView, device: torch.device, element_size: int, settings: KernelSettings = DEFAULT
) -> CoopPlan | None:
    """The coop tiling, or None where groups do not align with channel blocks (the split path then).

    Tiles as split_plan, then narrower channel blocks (at least a memory sector wide in channels_last)
    until one unit, the values behind a statistic, takes at most half the L2 share in backward (x and
    dy), so that a unit plus a round of items from every program fit together.
    """
    if settings.force_path == "split":
        return None
    budget = L2_SHARE * l2_bytes(device, settings)
    sp = split_plan(v, device, settings)
    block_c, block_l = sp.block_c, sp.block_l
    min_c = max(1, SECTOR_BYTES // element_size) if v.channels_inner else 1
    while block_c > 1 and v.cg % block_c and block_c % v.cg:  # groups must align with channel blocks
        block_c //= 2
    if block_c < min(min_c, next_pow2(v.C)):
        return None

    def unit_bytes(bc: int) -> int:
        return v.K * v.L * max(bc, v.cg) * 2 * element_size

    while block_c > min_c and block_c > v.cg and unit_bytes(block_c) > budget / 2:
        block_c //= 2
    if v.channels_inner:
        block_l = min(next_pow2(v.L), max(1, TILE_ELEMENTS // block_c))
    gblk = max(1, v.cg // block_c)
    l_blocks = -(-v.L // block_l)
    tiles = v.K * l_blocks
    programs = target_programs(device, COOP_PROGRAMS_PER_SM, settings)
    tile_bytes = block_c * block_l * element_size
    tps = max(1, min(tiles, COOP_ITEM_BYTES // tile_bytes))

    def stream(tps: int, batch: int) -> tuple[int, tuple[int, int], tuple[bool, bool]]:
        spb = -(-tiles // tps)
        delay = gblk * spb + programs * batch  # a unit's items, then one more batch of every program's
        fits = tuple(delay * tps * tile_bytes * n <= budget for n in (1, 2))
        return spb, (delay, delay), fits

    batch = COOP_BATCH
    spb, delay, fits = stream(tps, batch)
    while not fits[1] and (tps > 1 or batch > 1):  # smaller items, then smaller batches: fewer bytes in flight
        if tps > 1:
            tps //= 2
        else:
            batch //= 2
        spb, delay, fits = stream(tps, batch)
    units_per_b = -(-v.C // block_c) // gblk
    return CoopPlan(
        block_c,
        block_l,
        max(1, block_c // v.cg),
        gblk,
        v.B * units_per_b,
        units_per_b,
        l_blocks,
        tiles,
        tps,
        spb,
        programs,
        batch,
        delay,
        fits,
        _warps(block_c * block_l),
    )
