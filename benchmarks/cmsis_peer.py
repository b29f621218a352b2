"""The CMSIS-NN peer of ``benchmarks/mcu.py --peer cmsis-nn`` (a benchmark peer only).

The one int8 graph (``QuantizedModel``) is run layer by layer with CMSIS-NN's wrappers
(``arm_convolve_wrapper_s8``, ``arm_depthwise_conv_wrapper_s8``, ``arm_elementwise_add_s8``,
``arm_avgpool_s8``, ``arm_pad_s8``), as TFLite Micro calls them: multipliers from the float32
scales (``QuantizeMultiplier`` in double), the same fused clamps, RESHAPE/SQUEEZE in place.
Activations and the scratch that ``*_get_buffer_size`` asks for (computed on this host with
CMSIS-NN's ``_dsp``/``_mve`` variants) are placed in one arena by TFLite Micro's greedy
planner (largest first, lowest offset free during the buffer's lifetime, 16-byte aligned);
``peer_ram_bytes`` is that arena (TFLite Micro's persistent structs, the multipliers it keeps
in RAM, are not counted).

Both sides are built with the same flags and compiler, linked with the same startup, linker
script and ``main_mcu.c`` driver that codegen writes (SysTick read around one whole
``mn_infer``, input copy and output copy included), and run under the same QEMU with
``-icount shift=0`` (one SysTick tick per 40 instructions). Instructions are not cycles.

The peer's sources are read from ``../shared/peers/cmsis-nn`` (nothing of it is copied into
``src/``); when that folder or a tool is missing, :func:`skip_reason` says why.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mobilenets.micro.arith import ADD_LEFT_SHIFT, add_multipliers, conv_multipliers

ROOT = Path(__file__).resolve().parents[1]
PEER = ROOT.parent / "shared" / "peers" / "cmsis-nn"
CORES = {  # core: (QEMU machine, gcc flags, clang flags)
    "cortex-m4": ("mps2-an386", "-mcpu=cortex-m4 -mfpu=fpv4-sp-d16", "-mfpu=fpv4-sp-d16"),
    "cortex-m7": ("mps2-an500", "-mcpu=cortex-m7 -mfpu=fpv5-d16", "-mfpu=fpv5-d16"),
    "cortex-m55": ("mps3-an547", "-mcpu=cortex-m55", ""),
}
COMPILERS = ("gcc", "clang")
WARN = "-std=c99 -Wall -Wextra -Werror -Wpedantic -Wconversion -Wshadow -Wcast-align".split()
LIB_DIRS = (
    "ConvolutionFunctions",
    "NNSupportFunctions",
    "BasicMathFunctions",
    "PoolingFunctions",
    "PadFunctions",
    "TransposeFunctions",
)
LIB_KEEP = re.compile(r"s8|transpose|mat_mult|q7_to_q15|nntables\.c|vec_mat")
LIB_DROP = re.compile(
    r"_f16|_f32|_s4|lstm|transpose_conv|elementwise_mul|maximum|minimum|max_pool|svd"
)
ALIGN = 16


class Unsupported(Exception):
    """An op the peer does not run (its row is skipped, with this reason)."""


def skip_reason(compiler: str = "gcc") -> str | None:
    """Why the peer cannot run here, or None."""
    if not PEER.is_dir():
        return f"CMSIS-NN peer folder {PEER} missing"
    need = ["arm-none-eabi-gcc", "qemu-system-arm", "gcc"] + (
        ["clang"] if compiler == "clang" else []
    )
    missing = [t for t in need if shutil.which(t) is None]
    return f"not installed: {', '.join(missing)}" if missing else None


def cflags(core: str, compiler: str) -> list[str]:
    """The compile command for a core (Debian's clang targets arm-none-eabi with newlib)."""
    _, gcc_cpu, clang_fpu = CORES[core]
    if compiler == "gcc":
        return ["arm-none-eabi-gcc", *gcc_cpu.split(), "-mthumb", "-mfloat-abi=hard", "-O2"]
    return [
        "clang",
        "--target=arm-none-eabi",
        f"-mcpu={core}",
        "-mthumb",
        "-mfloat-abi=hard",
        *clang_fpu.split(),
        "-O2",
        "-isystem",
        "/usr/lib/arm-none-eabi/include",
    ]


def _run(cmd: list[str], cwd: Path | None = None, timeout: int = 900) -> str:
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])} ... failed:\n{r.stderr[-3000:]}")
    return r.stdout


def peer_library(core: str, compiler: str) -> Path:
    """CMSIS-NN's int8 sources as one archive for this core and compiler (cached)."""
    srcs = sorted(
        p
        for d in LIB_DIRS
        for p in (PEER / "Source" / d).glob("*.c")
        if LIB_KEEP.search(p.name) and not LIB_DROP.search(p.name)
    )
    key = hashlib.sha1(" ".join(cflags(core, compiler) + [str(p) for p in srcs]).encode())
    cache = Path(tempfile.gettempdir()) / "mobilenets-cmsis-nn" / key.hexdigest()[:16]
    lib = cache / "libcmsisnn.a"
    if lib.exists():
        return lib
    cache.mkdir(parents=True, exist_ok=True)
    cc = cflags(core, compiler) + ["-ffunction-sections", "-fdata-sections", f"-I{PEER}/Include"]
    objs = []
    for src in srcs:
        obj = cache / (src.stem + ".o")
        _run([*cc, "-c", str(src), "-o", str(obj)])
        objs.append(str(obj))
    _run(["arm-none-eabi-ar", "rcs", str(lib) + ".tmp", *objs])
    Path(str(lib) + ".tmp").rename(lib)
    return lib


@dataclass
class Layer:
    """One CMSIS-NN call: its C parts, the buffers it reads and writes, its scratch."""

    decl: str  # file-scope constants (weights, parameters)
    call: str  # the call; @IN0@, @IN1@, @OUT@, @CTX@ are replaced by arena addresses
    size_expr: str  # the scratch size as a C expression (host), @SFX@ _dsp or _mve
    inputs: tuple[int, ...]
    output: int
    scratch: int = 0
    params: str = ""  # the parameter structs, shared by the host program and the target
    name: str = field(default="")


def _arr(ctype: str, name: str, values) -> str:
    vals = ",".join(str(int(v)) for v in np.asarray(values).reshape(-1).tolist())
    return f"static const {ctype} {name}[] __attribute__((aligned(4))) = {{{vals}}};\n"


def _dims(name: str, n: int, h: int, w: int, c: int) -> str:
    return f"static const cmsis_nn_dims {name} = {{{n}, {h}, {w}, {c}}};\n"


def _nhwc(shape) -> tuple[int, int, int, int]:
    s = tuple(int(v) for v in shape)
    return (1, 1, 1, s[-1]) if len(s) == 2 else s  # type: ignore[return-value]


def _conv_common(qm, i: int, op, dw: bool) -> tuple[str, str, tuple]:
    """Weights, bias, per-channel multipliers and the four dims of a (depthwise) conv."""
    tin, tout = qm.tensors[op.inputs[0]], qm.tensors[op.output]
    _, h, w, c = _nhwc(tin.shape)
    _, oh, ow, oc = _nhwc(tout.shape)
    wt = np.asarray(op.weights)
    kh, kw = int(wt.shape[1]), int(wt.shape[2])
    bias = op.bias if op.bias is not None else np.zeros(oc, np.int32)
    m0, sh = conv_multipliers(tin.scale, op.weight_scales, tout.scale)
    decl = _arr("int8_t", f"w{i}", wt) + _arr("int32_t", f"b{i}", bias)
    decl += _arr("int32_t", f"m{i}", m0) + _arr("int32_t", f"s{i}", sh)
    decl += f"static const cmsis_nn_per_channel_quant_params q{i} = {{(int32_t *)m{i}, (int32_t *)s{i}}};\n"
    params = _dims(f"di{i}", 1, h, w, c) + _dims(f"do{i}", 1, oh, ow, oc)
    params += _dims(f"df{i}", 1, kh, kw, oc) if dw else _dims(f"df{i}", oc, kh, kw, c)
    params += _dims(f"db{i}", 1, 1, 1, oc)
    sy, sx = op.stride
    pt, _, pl, _ = op.padding
    geo = f"{{{sx}, {sy}}}, {{{pl}, {pt}}}, {{1, 1}}, {{{op.act_min}, {op.act_max}}}"
    return decl, params, (-tin.zero_point, tout.zero_point, geo, oc // c)


def _conv(qm, i: int, op) -> Layer:
    decl, params, (zin, zout, geo, _) = _conv_common(qm, i, op, dw=False)
    params += f"static const cmsis_nn_conv_params cp{i} = {{{zin}, {zout}, {geo}}};\n"
    args = f"&cp{i}, &q{i}, &di{i}, @IN0@, &df{i}, w{i}, &db{i}, b{i}, &do{i}, @OUT@"
    return Layer(
        decl,
        f"arm_convolve_wrapper_s8(@CTX@, {args})",
        f"arm_convolve_wrapper_s8_get_buffer_size@SFX@(&cp{i}, &di{i}, &df{i}, &do{i})",
        (op.inputs[0],),
        op.output,
        params=params,
    )


def _dwconv(qm, i: int, op) -> Layer:
    decl, params, (zin, zout, geo, mult) = _conv_common(qm, i, op, dw=True)
    params += f"static const cmsis_nn_dw_conv_params cp{i} = {{{zin}, {zout}, {mult}, {geo}}};\n"
    args = f"&cp{i}, &q{i}, &di{i}, @IN0@, &df{i}, w{i}, &db{i}, b{i}, &do{i}, @OUT@"
    return Layer(
        decl,
        f"arm_depthwise_conv_wrapper_s8(@CTX@, {args})",
        f"arm_depthwise_conv_wrapper_s8_get_buffer_size@SFX@(&cp{i}, &di{i}, &df{i}, &do{i})",
        (op.inputs[0],),
        op.output,
        params=params,
    )


def _add(qm, i: int, op) -> Layer:
    t1, t2, to = (qm.tensors[k] for k in (*op.inputs, op.output))
    m1, e1, m2, e2, mo, eo = add_multipliers(t1.scale, t2.scale, to.scale)
    n = int(np.prod(to.shape))
    args = (
        f"@IN0@, @IN1@, {-t1.zero_point}, {m1}, {e1}, {-t2.zero_point}, {m2}, {e2}, "
        f"{ADD_LEFT_SHIFT}, @OUT@, {to.zero_point}, {mo}, {eo}, {op.act_min}, {op.act_max}, {n}"
    )
    return Layer("", f"arm_elementwise_add_s8({args})", "0", tuple(op.inputs), op.output)


def _avgpool(qm, i: int, op) -> Layer:
    tin, tout = qm.tensors[op.inputs[0]], qm.tensors[op.output]
    _, h, w, c = _nhwc(tin.shape)
    _, oh, ow, _ = _nhwc(tout.shape)
    kh, kw = op.kernel
    sy, sx = op.stride
    pt, _, pl, _ = op.padding
    params = _dims(f"di{i}", 1, h, w, c) + _dims(f"do{i}", 1, oh, ow, c)
    params += _dims(f"df{i}", 1, kh, kw, 1)
    params += (
        f"static const cmsis_nn_pool_params cp{i} = "
        f"{{{{{sx}, {sy}}}, {{{pl}, {pt}}}, {{{op.act_min}, {op.act_max}}}}};\n"
    )
    return Layer(
        "",
        f"arm_avgpool_s8(@CTX@, &cp{i}, &di{i}, @IN0@, &df{i}, &do{i}, @OUT@)",
        f"arm_avgpool_s8_get_buffer_size@SFX@({ow}, {c})",
        (op.inputs[0],),
        op.output,
        params=params,
    )


def _pad(qm, i: int, op) -> Layer:
    tin = qm.tensors[op.inputs[0]]
    _, h, w, c = _nhwc(tin.shape)
    pt, pb, pl, pr = op.padding
    value = tin.zero_point if op.pad_value is None else op.pad_value
    params = _dims(f"di{i}", 1, h, w, c) + _dims(f"dp{i}", 0, pt, pl, 0)
    params += _dims(f"dq{i}", 0, pb, pr, 0)
    call = f"arm_pad_s8(@IN0@, @OUT@, {value}, &di{i}, &dp{i}, &dq{i})"
    return Layer("", call, "0", (op.inputs[0],), op.output, params=params)


EMIT = {
    "conv2d": _conv,
    "depthwise_conv2d": _dwconv,
    "add": _add,
    "avg_pool2d": _avgpool,
    "pad": _pad,
    "padv2": _pad,
}
IN_PLACE = ("reshape", "squeeze")


def layers(qm) -> tuple[list[Layer], dict[int, int]]:
    """The CMSIS-NN calls of the graph and the in-place aliases (RESHAPE, SQUEEZE)."""
    out, alias = [], {}
    for i, op in enumerate(qm.ops):
        if op.kind in IN_PLACE:
            alias[op.output] = alias.get(op.inputs[0], op.inputs[0])
            continue
        if op.kind not in EMIT:
            raise Unsupported(f"op {op.kind} not run by the CMSIS-NN peer")
        lay = EMIT[op.kind](qm, i, op)
        lay.inputs = tuple(alias.get(t, t) for t in lay.inputs)
        lay.name = f"{i}:{op.kind}"
        out.append(lay)
    return out, alias


def scratch_sizes(lays: list[Layer], core: str, work: Path) -> list[int]:
    """Each layer's scratch bytes, from CMSIS-NN's own ``*_get_buffer_size_dsp/_mve`` built
    for this host (the ``_dsp``/``_mve`` variants are CMSIS-NN's host entry points)."""
    sfx = "_mve" if core == "cortex-m55" else "_dsp"
    src = ['#include <stdio.h>\n#include "arm_nnfunctions.h"\n']
    src += [lay.params for lay in lays]
    src.append("int main(void)\n{\n")
    src += [
        f'    printf("%ld\\n", (long)({lay.size_expr.replace("@SFX@", sfx)}));\n' for lay in lays
    ]
    src.append("    return 0;\n}\n")
    (work / "sizes.c").write_text("".join(src))
    files = [
        PEER / "Source" / "ConvolutionFunctions" / "arm_convolve_get_buffer_sizes_s8.c",
        PEER / "Source" / "ConvolutionFunctions" / "arm_depthwise_conv_get_buffer_sizes_s8.c",
        PEER / "Source" / "PoolingFunctions" / "arm_avgpool_get_buffer_sizes_s8.c",
    ]
    exe = work / "sizes"
    _run(
        ["gcc", "-O1", f"-I{PEER}/Include", str(work / "sizes.c"), *map(str, files), "-o", str(exe)]
    )
    return [int(v) for v in _run([str(exe)]).split()]


def _up(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def greedy_plan(buffers: list[tuple[int, int, int]]) -> tuple[list[int], int]:
    """TFLite Micro's GreedyMemoryPlanner: (size, first, last) buffers, largest first, each at
    the lowest aligned offset that no buffer alive at the same time overlaps."""
    order = sorted(range(len(buffers)), key=lambda k: -buffers[k][0])
    offsets: list[int] = [0] * len(buffers)
    placed: list[int] = []
    for k in order:
        size, first, last = buffers[k]
        live = sorted(
            (offsets[j], offsets[j] + _up(buffers[j][0]))
            for j in placed
            if not (buffers[j][2] < first or last < buffers[j][1])
        )
        at = 0
        for lo, hi in live:
            if at + _up(size) <= lo:
                break
            at = max(at, hi)
        offsets[k] = at
        placed.append(k)
    total = max((offsets[k] + _up(buffers[k][0]) for k in range(len(buffers))), default=0)
    return offsets, total


def plan(qm, lays: list[Layer], alias: dict[int, int]) -> tuple[dict, dict, int]:
    """Arena offsets of the activations and of each layer's scratch, and the arena size."""
    out = alias.get(qm.output, qm.output)
    life: dict[int, list[int]] = {qm.input: [0, 0]}
    for n, lay in enumerate(lays):
        for t in lay.inputs:
            life.setdefault(t, [n, n])[1] = n
        life.setdefault(lay.output, [n, n])[1] = n
    life[out][1] = len(lays)
    tensors = list(life)
    bufs = [(qm.tensors[t].nbytes, *life[t]) for t in tensors]
    scratch = [n for n, lay in enumerate(lays) if lay.scratch > 0]
    bufs += [(lays[n].scratch, n, n) for n in scratch]
    offsets, total = greedy_plan(bufs)
    t_off = dict(zip(tensors, offsets[: len(tensors)], strict=True))
    s_off = dict(zip(scratch, offsets[len(tensors) :], strict=True))
    return t_off, s_off, total


def peer_source(
    qm, lays: list[Layer], alias: dict[int, int], profile: bool = False
) -> tuple[str, int]:
    """The peer's ``model.c`` (``mn_infer`` as the driver calls it) and its arena bytes."""
    t_off, s_off, total = plan(qm, lays, alias)
    n_in, n_out = qm.input_tensor.nbytes, qm.output_tensor.nbytes
    out_t = alias.get(qm.output, qm.output)
    src = ['#include <string.h>\n#include "arm_nnfunctions.h"\n#include "model.h"\n']
    src.append(f"static int8_t arena[{max(total, 16)}] __attribute__((aligned(16)));\n")
    if profile:
        src.append(PROF_C)
    src += [lay.decl + lay.params for lay in lays]
    src.append("int mn_infer(const int8_t *input, int8_t *output)\n{\n")
    src.append(f"    memcpy(arena + {t_off[qm.input]}, input, {n_in});\n")
    for n, lay in enumerate(lays):
        ctx = f"{{arena + {s_off[n]}, {lay.scratch}}}" if n in s_off else "{0, 0}"
        call = lay.call.replace("@OUT@", f"arena + {t_off[lay.output]}")
        for k, t in enumerate(lay.inputs):
            call = call.replace(f"@IN{k}@", f"arena + {t_off[t]}")
        call = call.replace("@CTX@", f"&ctx{n}")
        src.append(f"    {{ /* {lay.name} */\n        const cmsis_nn_context ctx{n} = {ctx};\n")
        src.append(f"        (void)ctx{n};\n" + ("        MN_PROF_START();\n" if profile else ""))
        src.append(f"        if ({call} != ARM_CMSIS_NN_SUCCESS) return 1;\n")
        src.append(
            f"        MN_PROF_STOP({_peer_key(qm, lay)});\n    }}\n" if profile else "    }\n"
        )
    src.append(f"    memcpy(output, arena + {t_off[out_t]}, {n_out});\n    return 0;\n}}\n")
    header = (
        "#include <stdint.h>\n"
        f"#define MN_INPUT_BYTES {n_in}\n#define MN_OUTPUT_BYTES {n_out}\n"
        "int mn_infer(const int8_t *input, int8_t *output);\n"
    )
    return "".join(src), header, total  # type: ignore[return-value]


DRIVER = ("main_mcu.c", "mn_inputs.c", "startup.c")


def build(
    folder: Path, lib_srcs: list[str], core: str, compiler: str, extra: list[str], libs=()
) -> Path:
    """Library sources with ``compiler``, the codegen driver with arm-none-eabi-gcc, linked by
    arm-none-eabi-gcc with the board's linker script; the ELF path."""
    machine = CORES[core][0]
    cc = cflags(core, compiler) + ["-ffunction-sections", "-fdata-sections"]
    objs = []
    for src in lib_srcs:
        obj = folder / f"{Path(src).stem}-{core}-{compiler}.o"
        _run([*cc, *extra, "-c", src, "-o", str(obj)], cwd=folder)
        objs.append(str(obj))
    link = cflags(core, "gcc") + ["-ffunction-sections", "-fdata-sections", "-nostartfiles"]
    elf = folder / f"{core}-{compiler}.elf"
    link += ["--specs=rdimon.specs", "-T", f"{machine}.ld", "-Wl,--gc-sections", *objs]
    _run([*link, *DRIVER, *map(str, libs), "-o", str(elf)], cwd=folder)
    return elf


def qemu(elf: Path, core: str) -> tuple[int, list[int], str]:
    """Instructions of the first inference (40 per SysTick tick), its output, and stdout."""
    cmd = ["qemu-system-arm", "-machine", CORES[core][0], "-cpu", core, "-nographic"]
    cmd += ["-monitor", "none", "-serial", "none", "-semihosting-config"]
    cmd += ["enable=on,target=native", "-icount", "shift=0", "-kernel", str(elf)]
    text = _run(cmd, timeout=600)
    ticks = re.search(r"^ticks (\d+)$", text, re.M)
    out = re.search(r"^out 0:(.*)$", text, re.M)
    if not ticks or not out:
        raise RuntimeError(f"{elf.name}: no ticks/out line:\n{text[-1000:]}")
    return 40 * int(ticks.group(1)), [int(v) for v in out.group(1).split()], text


@dataclass
class Peer:
    """The peer's folder for one model: sources written once, built per core and compiler."""

    folder: Path
    arena: dict[str, int]  # core -> arena bytes (scratch differs between DSP and MVE)

    @classmethod
    def write(cls, qm, ours: Path, work: Path) -> Peer:
        folder = work / "peer"
        folder.mkdir(parents=True, exist_ok=True)
        for f in (*DRIVER, "mps2-an386.ld", "mps2-an500.ld", "mps3-an547.ld"):
            shutil.copy(ours / f, folder / f)
        return cls(folder, {})

    def elf(self, qm, core: str, compiler: str, profile: bool = False) -> Path:
        lays, alias = layers(qm)
        for lay, size in zip(lays, scratch_sizes(lays, core, self.folder), strict=True):
            lay.scratch = size
        src, header, total = peer_source(qm, lays, alias, profile)
        self.arena[core] = total
        (self.folder / "model.c").write_text(src)
        (self.folder / "model.h").write_text(header)
        lib = peer_library(core, compiler)
        return build(self.folder, ["model.c"], core, compiler, [f"-I{PEER}/Include"], [lib])


def ours_elf(ours: Path, core: str, compiler: str) -> Path:
    """The generated library (model.c, mn_engine.c) with the Makefile's strict warnings."""
    return build(ours, ["model.c", "mn_engine.c"], core, compiler, WARN)


def first_difference(a: list[int], b: list[int]) -> str:
    diff = [k for k, (u, v) in enumerate(zip(a, b, strict=False)) if u != v]
    if len(a) != len(b):
        return f"lengths {len(a)} != {len(b)}"
    if not diff:
        return ""
    k = diff[0]
    return f"{len(diff)} of {len(a)} outputs differ, first at {k}: ours {a[k]}, peer {b[k]}"


def compare(key: str, qm, ours: Path, arena: int, cores, compilers):
    """One JSON row per core and compiler: ours against CMSIS-NN, same method both sides."""
    peer = Peer.write(qm, ours, ours.parent)
    for core in cores:
        for compiler in compilers:
            row = {"model": key, "core": core, "compiler": compiler}
            why = skip_reason(compiler)
            if why:
                yield {**row, "skipped": why}
                continue
            try:
                ours_n, ours_out, _ = qemu(ours_elf(ours, core, compiler), core)
                peer_n, peer_out, _ = qemu(peer.elf(qm, core, compiler), core)
            except Unsupported as e:
                yield {**row, "skipped": str(e)}
                return
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                yield {**row, "error": str(e)[-600:]}
                continue
            yield {
                **row,
                "ours_instructions": ours_n,
                "peer_instructions": peer_n,
                "ratio": round(ours_n / peer_n, 4),
                "ours_ram_bytes": arena,
                "peer_ram_bytes": peer.arena[core],
                "bit_exact": ours_out == peer_out,
                "difference": first_difference(ours_out, peer_out),
                "distinct_outputs": len(set(ours_out)),  # 1: the comparison shows little
                "note": "instructions (QEMU -icount shift=0, SysTick), not cycles",
            }


def run_model(key: str, qm, x: np.ndarray, cores, compilers):
    """Generate our C for ``qm`` (input ``x[:1]``), then :func:`compare` on every core."""
    from mobilenets import generate_c

    why = skip_reason()
    if why:
        yield {"model": key, "skipped": why}
        return
    work = Path(tempfile.mkdtemp(prefix=f"peer-{key}-"))
    try:
        target = "cortex-m55" if cores == ("cortex-m55",) else "cortex-m7"
        rep = generate_c(qm, work / "lib", target=target, test_inputs=x[:1])
        yield from compare(key, qm, work / "lib", rep["arena_bytes"], cores, compilers)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ---- per-op tables (``python benchmarks/cmsis_peer.py MODEL CORE COMPILER``): instructions
# inside each kernel call, summed by kind; SysTick read around each call on both sides, in
# instrumented copies of the sources (the measured builds above carry no instrumentation).
PROF_C = """#include <stdint.h>
extern volatile uint32_t mn_systick_wraps;
uint64_t mn_prof_ticks[32];
static uint32_t mn_prof_w, mn_prof_c;
#define MN_PROF_CVR (*(volatile uint32_t *)0xE000E018u)
#define MN_PROF_START() (mn_prof_w = mn_systick_wraps, mn_prof_c = MN_PROF_CVR)
#define MN_PROF_STOP(k) (mn_prof_ticks[k] += (uint64_t)(mn_systick_wraps - mn_prof_w) * 0x1000000u \\
                         + mn_prof_c - MN_PROF_CVR)
"""
PROF_MAIN = """    {
        extern uint64_t mn_prof_ticks[32];
        int k;
        for (k = 0; k < 32; ++k)
            if (mn_prof_ticks[k]) printf("prof %d %llu\\n", k, (unsigned long long)mn_prof_ticks[k]);
    }
"""
PEER_KINDS = {"conv2d": 0, "depthwise_conv2d": 2, "add": 4, "avg_pool2d": 6, "pad": 20}
KIND_NAMES = {0: "conv 1x1", 1: "conv kxk (stem)", 2: "depthwise", 4: "add", 6: "avg pool"}
KIND_NAMES.update({8: "fc", 18: "pool2d", 20: "pad"})


def _instrument_ours(folder: Path) -> None:
    eng = (folder / "mn_engine.c").read_text()
    head = "static void mn_compute(const mn_net *net, uint8_t *arena, const mn_stage *s, int r)\n"
    eng = eng.replace(head, head.replace("mn_compute", "mn_compute_inner"), 1)
    wrap = head + "{\n    MN_PROF_START();\n    mn_compute_inner(net, arena, s, r);\n"
    wrap += "    MN_PROF_STOP(s->kind * 2 + (s->kind == MN_CONV && s->kh != 1));\n}\n"
    at = eng.index("int mn_run(")
    eng = eng[:at] + wrap + eng[at:]
    (folder / "mn_engine.c").write_text(PROF_C + eng)
    _patch_main(folder)


def _patch_main(folder: Path) -> None:
    main = (folder / "main_mcu.c").read_text()
    anchor = '    printf("ticks %llu\\n"'
    (folder / "main_mcu.c").write_text(main.replace(anchor, PROF_MAIN + anchor, 1))


def _by_kind(text: str) -> dict[str, int]:
    rows = re.findall(r"^prof (\d+) (\d+)$", text, re.M)
    return {KIND_NAMES.get(int(k), k): 40 * int(t) for k, t in rows}


def _peer_key(qm, lay: Layer) -> int:
    op = qm.ops[int(lay.name.split(":")[0])]
    key = PEER_KINDS.get(op.kind, 30)
    return key + (op.kind == "conv2d" and np.asarray(op.weights).shape[1] != 1)


def per_op(key: str, qm, x: np.ndarray, core: str, compiler: str) -> dict:
    """Instructions by op kind, ours and the peer's (instrumented builds)."""
    from mobilenets import generate_c

    work = Path(tempfile.mkdtemp(prefix=f"perop-{key}-"))
    try:
        generate_c(qm, work / "lib", target=core, test_inputs=x[:1])
        peer = Peer.write(qm, work / "lib", work)
        _instrument_ours(work / "lib")
        ours = _by_kind(qemu(ours_elf(work / "lib", core, compiler), core)[2])
        _patch_main(peer.folder)
        theirs = _by_kind(qemu(peer.elf(qm, core, compiler, profile=True), core)[2])
        kinds = sorted(set(ours) | set(theirs), key=lambda k: -theirs.get(k, 0))
        return {k: {"ours": ours.get(k, 0), "peer": theirs.get(k, 0)} for k in kinds}
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    import json
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from mcu import MODELS, random_model

    name, core_, compiler_ = sys.argv[1:4]
    spec = next(m for m in MODELS if m[0] == name)
    _, qm_, x_ = random_model(*spec[1:4])
    print(
        json.dumps(
            {
                "model": name,
                "core": core_,
                "compiler": compiler_,
                "per_op": per_op(name, qm_, x_, core_, compiler_),
            }
        )
    )
