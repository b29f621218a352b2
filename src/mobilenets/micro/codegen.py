"""C code generation: a :class:`QuantizedModel` becomes a self-contained C99 library.

The output folder holds ``model.h`` (``mn_infer``, shapes, quantization, class names,
``MN_ARENA_BYTES``), ``model.c`` (const weights, per-channel multipliers derived from the float32
scales exactly as TFLite Micro's Prepare does, the tensor and op tables, one static arena), the
engine (``mn_engine.c/.h``: the project's own row kernels and scheduler), drivers for the host and
for Cortex-M under QEMU, a Makefile, ``plan.json``/``plan.png`` and a README with the memory
report. The runtime does no malloc and no floating point, except in a file's float islands
(``float_add``: litert-torch's float32 residual ADDs, run with TFLite Micro's float32 operations;
its DEQUANTIZE values are tables computed here, so no multiply there can be fused into an FMA).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import replace_folder
from ..errors import UsageError
from .arith import (
    ADD_LEFT_SHIFT,
    add_multipliers,
    conv_multipliers,
    dequantize_table,
    hard_swish_params,
    logistic_params,
    mean_multiplier,
    mul_multiplier,
    multiply_by_quantized_multiplier,
    softmax_params,
)
from .graph import Op, QuantizedModel
from .ops import C_CONSTANTS, MAX_KERNEL, STAGE_KINDS, c_enum
from .planner import (
    Plan,
    Stage,
    UnsupportedModelError,
    im2col_length,
    plan_memory,
)
from .validate import GraphError, check_model

TARGETS = ("host", "cortex-m4", "cortex-m7", "cortex-m55")
MARKER = ".mobilenets-codegen"
ENGINE_FILES = ("mn_engine.h", "mn_engine.c", "startup.c")  # copied as they are
# right shifts up to this fold out_zp * 2^shift into the rounding constant: |x| < 2^30 and
# 128 * 2^22 + 2^21 < 2^30 keep the sum inside int32 (MN_FAST_ZP in mn_engine.h)
MAX_ZP_FOLD_SHIFT = 22
DRIVER_FILES = ("main_host.c", "main_mcu.c")  # @p@/@P@ become the prefix
DEFAULT_PREFIX = "mn_"
# what the generated Makefile builds (``make clean`` removes them): may be replaced too
BUILD_DIRS = ("build/cortex-m4", "build/cortex-m7", "build/cortex-m55")
BUILD_OUTPUTS = re.compile(r"mn_host|mn_cortex-m\d+\.elf|build/cortex-m\d+/[\w.-]+\.(o|su)")
# QEMU boards: where each keeps the 16 MB RAM that holds the weights (`info mtree`)
BOARD_WEIGHTS = {"mps2-an386": "0x21000000", "mps2-an500": "0x60000000"}
OWN_LD = ("mps3-an547.ld",)  # boards with their own linker script (Cortex-M55)


def _template(name: str) -> str:
    return resources.files("mobilenets.micro").joinpath("templates", name).read_text()


def engine_file(name: str) -> str:
    """An engine file, with the registry's kernel ids and limits filled in (``mn_engine.h``)."""
    return _template(name).replace("@MN_OPS@", c_enum())


def _c_array(ctype: str, name: str, values: np.ndarray, align: str = "") -> str:
    flat = np.asarray(values).reshape(-1)
    if flat.size == 0:
        flat = np.zeros(1, dtype=np.int64)
    body = ",".join(map(str, flat.tolist()))
    return f"static const {ctype} {name}[{flat.size}]{align} = {{{body}}};\n"


def _f32(x: float) -> float:
    return float(np.float32(x))


def dw_weight_order(w: np.ndarray) -> np.ndarray:
    """Depthwise weights (1, KH, KW, C) in the engine's order: groups of 4 channels, each with
    its taps as 4 bytes (one SIMD load per tap), then the last C % 4 channels tap-major."""
    taps = w.reshape(-1, w.shape[-1])  # (taps, C)
    c4 = taps.shape[1] // 4 * 4
    groups = taps[:, :c4].reshape(taps.shape[0], -1, 4).transpose(1, 0, 2)
    return np.concatenate([groups.reshape(-1), taps[:, c4:].reshape(-1)])


def _conv_params(qm: QuantizedModel, s: Stage, tag: str) -> tuple[str, str]:
    op = s.op
    t_in, t_out = qm.tensors[s.inputs[0]], qm.tensors[s.output]
    w = np.asarray(op.weights, np.int8)
    cout = int(w.shape[0] if s.kind in ("conv", "fc") else w.shape[-1])
    cin = int(np.prod(t_in.shape[1:])) if s.kind == "fc" else int(t_in.shape[-1])
    bias = np.asarray(op.bias if op.bias is not None else np.zeros(cout), np.int64)
    m0, shift = conv_multipliers(t_in.scale, op.weight_scales, t_out.scale)
    if m0.size == 1 and cout > 1:
        m0, shift = np.repeat(m0, cout), np.repeat(shift, cout)
    w64 = w.astype(np.int64)
    per_out = w64.reshape(-1, cout) if s.kind == "dw" else w64.reshape(cout, -1).T
    # every kernel's fast path folds the input zero point into the bias
    eff = bias - int(t_in.zero_point) * per_out.sum(0)
    abs_w = np.abs(per_out).sum(0)
    bound = max(int((np.abs(eff) + 128 * abs_w).max()), int((np.abs(bias) + 255 * abs_w).max()))
    if bound >= 2**31:
        raise UnsupportedModelError(f"op {op.name}: the int32 accumulator could overflow")
    fast = int(bound < 2**30 and bool((shift <= -1).all()))
    if fast and bool((shift >= -MAX_ZP_FOLD_SHIFT).all()):
        fast |= 2  # the zero point folds into the rounding constant (see mn_engine.h)
    if s.kind == "dw":
        wc = dw_weight_order(w)
    elif kp := im2col_length(s, cin):  # rows padded with zero weights to the im2col length
        wc = np.zeros((cout, kp), np.int8)
        wc[:, : w[0].size] = w.reshape(cout, -1)
    else:
        wc = w
    code = _c_array("int8_t", f"{tag}_w", wc, " MN_ALIGN4")  # whole-word loads in the kernels
    code += _c_array("int32_t", f"{tag}_b", bias)
    code += _c_array("int32_t", f"{tag}_be", eff)
    code += _c_array("int32_t", f"{tag}_m", m0)
    code += _c_array("int32_t", f"{tag}_s", shift)
    code += (
        f"static const mn_conv_params {tag} = {{{cin}, {cout}, {op.depth_multiplier}, "
        f"{-int(t_in.zero_point)}, {int(t_out.zero_point)}, {op.act_min}, {op.act_max}, "
        f"{tag}_w, {tag}_b, {tag}_be, {tag}_m, {tag}_s, {fast}}};\n"
    )
    return code, f"&{tag}"


def _struct(ctype: str, tag: str, vals) -> tuple[str, str]:
    return f"static const {ctype} {tag} = {{{', '.join(map(str, vals))}}};\n", f"&{tag}"


def _c_float(x: float) -> str:
    """A float32 value as an exact C99 hexadecimal float literal."""
    return f"{float(np.float32(x)).hex()}f"


def _fadd_params(qm: QuantizedModel, plan: Plan, s: Stage, tag: str) -> tuple[str, str]:
    """A float island: its inputs' tensor ids (summation order), one 256-value DEQUANTIZE table
    per input (``arith.dequantize_table``: TFLite Micro's values), the output scale and zero
    point."""
    if len(s.inputs) > MAX_KERNEL:
        raise UnsupportedModelError(
            f"op {s.op.name}: float_add of {len(s.inputs)} inputs (at most {MAX_KERNEL})"
        )
    index = {t: i for i, t in enumerate(sorted(plan.tensors))}
    ts = [qm.tensors[t] for t in s.inputs]
    lut = np.concatenate([dequantize_table(t.scale, t.zero_point) for t in ts])
    t_out = qm.tensors[s.output]
    code = _c_array("int16_t", f"{tag}_in", np.array([index[t] for t in s.inputs]))
    code += f"static const float {tag}_lut[{lut.size}] = {{{','.join(map(_c_float, lut))}}};\n"
    vals = (len(ts), f"{tag}_in", f"{tag}_lut", _c_float(t_out.scale), t_out.zero_point)
    struct, ref = _struct("mn_fadd_params", tag, vals)
    return code + struct, ref


def _stage_params(qm: QuantizedModel, plan: Plan, s: Stage) -> tuple[str, str]:
    tag = f"p{s.index}"
    op = s.op
    if s.kind in ("conv", "dw", "fc"):
        return _conv_params(qm, s, tag)
    if s.kind == "fadd":
        return _fadd_params(qm, plan, s, tag)
    t_out = qm.tensors[s.output]
    if s.kind == "add":
        a, b = qm.tensors[s.inputs[0]], qm.tensors[s.inputs[1]]
        m = add_multipliers(a.scale, b.scale, t_out.scale)
        vals = (-a.zero_point, -b.zero_point, *m, t_out.zero_point, op.act_min, op.act_max)
        return (
            f"static const mn_add_params {tag} = {{{', '.join(map(str, vals))}}};\n",
            f"&{tag}",
        )
    if s.kind == "mul":
        a, b = qm.tensors[s.inputs[0]], qm.tensors[s.inputs[1]]
        m0, shift = mul_multiplier(a.scale, b.scale, t_out.scale)
        vals = (-a.zero_point, -b.zero_point, m0, shift, t_out.zero_point, op.act_min, op.act_max)
        return _struct("mn_mul_params", tag, vals)
    t_in = qm.tensors[s.inputs[0]]
    if s.kind == "const":
        return _const_params(op, t_in, t_out, tag)
    if s.kind == "pool2d":
        vals = (int(op.kind == "max_pool2d"), t_out.shape[-1], op.act_min, op.act_max)
        return _struct("mn_pool2d_params", tag, vals)
    if s.kind == "pad":
        return _struct(
            "mn_pad_params", tag, (t_out.zero_point if op.pad_value is None else op.pad_value,)
        )
    if s.kind in ("logistic", "softmax"):
        if s.kind == "logistic":
            m0, shift, radius = logistic_params(t_in.scale)
        else:
            m0, shift, diff_min = softmax_params(t_in.scale, op.beta)
            radius = -diff_min
        return _struct("mn_prob_params", tag, (t_in.zero_point, m0, shift, radius))
    if s.kind == "hswish":
        vals = (t_in.zero_point, t_out.zero_point, *hard_swish_params(t_in.scale, t_out.scale))
        return _struct("mn_hswish_params", tag, vals)
    mode = 1 if op.kind == "mean" else 0
    if mode == 0 and (_f32(t_in.scale) != _f32(t_out.scale) or t_in.zero_point != t_out.zero_point):
        raise UnsupportedModelError(f"op {op.name}: average pool must keep its quantization")
    tin = plan.tensors[s.inputs[0]]
    m0, shift = mean_multiplier(t_in.scale, t_out.scale, tin.h * tin.w) if mode else (0, 0)
    acc = next(b for b in plan.buffers if b.stage == s.index)
    vals = (
        mode,
        tin.h * tin.w,
        t_in.zero_point,
        t_out.zero_point,
        m0,
        shift,
        op.act_min,
        op.act_max,
        acc.offset,
    )
    return f"static const mn_pool_params {tag} = {{{', '.join(map(str, vals))}}};\n", f"&{tag}"


def _const_params(op: Op, t_in: Any, t_out: Any, tag: str) -> tuple[str, str]:
    """ADD/MUL by a constant: the constant prepared once, as TFLite Micro's Prepare would see
    it at every element: MUL's centred value; ADD's centred value shifted left by 20 and
    rescaled by its own multiplier (``arith.add_multipliers``)."""
    k = np.asarray(op.weights, np.int64).reshape(-1)
    s_k = float(op.weight_scales[0])
    if op.kind == "add":
        m1, s1, mk, sk, mo, so = add_multipliers(t_in.scale, s_k, t_out.scale)
        k = multiply_by_quantized_multiplier(k * (1 << ADD_LEFT_SHIFT), mk, sk)
    else:
        (mo, so), m1, s1 = mul_multiplier(t_in.scale, s_k, t_out.scale), 0, 0
    values = ", ".join(str(int(v)) for v in k)
    head = f"static const int32_t {tag}_k[{k.size}] = {{{values}}};\n"
    vals = (int(op.kind == "add"), -t_in.zero_point, k.size, f"{tag}_k", m1, s1, mo, so,
            t_out.zero_point, op.act_min, op.act_max)  # fmt: skip
    code, ref = _struct("mn_const_params", tag, vals)
    return head + code, ref


def c_string(text: str) -> str:
    """``text`` as a C string literal that no translation phase can reinterpret: printable ASCII
    except ``\\``, ``"`` and ``?`` as is, ``?`` as ``\\?`` (no trigraph), every other byte of
    its UTF-8 encoding as a 3-digit octal escape. Raises ValueError for NUL or lone surrogates.
    """
    if not isinstance(text, str):
        raise TypeError(f"a C string needs a str, got {type(text).__name__}")
    if "\0" in text:
        raise ValueError(f"{text!r}: a C string cannot hold a NUL character")
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{text!r}: not valid Unicode (a lone surrogate)") from None
    out = []
    for b in data:
        if b == 0x3F:
            out.append("\\?")
        elif 0x20 <= b < 0x7F and b not in (0x22, 0x5C):
            out.append(chr(b))
        else:
            out.append(f"\\{b:03o}")
    return '"' + "".join(out) + '"'


def _c_comment(text: str) -> str:
    """Text safe inside a C comment: letters, digits, ``_ . -`` and spaces only."""
    return re.sub(r"[^A-Za-z0-9_. -]", "_", str(text))


def check_prefix(prefix: Any) -> str:
    """The symbol prefix: a C identifier of 1-32 characters not starting with ``_``."""
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str (a C identifier such as 'mn_'), got {prefix!r}")
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]{0,31}", prefix):
        raise UsageError(
            f"--prefix must be a C identifier (a letter, then letters, digits or _; at most "
            f"32 characters), got {prefix!r}"
        )
    return prefix


def model_header(qm: QuantizedModel, plan: Plan, prefix: str = DEFAULT_PREFIX) -> str:
    """``model.h``: the public API of the generated library, every name prefixed."""
    ti, to = qm.input_tensor, qm.output_tensor
    names = qm.class_names or []
    p, P = prefix, prefix.upper()
    lines = [
        "/* Generated by mobilenets codegen: int8 inference, no malloc, "
        + (
            "float32 only in the file's float islands (TFLite Micro's float ADDs). */"
            if any(s.kind == "fadd" for s in plan.stages)
            else "no floating point. */"
        ),
        f"#ifndef {P}MODEL_H",
        f"#define {P}MODEL_H",
        "#include <stdint.h>",
        "",
        "#ifdef __cplusplus",
        'extern "C" {',
        "#endif",
        "",
        f"/* All RAM {p}infer touches except its stack: the input, the output, every",
        " * intermediate row ring and whole tensor, and all scratch. */",
        f"#define {P}ARENA_BYTES {plan.arena_bytes}",
        f"#define {P}INPUT_BYTES {ti.nbytes}",
        f"#define {P}OUTPUT_BYTES {to.nbytes}",
        f"#define {P}INPUT_SHAPE {{{', '.join(map(str, ti.shape))}}} /* NHWC */",
        f"#define {P}OUTPUT_SHAPE {{{', '.join(map(str, to.shape))}}}",
        "/* real = scale * (q - zero_point); scales as text */",
        f'#define {P}INPUT_SCALE "{_f32(ti.scale)!r}"',
        f"#define {P}INPUT_ZERO_POINT {ti.zero_point}",
        f'#define {P}OUTPUT_SCALE "{_f32(to.scale)!r}"',
        f"#define {P}OUTPUT_ZERO_POINT {to.zero_point}",
        "/* the engine limits this model was generated for (model.c checks the engine header) */",
        *(f"#define {P}ENGINE_{k} {v}" for k, v in C_CONSTANTS.items()),
        f"#define {P}NUM_CLASSES {len(names) if names else to.nbytes}",
        f"extern const char *const {p}class_names[];",
        "",
        f"/* Runs the network on one NHWC int8 input; writes {P}OUTPUT_BYTES int8 logits.",
        " * Returns 0 on success. Not reentrant (one static arena). When input is",
        f" * {p}input_buffer() the image is used in place (no copy). */",
        f"int {p}infer(const int8_t *input, int8_t *output);",
        "",
        f"/* The arena's input region ({P}INPUT_BYTES): write the image there, then call",
        f" * {p}infer({p}input_buffer(), output). Inference overwrites it: write each image anew. */",
        f"int8_t *{p}input_buffer(void);",
        "",
        "#ifdef __cplusplus",
        "}",
        "#endif",
        "",
        "#endif",
        "",
    ]
    return "\n".join(lines)


def _tables(qm: QuantizedModel, plan: Plan) -> list[str]:
    """Per-op parameters, the tensor, stage and drive tables and the net."""
    ids = sorted(plan.tensors)
    index = {t: i for i, t in enumerate(ids)}
    parts, refs = [], []
    for s in plan.stages:
        code, ref = _stage_params(qm, plan, s)
        parts.append(f"/* op {s.index}: {s.op.kind} {_c_comment(s.op.name)} */\n{code}\n")
        refs.append(ref)
    tens = []
    for t in ids:
        tp = plan.tensors[t]
        tens.append(f"    {{{tp.h}, {tp.w}, {tp.c}, {tp.offset}, {tp.ring}, {tp.producer}}},")
    parts.append("static const mn_tensor tensors[] = {\n" + "\n".join(tens) + "\n};\n")
    st = []
    for s, ref in zip(plan.stages, refs, strict=True):
        in1 = index[s.inputs[1]] if len(s.inputs) > 1 else -1
        st.append(
            f"    {{{STAGE_KINDS.index(s.kind)}, {s.kernel[0]}, {s.kernel[1]}, {s.stride[0]}, "
            f"{s.stride[1]}, {s.padding[0]}, {s.padding[2]}, {int(s.whole_input)}, "
            f"{index[s.inputs[0]]}, {in1}, "
            f"{index[s.output]}, {ref}}}, /* {_c_comment(s.op.name)} */"
        )
    parts.append("static const mn_stage stages[] = {\n" + "\n".join(st) + "\n};\n")
    drive = ", ".join(str(index[t]) for t in plan.drive)
    parts.append(f"static const int16_t drive[] = {{{drive}}};\n")
    patch = next((b.offset for b in plan.buffers if b.name == "scratch"), -1)
    parts.append(
        f"static const mn_net net = {{tensors, stages, drive, {len(ids)}, {len(plan.drive)}, "
        f"{index[plan.input]}, {patch}}};\n"
    )
    return parts


def model_source(qm: QuantizedModel, plan: Plan, prefix: str = DEFAULT_PREFIX) -> str:
    """``model.c``: weights, parameters, tensor and op tables, the arena, ``<prefix>infer`` and
    ``<prefix>input_buffer``. Only those and ``<prefix>class_names`` are external."""
    p, P = prefix, prefix.upper()
    parts = ['#include <string.h>\n#include "model.h"\n#include "mn_engine.h"\n\n']
    same = " && ".join(f"MN_{k} == {P}ENGINE_{k}" for k in C_CONSTANTS)
    parts.append(f"typedef char {p}engine_matches[({same}) ? 1 : -1];\n\n")
    parts += _tables(qm, plan)
    names = qm.class_names or [f"class_{i}" for i in range(qm.output_tensor.nbytes)]
    parts.append(
        f"const char *const {p}class_names[] = {{" + ", ".join(c_string(n) for n in names) + "};\n"
    )
    n_ids = len(plan.tensors)
    tin, tout = plan.tensors[plan.input], plan.tensors[plan.output]
    parts.append(
        f"static union {{ uint32_t align; uint8_t bytes[{P}ARENA_BYTES]; }} mn_arena;\n\n"
        f"int8_t *{p}input_buffer(void)\n{{\n"
        f"    return (int8_t *)(void *)(mn_arena.bytes + {tin.offset});\n}}\n\n"
        f"int {p}infer(const int8_t *input, int8_t *output)\n{{\n"
        f"    int16_t next[{n_ids}], stack[{2 * n_ids}];\n"
        f"    if (input != {p}input_buffer())\n"
        f"        memcpy(mn_arena.bytes + {tin.offset}, input, {P}INPUT_BYTES);\n"
        "    if (mn_run(&net, mn_arena.bytes, next, stack) != 0) return 1;\n"
        f"    memcpy(output, mn_arena.bytes + {tout.offset}, {P}OUTPUT_BYTES);\n"
        "    return 0;\n}\n"
    )
    return "".join(parts)


def inputs_source(
    qm: QuantizedModel, inputs: np.ndarray | None, prefix: str = DEFAULT_PREFIX
) -> str:
    """``mn_inputs.c``: sample inputs for the drivers (zero-point images when none given)."""
    n_in = qm.input_tensor.nbytes
    if inputs is None:
        inputs = np.full((1, n_in), qm.input_tensor.zero_point, np.int8)
    x = np.asarray(inputs, np.int8).reshape(-1, n_in)
    body = ",".join(map(str, x.reshape(-1).tolist()))
    return (
        "#include <stdint.h>\n"
        f"extern const int {prefix}num_test_inputs;\n"
        f"extern const int8_t {prefix}test_inputs[];\n"
        f"const int {prefix}num_test_inputs = {len(x)};\n"
        f"const int8_t {prefix}test_inputs[{x.size}] = {{{body}}};\n"
    )


def _written_names(prefix: str = DEFAULT_PREFIX) -> list[str]:
    """The files one generation writes (relative to the folder)."""
    boards = [f"{b}.ld" for b in BOARD_WEIGHTS] + list(OWN_LD)
    fixed = ["model.h", "model.c", "mn_inputs.c", "Makefile", "plan.json", "plan.png"]
    return sorted({*fixed, *ENGINE_FILES, *DRIVER_FILES, *boards, "README.md", MARKER})


def _marker_files(out: Path) -> set[str]:
    try:
        record = json.loads((out / MARKER).read_text())
        files = record.get("files", _written_names())
    except (OSError, ValueError, AttributeError):
        raise UsageError(f"--out {out}: its {MARKER} marker is unreadable; remove it") from None
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        raise UsageError(f"--out {out}: its {MARKER} marker is damaged; remove it")
    return {*files, MARKER}


def _check_out_dir(out: Path) -> None:
    """``out`` is absent, empty, or an earlier output holding only the files its marker lists
    and what its Makefile builds: anything else stops, naming the first such file."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a folder")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not (out / MARKER).is_file():
        raise UsageError(
            f"--out {out}: folder exists, is not empty and was not written by mobilenets codegen"
        )
    ours = _marker_files(out)
    for path in sorted(out.rglob("*")):
        rel = path.relative_to(out).as_posix()
        if path.is_dir() and not path.is_symlink() and rel in ("build", *BUILD_DIRS):
            continue
        if (rel in ours and (path.is_file() or path.is_symlink())) or BUILD_OUTPUTS.fullmatch(rel):
            continue
        raise UsageError(
            f"--out {out}: {rel} was not written by mobilenets codegen; move it away or "
            "choose another --out (the folder is replaced as a whole)"
        )


def _check_test_inputs(test_inputs: Any, n_in: int) -> np.ndarray | None:
    if test_inputs is None:
        return None
    x = np.asarray(test_inputs)
    if x.dtype == np.bool_ or not np.issubdtype(x.dtype, np.integer):
        raise TypeError(
            f"test_inputs must be int8 NHWC images (quantize_input(x, qmodel) makes them), "
            f"got dtype {x.dtype}"
        )
    if x.size == 0 or x.size % n_in:
        raise ValueError(
            f"test_inputs must hold a whole number (>= 1) of {n_in}-byte inputs, got {x.size} values"
        )
    if x.min() < -128 or x.max() > 127:
        raise ValueError("test_inputs must hold int8 values (-128..127)")
    return x.astype(np.int8)


def _check_args(qmodel: Any, out_dir: Any, target: Any, max_sram: Any, streaming: Any) -> None:
    if not isinstance(qmodel, QuantizedModel):
        hint = (
            "; quantize it first: quantize_int8(model, calibration_images)"
            if hasattr(qmodel, "state_dict")
            else ""
        )
        raise TypeError(
            f"qmodel must be a QuantizedModel (from quantize_int8 or read_tflite), got "
            f"{type(qmodel).__name__}{hint}"
        )
    if qmodel.is_float:
        raise ValueError("qmodel is a float graph; generate_c needs an int8 one (quantize_int8)")
    if not isinstance(out_dir, str | os.PathLike):
        raise TypeError(f"out_dir must be a str or a Path, got {type(out_dir).__name__}")
    if target not in TARGETS:
        raise UsageError(f"--target must be one of {', '.join(TARGETS)}, got {target!r}")
    if max_sram is not None:
        if isinstance(max_sram, bool) or not isinstance(max_sram, int | np.integer):
            raise TypeError(f"max_sram must be None or an int of bytes >= 1, got {max_sram!r}")
        if max_sram < 1:
            raise UsageError(f"--max-sram must be >= 1 bytes, got {max_sram}")
    if not isinstance(streaming, bool):
        raise TypeError(f"streaming must be True or False, got {streaming!r}")


def generate_c(
    qmodel: QuantizedModel,
    out_dir: str | Path,
    *,
    target: str = "host",
    max_sram: int | None = None,
    streaming: bool = True,
    test_inputs: np.ndarray | None = None,
    prefix: str = DEFAULT_PREFIX,
) -> dict[str, Any]:
    """Write the C library for ``qmodel`` to ``out_dir``; returns the memory report.

    Args:
        target: the Makefile's default target: ``host``, ``cortex-m4``, ``cortex-m7`` or
            ``cortex-m55``.
        max_sram: refuse (``MobilenetsError``) when ``MN_ARENA_BYTES`` would exceed it.
        streaming: row bands with ring buffers (default), or layer by layer.
        test_inputs: int8 NHWC inputs compiled into ``mn_inputs.c`` for the drivers.
        prefix: a C identifier put before every exported symbol (``<prefix>infer``) and, in
            upper case, every macro and the include guard, so several models link into one
            program (they share one ``mn_engine.c``).

    Raises TypeError/ValueError for a bad argument and :class:`~.validate.GraphError` for a
    malformed graph. The folder is written next to its final place and renamed, so a failure
    leaves nothing half-written; an existing folder is replaced only if it is an earlier
    ``generate_c`` output holding nothing but the files its marker lists (and build outputs).
    """
    _check_args(qmodel, out_dir, target, max_sram, streaming)
    qmodel = qmodel.int8_core()  # float32 boundary ops: the caller quantizes (model.h says how)
    prefix = check_prefix(prefix)
    check_model(qmodel, "qmodel")
    names = qmodel.class_names
    if names and len(names) != qmodel.output_tensor.nbytes:
        raise GraphError(
            f"qmodel: {len(names)} class names for {qmodel.output_tensor.nbytes} outputs"
        )
    inputs = _check_test_inputs(test_inputs, qmodel.input_tensor.nbytes)
    out = Path(out_dir)
    _check_out_dir(out)
    plan = plan_memory(qmodel, streaming=streaming, max_sram=max_sram)
    report = memory_report(qmodel, plan)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        _write_folder(tmp, qmodel, plan, report, target, inputs, prefix)
        if out.exists():
            _check_out_dir(out)  # nothing of the user's appeared meanwhile
        replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return report


def _write_folder(tmp: Path, qm, plan: Plan, report: dict, target: str, inputs, prefix) -> None:
    (tmp / "model.h").write_text(model_header(qm, plan, prefix))
    (tmp / "model.c").write_text(model_source(qm, plan, prefix))
    (tmp / "mn_inputs.c").write_text(inputs_source(qm, inputs, prefix))
    for name in ENGINE_FILES:
        (tmp / name).write_text(engine_file(name))
    for name in DRIVER_FILES:
        text = _template(name).replace("@p@", prefix).replace("@P@", prefix.upper())
        (tmp / name).write_text(text)
    (tmp / "Makefile").write_text(_template("Makefile").replace("@TARGET@", target))
    for board, origin in BOARD_WEIGHTS.items():
        ld = _template("mps2.ld").replace("@MACHINE@", board).replace("@WEIGHTS@", origin)
        (tmp / f"{board}.ld").write_text(ld)
    for name in OWN_LD:
        (tmp / name).write_text(_template(name))
    (tmp / "plan.json").write_text(json.dumps(plan.to_dict(), indent=1))
    (tmp / "README.md").write_text(readme_text(qm, plan, report, target, prefix))
    plot_plan(plan, tmp / "plan.png")
    files = sorted(p.name for p in tmp.iterdir()) + [MARKER]
    record = {"target": target, "prefix": prefix, "files": sorted(set(files))}
    (tmp / MARKER).write_text(json.dumps(record) + "\n")


def memory_report(qm: QuantizedModel, plan: Plan) -> dict[str, Any]:
    """The figures the README and the CLI print."""
    weights = sum(op.weights.size for op in qm.ops if op.weights is not None)
    return {
        "arena_bytes": plan.arena_bytes,
        # never more than with the input (the greedy placement is not monotonic)
        "arena_without_input_bytes": min(
            plan.arena_bytes,
            plan_memory(qm, streaming=plan.streaming, hold_input=False).arena_bytes,
        ),
        "input_bytes": qm.input_tensor.nbytes,
        "peak_live_bytes": plan.peak_live_bytes,
        "peak_op": plan.peak_op,
        "peak_buffers": plan.peak_buffers[:8],
        "layer_by_layer_bytes": plan.layer_by_layer_bytes,
        "weight_bytes": int(weights),
        "ops": len(plan.stages),
    }


def readme_text(
    qm: QuantizedModel, plan: Plan, report: dict, target: str, prefix: str = DEFAULT_PREFIX
) -> str:
    """The generated folder's README: API, build commands and the memory report."""
    cfg = qm.config or {}
    p, P = prefix, prefix.upper()
    rows = "\n".join(f"| {_c_comment(n)} | {b:,} |" for n, b in plan.peak_buffers[:10])
    ops = "\n".join(
        f"| {s.index} | {_c_comment(s.op.name)} | {s.kind} | {plan.stage_live_bytes[s.index]:,} |"
        for s in plan.stages
    )
    return f"""# Generated int8 C library ({_c_comment(cfg.get("name", "model"))})

Generated by `mobilenets codegen` (default target `{target}`). API in `model.h` (usable from
C and C++; every exported name starts with `{p}`, every macro with `{P}`):

- `int {p}infer(const int8_t *input, int8_t *output)`: NHWC int8 in, int8 logits out, returns 0.
  It copies `input` ({P}INPUT_BYTES) into the arena first.
- `int8_t *{p}input_buffer(void)`: the arena's input region. Write the image there and call
  `{p}infer({p}input_buffer(), output)`: no copy, and no input buffer of your own. Inference
  overwrites the region, so write every image anew.

Several models in one program: generate each with its own `--prefix`, compile each `model.c`
in its folder, and link one `mn_engine.c` (the kernels are the same in every folder).

```
make host && ./mn_host < inputs.bin > outputs.bin     # {P}INPUT_BYTES per input
make cortex-m7 && make run-cortex-m7                   # QEMU mps2-an500, semihosting
make cortex-m55 && make run-cortex-m55                 # QEMU mps3-an547 (mps3-an547.ld)
make size-cortex-m7                                    # flash/SRAM of the library objects
```

## Memory report

- `{P}ARENA_BYTES` = **{plan.arena_bytes:,} B**: everything `{p}infer` touches except its stack
  (the input, the output, every row ring and whole tensor, all scratch). With
  `{p}input_buffer()` this is all the RAM inference needs; passing your own input buffer to
  `{p}infer` adds that buffer ({report["input_bytes"]:,} B).
- For comparison, an input streamed in by the caller (not what this code does) would leave
  {report["arena_without_input_bytes"]:,} B.
- Peak live bytes {plan.peak_live_bytes:,} B while op `{_c_comment(plan.peak_op)}` runs (a whole
  tensor written over the dead rows of an earlier one counts twice here, so this can exceed the
  arena); live then:

| buffer | bytes |
|---|---|
{rows}

- Layer by layer (no row bands, `--layer-by-layer`): an arena of
  {plan.layer_by_layer_bytes:,} B.
- Weights: {report["weight_bytes"]:,} int8 values, `const` (flash).

Ops run row by row on demand; tensors between row-wise ops are row rings (`plan.json`:
`rows_held`), so an inverted residual block runs in bands of rows and its expanded tensor is
never held whole. `plan.png` shows arena occupancy over the op sequence.

| op | name | kind | live bytes (max while it runs) |
|---|---|---|---|
{ops}
"""


def plot_plan(plan: Plan, path: Path) -> None:
    """Arena occupancy: one rectangle per buffer, offset against ticks (rows computed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    fig, ax = plt.subplots(figsize=(10, 5))
    cmap = plt.get_cmap("tab20")
    for i, b in enumerate(plan.buffers):
        x0 = max(b.first, 0)
        ax.add_patch(
            Rectangle((x0, b.offset), max(b.last - x0, 1), b.size, color=cmap(i % 20), alpha=0.8)
        )
    ax.set_xlim(0, max(plan.ticks, 1))
    ax.set_ylim(0, plan.arena_bytes)
    ax.set(
        xlabel="tick (one output row computed)",
        ylabel="arena offset (bytes)",
        title=f"arena {plan.arena_bytes:,} B; peak at op {plan.peak_op}",
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
