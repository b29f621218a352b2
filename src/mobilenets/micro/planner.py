"""Static memory plan for the generated C: which tensors are held whole, which stream through
row rings, and where every buffer sits in one arena.

Execution model (the C engine in ``templates/mn_engine.c`` does exactly this, and
:func:`simulate` replays it in Python to size every buffer):

- Every op computes its output one row at a time (conv, depthwise, pointwise, add; the global
  pool accumulates one input row at a time; the FC is one row). A row is demanded lazily:
  computing row ``r`` of an op first demands the input rows it reads, so a whole
  inverted-residual block (expand -> depthwise -> project -> add) runs in bands of rows and its
  t-times expanded tensor is never held whole (MCUNetV2's rows; see ``choose`` below).
- A tensor whose producer and consumers all work row by row is a *ring* of ``R`` rows, ``R``
  the smallest count that no consumer still needs when a new row overwrites slot
  ``row % R``. The others (model input, the pooled vector, logits) are held *whole*.
- A tensor (whole or ring) may be written over rows of an earlier whole tensor that no op
  reads any more (the stem's row ring over the input rows the stem has finished with, as
  TinyEngine's in-place updates): ``Y.offset <= X.offset - delta(X, Y)``, where ``delta`` (may
  be negative: ``Y`` inside ``X``) is the largest, over ``Y``'s row writes, of how far the
  written slot ends past ``X``'s dead rows. :meth:`Plan.check` re-verifies every such overlap
  row by row from the replayed accesses, not from ``delta``.

Why rows and not MobileNetV2 §5.1's channel slices: slicing the expanded tensor by channels
keeps the block's whole input and an int32 accumulator over the whole projection output
(4 bytes x H x W x C_out) alive, and each slice's depthwise still needs full H x W planes.
Rows need only ``k`` rows of each intermediate, no wide accumulator and no recomputation
(each row is computed once and kept until its last reader is done), so the peak shrinks with
the image height instead of with the channel count.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import MobilenetsError
from .graph import Op, QuantizedModel
from .ops import MAX_KERNEL, PATCH_MAX, STAGE_KINDS, spec

ALIGN = 4
STREAM_KINDS = (
    "conv",
    "dw",
    "add",
    "pool",
    "mul",
    "hswish",
    "logistic",
    "softmax",
    "const",
    "fadd",
)  # read their inputs by rows
ROW_PRODUCERS = (
    "conv",
    "dw",
    "add",
    "mul",
    "hswish",
    "logistic",
    "softmax",
    "const",
    "fadd",
)  # write their outputs row by row


class UnsupportedModelError(MobilenetsError):
    """The graph has an op or a geometry the C generator does not implement."""


@dataclass
class Stage:
    """One executable op: a graph op with its ``pad`` folded in and ``reshape`` aliased away."""

    index: int
    kind: str  # the C kernel (ops.STAGE_KINDS)
    op: Op
    inputs: tuple[int, ...]
    output: int
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    whole_input: bool = False  # reads a pooled vector: waits for the pool's last (virtual) row
    rows: str = "same"  # the registry's row rule (ops.OpSpec.rows)

    def needed_row(self, r: int, in_h: int) -> int:
        """The last input row that output row ``r`` reads (-1: none)."""
        if self.whole_input or self.rows == "all":
            return in_h - 1
        if self.rows == "window":
            return min(in_h - 1, r * self.stride[0] - self.padding[0] + self.kernel[0] - 1)
        if self.rows == "shift":
            y = r - self.padding[0]
            return y if 0 <= y < in_h else -1
        return min(r, in_h - 1)  # a one-row input (squeeze-excite's scale) is broadcast

    def read_rows(self, r: int, in_h: int) -> range:
        if self.whole_input or self.rows == "all":
            return range(in_h)
        if self.rows == "window":
            lo = r * self.stride[0] - self.padding[0]
            return range(max(lo, 0), self.needed_row(r, in_h) + 1)
        y = self.needed_row(r, in_h)
        return range(y, y + 1) if y >= 0 else range(0)


@dataclass
class TensorPlan:
    """Geometry and placement of one activation tensor: rows of ``w * c`` bytes."""

    id: int
    name: str
    h: int
    w: int
    c: int
    ring: int = 0  # rows held; == h for a whole tensor
    offset: int = -1
    producer: int = -1  # stage index; -1 for the model input

    @property
    def row_bytes(self) -> int:
        return self.w * self.c

    @property
    def whole(self) -> bool:
        return self.ring >= self.h

    @property
    def nbytes(self) -> int:
        return self.ring * self.row_bytes


@dataclass
class Buffer:
    """One arena region, live from tick ``first`` to ``last`` (ticks: rows computed)."""

    name: str
    size: int
    first: int
    last: int
    tensor: int = -1  # the tensor it holds; -1 for scratch
    stage: int = -1  # owning stage of a scratch buffer
    offset: int = -1


@dataclass
class _Trace:
    """What :func:`simulate` records: row writes and reads with their tick."""

    writes: dict[int, list[tuple[int, int]]]  # tensor -> [(tick, row)]
    reads: dict[int, list[tuple[int, int]]]  # tensor -> [(tick, row)]
    stage_ticks: list[tuple[int, int]]
    ticks: int


@dataclass
class Plan:
    """The result of :func:`plan_memory`."""

    stages: list[Stage]
    tensors: dict[int, TensorPlan]
    buffers: list[Buffer]
    arena_bytes: int
    input: int
    output: int
    drive: list[int]
    ticks: int
    stage_ticks: list[tuple[int, int]]  # first and last tick of each stage
    peak_live_bytes: int = 0
    peak_stage: int = -1
    peak_buffers: list[tuple[str, int]] = field(default_factory=list)
    stage_live_bytes: list[int] = field(default_factory=list)
    layer_by_layer_bytes: int = 0  # the arena with streaming off (0 in hold_input=False plans)
    streaming: bool = True
    deltas: dict[tuple[int, int], int] = field(default_factory=dict)  # the placer's bounds
    trace: _Trace | None = None  # the replayed row accesses that check() verifies overlaps by

    def check(self) -> None:
        """TFLite Micro's planner self-check: every buffer lies inside the arena, aligned, and
        no two buffers live at the same tick overlap, except a tensor written over rows of an
        earlier whole tensor that no op reads any more, verified row by row (every row write
        lands only on rows whose last read came at an earlier tick).
        Raises MobilenetsError naming the two buffers."""
        for b in self.buffers:
            if b.offset < 0 or b.offset % ALIGN or b.offset + b.size > self.arena_bytes:
                raise MobilenetsError(
                    f"memory plan: buffer {b.name} at {b.offset} (+{b.size} B) is outside the "
                    f"{self.arena_bytes} B arena or not {ALIGN}-byte aligned"
                )
        for i, a in enumerate(self.buffers):
            for b in self.buffers[i + 1 :]:
                if a.last < b.first or b.last < a.first:
                    continue  # never live together
                if a.offset + a.size <= b.offset or b.offset + b.size <= a.offset:
                    continue
                if self._writes_dead_rows(a, b) or self._writes_dead_rows(b, a):
                    continue
                raise MobilenetsError(
                    f"memory plan: buffers {a.name} [{a.offset}, {a.offset + a.size}) and "
                    f"{b.name} [{b.offset}, {b.offset + b.size}) overlap while both are live"
                )

    def _writes_dead_rows(self, x: Buffer, y: Buffer) -> bool:
        """Every row write of ``y`` (all after ``x`` is complete) lands on bytes of the whole
        tensor ``x`` only in rows that no op reads at that tick or later."""
        if x.tensor < 0 or y.tensor < 0 or self.trace is None:
            return False
        tx, ty = self.tensors[x.tensor], self.tensors[y.tensor]
        writes = self.trace.writes[ty.id]
        x_done = max((tk for tk, _ in self.trace.writes[tx.id]), default=-1)
        if not tx.whole or not writes or min(tk for tk, _ in writes) <= x_done:
            return False
        last_read = [-1] * tx.h
        for tk, row in self.trace.reads[tx.id]:
            last_read[row] = max(last_read[row], tk)
        end = x.offset + tx.nbytes
        for tk, row in writes:
            lo = y.offset + (row % ty.ring) * ty.row_bytes
            hi = min(lo + ty.row_bytes, end)
            if hi <= x.offset or lo >= end:
                continue
            rows = range(
                max(lo - x.offset, 0) // tx.row_bytes, (hi - 1 - x.offset) // tx.row_bytes + 1
            )
            if any(last_read[i] >= tk for i in rows):
                return False
        return True

    @property
    def peak_op(self) -> str:
        return self.stages[self.peak_stage].op.name or f"op{self.peak_stage}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "arena_bytes": self.arena_bytes,
            "streaming": self.streaming,
            "peak_live_bytes": self.peak_live_bytes,
            "peak_op": self.peak_op,
            "peak_buffers": [{"name": n, "bytes": b} for n, b in self.peak_buffers],
            "layer_by_layer_bytes": self.layer_by_layer_bytes,
            "ticks": self.ticks,
            "ops": [
                {
                    "index": s.index,
                    "name": s.op.name,
                    "kind": s.kind,
                    "inputs": list(s.inputs),
                    "output": s.output,
                    "ticks": list(self.stage_ticks[s.index]),
                    "live_bytes": self.stage_live_bytes[s.index],
                }
                for s in self.stages
            ],
            "tensors": [
                {
                    "id": t.id,
                    "name": t.name,
                    "shape": [t.h, t.w, t.c],
                    "rows_held": t.ring,
                    "bytes": t.nbytes,
                    "offset": t.offset,
                }
                for t in self.tensors.values()
            ],
            "buffers": [
                {
                    "name": b.name,
                    "offset": b.offset,
                    "bytes": b.size,
                    "first_tick": b.first,
                    "last_tick": b.last,
                }
                for b in self.buffers
            ],
        }


def _hwc(shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(shape) == 4:
        return int(shape[1]), int(shape[2]), int(shape[3])
    if len(shape) == 2:
        return 1, 1, int(shape[1])
    raise UnsupportedModelError(f"tensor shape {shape} is neither NHWC nor (1, N)")


def build_stages(qm: QuantizedModel) -> tuple[list[Stage], dict[int, int]]:
    """Executable stages of ``qm``, and the tensor aliases (reshape output -> its input)."""
    alias: dict[int, int] = {}
    consumers: dict[int, list[int]] = {}
    for i, op in enumerate(qm.ops):
        for t in op.inputs:
            consumers.setdefault(t, []).append(i)
    pending_pad: dict[int, tuple[int, tuple[int, int, int, int]]] = {}
    stages: list[Stage] = []

    def resolve(t: int) -> int:
        while t in alias:
            t = alias[t]
        return t

    for i, op in enumerate(qm.ops):
        name = op.name or f"op{i}"
        role = spec(op.kind).stage
        if role == "alias":
            alias[op.output] = op.inputs[0]
            continue
        if role == "fold" and _foldable(qm, op, consumers.get(op.output, [])):
            pending_pad[op.output] = (op.inputs[0], tuple(op.padding))
            continue
        stages.append(_stage(qm, len(stages), op, name, pending_pad, resolve))
    pooled = {s.output for s in stages if s.kind == "pool"}
    for s in stages:
        s.whole_input = s.inputs[0] in pooled
    return stages, alias


def _foldable(qm: QuantizedModel, op: Op, users: list[int]) -> bool:
    """A PAD folds into the one convolution it feeds (its implicit zero-point padding)."""
    src, dst = qm.tensors[op.inputs[0]], qm.tensors[op.output]
    conv = len(users) == 1 and spec(qm.ops[users[0]].kind).stage in ("conv", "dw")
    same_q = src.zero_point == dst.zero_point and src.scale == dst.scale
    return conv and same_q and op.pad_value in (None, dst.zero_point)


def _is_global_pool(qm: QuantizedModel, op: Op) -> bool:
    h, w, _ = _hwc(qm.tensors[op.inputs[0]].shape)
    oh, ow, _ = _hwc(qm.tensors[op.output].shape)
    flat = not any(op.padding) and (oh, ow) == (1, 1)
    return op.kind == "mean" or (op.kind == "avg_pool2d" and flat and tuple(op.kernel) == (h, w))


def _stage(qm, index, op, name, pending_pad, resolve) -> Stage:
    kind, rows = spec(op.kind).stage, spec(op.kind).rows
    if kind == "fold":
        kind = "pad"  # a PAD that cannot fold into a convolution runs on its own
    if kind == "pool2d" and _is_global_pool(qm, op):
        kind, rows = "pool", "same"  # accumulated row by row into one (virtual) row
    if kind in ("add", "mul") and len(op.inputs) == 1:
        kind = "const"  # the second operand is the op's constant (``op.weights``)
    if kind not in STAGE_KINDS:
        raise UnsupportedModelError(f"op {name}: {op.kind} is not supported by the C generator")
    inputs = list(op.inputs)
    padding = tuple(op.padding)
    if inputs[0] in pending_pad:
        src, pad = pending_pad.pop(inputs[0])
        inputs[0] = src
        padding = tuple(a + b for a, b in zip(padding, pad, strict=True))
    inputs = [resolve(t) for t in inputs]
    if kind == "mul" and qm.tensors[inputs[0]].nbytes < qm.tensors[inputs[1]].nbytes:
        inputs.reverse()  # the engine broadcasts its second input
    if kind in ("add", "mul"):
        small, big = qm.tensors[inputs[1]], qm.tensors[inputs[0]]
        if small.shape != big.shape and not (kind == "mul" and small.nbytes == big.shape[-1]):
            raise UnsupportedModelError(
                f"op {name}: {op.kind} of shapes {big.shape} and {small.shape} is not supported "
                "(same shapes, or MUL by one value per channel)"
            )
    if kind == "fadd" and any(qm.tensors[t].shape != qm.tensors[op.output].shape for t in inputs):
        raise UnsupportedModelError(f"op {name}: float_add of different shapes is not supported")
    kernel = tuple(op.kernel)
    if kind in ("conv", "dw"):
        kernel = (int(op.weights.shape[1]), int(op.weights.shape[2]))
    if rows == "window":
        if kernel[0] > MAX_KERNEL or kernel[1] > MAX_KERNEL:
            raise UnsupportedModelError(
                f"op {name}: kernels larger than {MAX_KERNEL}x{MAX_KERNEL} are not supported"
            )
    stride = tuple(op.stride)
    return Stage(index, kind, op, tuple(inputs), op.output, padding, kernel, stride, rows=rows)


def _tensor_plans(qm: QuantizedModel, stages: list[Stage], streaming: bool):
    used = {qm.input}
    for s in stages:
        used.update(s.inputs)
        used.add(s.output)
    tensors = {}
    for t in sorted(used):
        h, w, c = _hwc(qm.tensors[t].shape)
        tensors[t] = TensorPlan(t, qm.tensors[t].name, h, w, c, ring=h)
    for s in stages:
        tensors[s.output].producer = s.index
        if s.kind == "pool":  # one virtual row per input row; the result is one row
            tensors[s.output].h = tensors[s.inputs[0]].h
            tensors[s.output].ring = 1
            tensors[s.output].w, tensors[s.output].c = 1, tensors[s.inputs[0]].c
    readers: dict[int, list[Stage]] = {}
    for s in stages:
        for t in s.inputs:
            readers.setdefault(t, []).append(s)
    ringable = set()
    if streaming:
        for t, tp in tensors.items():
            if t in (qm.input, qm.output) or tp.producer < 0:
                continue
            prod = stages[tp.producer]
            if prod.kind in ROW_PRODUCERS and all(
                r.kind in STREAM_KINDS for r in readers.get(t, [])
            ):
                ringable.add(t)
    return tensors, readers, ringable


def simulate(stages: list[Stage], tensors: dict[int, TensorPlan], inp: int, drive: list[int]):
    """Replay the C engine's demand-driven row order (``mn_run``) and record every access."""
    nxt = {t: 0 for t in tensors}
    nxt[inp] = tensors[inp].h
    writes: dict[int, list[tuple[int, int]]] = {t: [] for t in tensors}
    reads: dict[int, list[tuple[int, int]]] = {t: [] for t in tensors}
    first = [-1] * len(stages)
    last = [-1] * len(stages)
    tick = 0
    for goal in drive:
        stack = [(goal, tensors[goal].h - 1)]
        while stack:
            t, row = stack[-1]
            if nxt[t] > row:
                stack.pop()
                continue
            s = stages[tensors[t].producer]
            r = nxt[t]
            missing = None
            for i in s.inputs:
                need = s.needed_row(r, tensors[i].h)
                if need >= 0 and nxt[i] <= need:
                    missing = (i, need)
                    break
            if missing:
                stack.append(missing)
                continue
            for i in s.inputs:
                for rr in s.read_rows(r, tensors[i].h):
                    reads[i].append((tick, rr))
            writes[t].append((tick, r))
            if first[s.index] < 0:
                first[s.index] = tick
            last[s.index] = tick
            nxt[t] += 1
            tick += 1
    return _Trace(writes, reads, list(zip(first, last, strict=True)), tick)


def _suffix_min_reader(reads: list[tuple[int, int]], ticks: int, h: int) -> list[int]:
    """lo[tick]: the lowest row read at any tick >= tick (h when none)."""
    lo = [h] * (ticks + 2)
    at = [h] * (ticks + 2)
    for tk, row in reads:
        at[tk] = min(at[tk], row)
    for tk in range(ticks, -1, -1):
        lo[tk] = min(at[tk], lo[tk + 1])
    return lo


def _ring_rows(tp: TensorPlan, trace: _Trace) -> int:
    lo = _suffix_min_reader(trace.reads[tp.id], trace.ticks, tp.h)
    need = 1
    for tk, row in trace.writes[tp.id]:
        if lo[tk] < tp.h:
            need = max(need, row - lo[tk] + 1)
    return min(need, tp.h)


def plan_memory(
    qm: QuantizedModel,
    *,
    streaming: bool = True,
    max_sram: int | None = None,
    hold_input: bool = True,
) -> Plan:
    """Plan the arena of ``qm``: ring sizes, lifetimes, overlaps and offsets.

    Args:
        streaming: run ops in demand-driven row bands with ring buffers (default). False runs
            layer by layer (every tensor whole, still overlapping dead input rows).
        max_sram: fail with :class:`MobilenetsError` naming the peak op if the arena is larger.
        hold_input: False gives the figure for an input streamed in by the caller (MCUNetV2's
            patch-based inference decodes the image in patches): the input takes no arena.
            Such a plan is for reporting only; the generated code always holds the input.
    """
    stages, _alias = build_stages(qm)
    output = qm.output
    while output in _alias:
        output = _alias[output]
    tensors, _readers, ringable = _tensor_plans(qm, stages, streaming)
    drive, trace = _schedule(qm, stages, tensors, ringable, output, streaming, hold_input)
    buffers = _buffers(stages, tensors, trace, qm.input, output)
    if not hold_input:
        buffers = [b for b in buffers if b.tensor != qm.input]
    deltas = _overlap_deltas(tensors, trace, buffers)
    arena = _place(buffers, [_whole_only(tensors, deltas), deltas])
    for b in buffers:
        if b.tensor >= 0:
            tensors[b.tensor].offset = b.offset
    plan = Plan(
        stages,
        tensors,
        buffers,
        arena,
        qm.input,
        output,
        drive,
        trace.ticks,
        trace.stage_ticks,
        streaming=streaming,
        deltas=deltas,
        trace=trace,
    )
    plan.check()
    _peak(plan)
    if not streaming:
        plan.layer_by_layer_bytes = arena
    elif hold_input:  # the arena the generator needs with streaming off
        plan.layer_by_layer_bytes = plan_memory(qm, streaming=False).arena_bytes
    if max_sram is not None and arena > max_sram:
        live = ", ".join(f"{n} {b:,} B" for n, b in plan.peak_buffers[:6])
        raise MobilenetsError(
            f"the arena needs {arena:,} B > --max-sram {max_sram:,} B; the peak "
            f"({plan.peak_live_bytes:,} B live) is at op {plan.peak_op} ({live})"
        )
    return plan


def _schedule(qm, stages, tensors, ringable, output, streaming: bool, hold_input: bool):
    """The tensors to complete in order (``drive``) and the replayed accesses; sizes rings."""
    drive = [output] if streaming else [s.output for s in stages]
    trace = simulate(stages, tensors, qm.input, drive)
    for t in ringable:
        tensors[t].ring = _ring_rows(tensors[t], trace)
    if streaming:  # hold some bottleneck tensors whole, so each band's rings die with it
        cuts = choose_cuts(qm, stages, tensors, ringable, output, hold_input)
        for t in ringable:
            tensors[t].ring = tensors[t].h
        ringable = ringable - set(cuts)
        drive = [*cuts, output]
        trace = simulate(stages, tensors, qm.input, drive)
        for t in ringable:
            tensors[t].ring = _ring_rows(tensors[t], trace)
    return drive, trace


def choose_cuts(qm, stages, tensors, ringable, output, hold_input: bool = True) -> list[int]:
    """Bottleneck tensors to hold whole: a minimax split of the op chain (dynamic programming).

    A band of ops between two whole tensors keeps all its rings alive at once, so one band over
    the whole network would hold every ring together. Candidates are the tensors that are the
    only thing alive between two ops (block outputs); a band costs its whole input and output
    plus its rings (sized by the full-streaming replay), and the split minimises the largest.
    """
    last_use = {}
    for s in stages:
        for t in s.inputs:
            last_use[t] = s.index
    cands = [qm.input]
    for s in stages:
        live = {
            t for t, last in last_use.items() if last > s.index and tensors[t].producer <= s.index
        }
        if live == {s.output} and s.output in ringable:
            cands.append(s.output)
    cands.append(output)
    pos = {t: (tensors[t].producer if t != qm.input else -1) for t in cands}
    ring_at = sorted((tensors[t].producer, tensors[t].nbytes) for t in ringable)
    whole = {t: tensors[t].h * tensors[t].row_bytes for t in cands}
    if not hold_input:
        whole[qm.input] = 0

    def cost(a: int, b: int) -> int:
        inner = sum(n for p, n in ring_at if pos[a] < p < pos[b])
        return whole[a] + whole[b] + inner

    best = {0: (0, [])}
    for j in range(1, len(cands)):
        options = []
        for i in range(j):
            peak, path = best[i]
            options.append((max(peak, cost(cands[i], cands[j])), [*path, cands[i]]))
        best[j] = min(options, key=lambda o: (o[0], len(o[1])))
    return [t for t in best[len(cands) - 1][1] if t != qm.input]


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def _buffers(stages, tensors, trace: _Trace, inp: int, out: int) -> list[Buffer]:
    bufs = []
    end = trace.ticks
    for t, tp in tensors.items():
        ticks = [tk for tk, _ in trace.writes[t]] + [tk for tk, _ in trace.reads[t]]
        first = -1 if t == inp else min(ticks)
        last = end if t == out else max(ticks, default=first)
        bufs.append(Buffer(tp.name or f"t{t}", _align(tp.nbytes), first, last, tensor=t))
    patch = max((tensors[s.inputs[0]].c * 9 for s in stages if _dw_patch(s)), default=0)
    for s in stages:
        kp = im2col_length(s, tensors[s.inputs[0]].c)
        if kp:
            patch = max(patch, kp * tensors[s.output].w)
    if patch:  # depthwise border patches and im2col rows: one scratch shared by every op
        bufs.append(Buffer("scratch", _align(patch), 0, end, stage=-2))
    for s in stages:
        if s.kind == "pool":  # int32 sums, one per channel
            c = tensors[s.inputs[0]].c
            first, last = trace.stage_ticks[s.index]
            bufs.append(Buffer(f"{s.op.name or s.index}.acc", 4 * c, first, last, stage=s.index))
    return bufs


def im2col_length(s: Stage, cin: int) -> int:
    """Padded patch length of a convolution that runs as im2col + pointwise (0: it does not)."""
    pointwise = s.kernel == (1, 1) and s.stride == (1, 1) and not any(s.padding)
    k = s.kernel[0] * s.kernel[1] * cin
    if s.kind != "conv" or pointwise or k > PATCH_MAX:
        return 0
    return (k + 3) // 4 * 4


def _dw_patch(s: Stage) -> bool:
    return s.kind == "dw" and s.kernel == (3, 3) and s.op.depth_multiplier == 1


def _overlap_deltas(tensors, trace: _Trace, buffers) -> dict[tuple[int, int], int]:
    """delta[(x, y)]: tensor ``y`` (whole, or a ring of rows) may sit at ``offset(x) - delta``
    or lower over the whole tensor ``x``, which is complete before ``y``'s first row: each row
    of ``y`` lands in slot ``row % ring`` and must end at or below the rows of ``x`` that no op
    reads at that tick or later. A negative delta puts ``y`` inside ``x``."""
    whole = [b for b in buffers if b.tensor >= 0 and tensors[b.tensor].whole]
    deltas = {}
    for bx in whole:
        x = tensors[bx.tensor]
        x_done = max((tk for tk, _ in trace.writes[x.id]), default=-1)
        lo = None
        for by in buffers:
            y = tensors[by.tensor] if by.tensor >= 0 else None
            ws = trace.writes[y.id] if y else []
            if y is None or y.id == x.id or not ws or ws[0][0] <= x_done or by.first > bx.last:
                continue
            if lo is None:
                lo = _suffix_min_reader(trace.reads[x.id], trace.ticks, x.h)
            d = max((r % y.ring + 1) * y.row_bytes - lo[tk] * x.row_bytes for tk, r in ws)
            deltas[(bx.tensor, by.tensor)] = _align(d)
    return deltas


def _whole_only(tensors, deltas: dict[tuple[int, int], int]) -> dict[tuple[int, int], int]:
    """The overlaps the planner allowed before rings could overlap (whole tensors over whole
    tensors, never inside one), also tried so that no arena gets larger than it was."""
    return {k: max(d, 0) for k, d in deltas.items() if tensors[k[1]].whole}


def _place(buffers: list[Buffer], delta_sets: list[dict[tuple[int, int], int]]) -> int:
    """Smallest arena (to ``ALIGN``) for which a greedy placement fits; sets offsets.

    Buffers are placed in order of first use, each at an overlap with a dying input where
    allowed, else at the highest (or, second try, the lowest) free offset; a third try places
    the largest buffers first (TFLite's greedy-by-size), a fourth places the tensors by first
    use, highest first, and the scratch buffers after them (so that the rows written over a
    dying input, not the scratch, take the room next to it). Each try runs with each set of
    allowed overlaps; the arena size is found by bisection for each, the smallest is kept."""
    by_time = sorted(range(len(buffers)), key=lambda i: (buffers[i].first, -buffers[i].size))
    by_size = sorted(range(len(buffers)), key=lambda i: (-buffers[i].size, buffers[i].first))
    # tensors first, scratch last: it leaves the top of a dying input to the rows written there
    tensors_first = sorted(by_time, key=lambda i: buffers[i].tensor < 0)
    best = None
    tries = ((by_time, True, False), (by_time, False, False), (by_size, False, False))
    for deltas in delta_sets:
        for order, high, most in (*tries, (tensors_first, True, True)):
            lo = max(b.size for b in buffers)
            hi = sum(b.size for b in buffers) + ALIGN * len(buffers)
            while lo <= hi:
                mid = _align((lo + hi) // 2)
                offs = _try_place(buffers, order, deltas, mid, high, most)
                if offs is None:
                    lo = mid + ALIGN
                else:
                    hi = mid - ALIGN
                    if best is None or mid < best[0]:
                        best = (mid, offs)
    if best is None:  # pragma: no cover - the sum always fits
        raise MobilenetsError("memory planner failed")
    for b, off in zip(buffers, best[1], strict=True):
        b.offset = off
    return max(b.offset + b.size for b in buffers)


def _try_place(buffers, order, deltas, arena: int, high: bool = True, most: bool = False):
    """Offsets of ``buffers`` placed in ``order`` in ``arena`` bytes, or None if one does not
    fit. Each takes the first free candidate offset (highest first when ``high``), or the
    first one overlapping a dying whole tensor where allowed; with ``most``, the one that
    overlaps it by the most bytes (the lowest of those)."""
    offs = [-1] * len(buffers)
    placed: list[int] = []
    for i in order:
        b = buffers[i]
        live = [j for j in placed if buffers[j].last >= b.first and buffers[j].first <= b.last]
        cands = {0, arena - b.size}
        over = {}
        for j in live:
            cands.add(offs[j] + buffers[j].size)
            cands.add(offs[j] - b.size)
            key = (buffers[j].tensor, b.tensor)
            if key in deltas and b.tensor >= 0:
                over[j] = deltas[key]
                cands.add(offs[j] - deltas[key])
        best = None
        for c in sorted(cands, reverse=high):
            if (
                c < 0
                or c + b.size > arena
                or c % ALIGN
                or not _fits(buffers, offs, live, over, b, c)
            ):
                continue
            shared = sum(
                max(0, min(c + b.size, offs[j] + buffers[j].size) - max(c, offs[j])) for j in over
            )
            score = (shared, -c if shared else 0) if most else (shared > 0,)
            if best is None or score > best[1]:
                best = (c, score)
            if shared and not most:
                break
        if best is None:
            return None
        offs[i] = best[0]
        placed.append(i)
    return offs


def _fits(buffers, offs, live, over, b: Buffer, c: int) -> bool:
    """``b`` at ``c`` is disjoint from every live buffer, or over one it may overlap."""
    for j in live:
        oj, sj = offs[j], buffers[j].size
        disjoint = c + b.size <= oj or c >= oj + sj
        if not disjoint and not (j in over and c <= oj - over[j]):
            return False
    return True


def _peak(plan: Plan) -> None:
    """Live bytes per tick; the peak tick, the op running then, and what is live."""
    ticks = plan.ticks
    live = [0] * (ticks + 2)
    for b in plan.buffers:
        lo, hi = max(b.first, 0), min(b.last, ticks)
        for tk in range(lo, hi + 1):
            live[tk] += b.size
    plan.stage_live_bytes = [max(live[a : b + 1]) if a >= 0 else 0 for a, b in plan.stage_ticks]
    peak_tick = max(range(ticks), key=lambda tk: live[tk]) if ticks else 0
    plan.peak_live_bytes = live[peak_tick]
    plan.peak_stage = next(
        (i for i, (a, b) in enumerate(plan.stage_ticks) if a <= peak_tick <= b), 0
    )
    plan.peak_buffers = sorted(
        ((b.name, b.size) for b in plan.buffers if b.first <= peak_tick <= b.last),
        key=lambda nb: -nb[1],
    )


def naive_peak_bytes(qm: QuantizedModel) -> int:
    """The tensors-only peak: each op's whole inputs plus its whole output, nothing overlapped
    and no scratch. Not an arena (``Plan.layer_by_layer_bytes`` is the layer-by-layer one)."""
    peak = 0
    for op in qm.ops:
        if op.kind == "reshape":
            continue
        peak = max(peak, sum(qm.tensors[t].nbytes for t in (*op.inputs, op.output)))
    return peak


def plan_model(model: Any, *, streaming: bool = True) -> Plan:
    """The int8 memory plan of a (float) mobilenets model: the graph's shapes and ops are all
    the planner needs, so no calibration is done (the int8 graph has the same tensors)."""
    from ..fold import fold_bn
    from .lower import lower

    return plan_memory(lower(fold_bn(model.eval())).graph, streaming=streaming)
