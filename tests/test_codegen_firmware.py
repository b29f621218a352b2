"""The generated C in real firmware (issue 20): hostile class names, two models in one program
(host, C++ and Cortex-M7), the in-place input buffer, strict warnings with every compiler,
mn_host's I/O errors, the M55 on mps3-an547, regeneration that keeps the user's files, and
argument checks of ``generate_c`` and ``mobilenets codegen``.

Two small models (V1 alpha 0.25 and V2 alpha 0.35, 32 px) are generated once per module."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from mobilenets import create_model, generate_c
from mobilenets.cli import main
from mobilenets.errors import UsageError
from mobilenets.micro.graph import QuantizedModel
from mobilenets.micro.planner import naive_peak_bytes, plan_memory
from mobilenets.micro.quantizer import quantize_int8
from mobilenets.micro.reference import run_int8
from mobilenets.micro.tflite import read_tflite, write_tflite
from mobilenets.micro.validate import GraphError
from mobilenets.preprocess import Preprocess

HAVE = {c: shutil.which(c) is not None for c in ("gcc", "g++", "clang", "nm", "make")}
HAVE_ARM = bool(shutil.which("arm-none-eabi-gcc") and shutil.which("qemu-system-arm"))
needs_gcc = pytest.mark.skipif(not (HAVE["gcc"] and HAVE["make"]), reason="no gcc or make")
needs_arm = pytest.mark.skipif(
    not (HAVE_ARM and HAVE["make"]), reason="needs gcc-arm-none-eabi and qemu-system-arm"
)
STRICT = "-std=c99 -Wall -Wextra -Werror -Wpedantic -Wconversion -Wshadow -Wcast-align".split()
M7 = "-mcpu=cortex-m7 -mthumb -mfpu=fpv5-d16 -mfloat-abi=hard".split()
HOSTILE = [
    'a??/"); int evil_fn(void) { return 1; } static const char *z = ("',
    "??=define X ??< ??> ??' ??! ??- ??(??)",
    'quote " and back\\slash \\x41 \\101',
    "ctrl \x01\x1b[31m\t\n\r\x7f",
    "emoji \U0001f642 \u00e9 \u4e2d",
    "*/ /* // end",
    "?\\",
    "",
]


def _model(kind: str, width: float, classes: int, seed: int) -> QuantizedModel:
    torch.manual_seed(seed)
    model = create_model(kind, width, 32, num_classes=classes, in_chans=1)
    qm = quantize_int8(model, torch.randn(8, 1, 32, 32))
    qm.preprocess = Preprocess(in_chans=1, resolution=32, mean=(0.5,), std=(0.5,)).to_dict()
    return qm


def _inputs(qm: QuantizedModel, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(-128, 128, (n, *qm.input_tensor.shape[1:]), dtype=np.int8)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """Two different models generated with prefixes cat_ and dog_, with 3 sample inputs each."""
    root = tmp_path_factory.mktemp("pair")
    a, b = _model("mobilenet_v1", 0.25, len(HOSTILE), 0), _model("mobilenet_v2", 0.35, 5, 1)
    xa, xb = _inputs(a, 3, 0), _inputs(b, 3, 1)
    generate_c(a, root / "a", test_inputs=xa, prefix="cat_")
    generate_c(b, root / "b", test_inputs=xb, prefix="dog_")
    return root, (a, xa), (b, xb)


TWO_MAIN = r"""
#include <stdio.h>
#include <string.h>
#include "a/model.h"
#include "b/model.h"
#ifdef __cplusplus
extern "C" {
#endif
extern const int8_t cat_test_inputs[], dog_test_inputs[];
extern const int cat_num_test_inputs, dog_num_test_inputs;
#ifdef __cplusplus
}
#endif
static int8_t oa[CAT_OUTPUT_BYTES], ob[DOG_OUTPUT_BYTES];
int main(int argc, char **argv)
{
    int n, i, in_place = argc > 1 && argv[1][0] == 'i';
    for (n = 0; n < cat_num_test_inputs; ++n) {
        const int8_t *x = cat_test_inputs + n * CAT_INPUT_BYTES;
        if (in_place) {
            memcpy(cat_input_buffer(), x, CAT_INPUT_BYTES);
            x = cat_input_buffer();
        }
        if (cat_infer(x, oa) != 0) return 1;
        printf("cat %d:", n);
        for (i = 0; i < CAT_OUTPUT_BYTES; ++i) printf(" %d", oa[i]);
        printf("\n");
    }
    for (n = 0; n < dog_num_test_inputs; ++n) {
        const int8_t *x = dog_test_inputs + n * DOG_INPUT_BYTES;
        if (in_place) {
            memcpy(dog_input_buffer(), x, DOG_INPUT_BYTES);
            x = dog_input_buffer();
        }
        if (dog_infer(x, ob) != 0) return 1;
        printf("dog %d:", n);
        for (i = 0; i < DOG_OUTPUT_BYTES; ++i) printf(" %d", ob[i]);
        printf("\n");
    }
    return 0;
}
"""


def _outputs(text: str, tag: str) -> np.ndarray:
    rows = [line.split(":")[1].split() for line in text.splitlines() if line.startswith(tag)]
    return np.array(rows, dtype=np.int64)


def _check_pair(stdout: str, pair) -> None:
    _, (a, xa), (b, xb) = pair
    for tag, qm, x in (("cat ", a, xa), ("dog ", b, xb)):
        got = _outputs(stdout, tag)
        assert got.shape == (len(x), qm.output_tensor.nbytes), tag
        assert np.array_equal(got, run_int8(qm, x).astype(np.int64)), tag


@pytest.fixture(scope="module")
def cpp_two(pair):
    """One C++ host program with both models and one copy of the kernels."""
    if not (HAVE["gcc"] and HAVE["g++"]):
        pytest.skip("needs gcc and g++")
    root = pair[0]
    (root / "two.cpp").write_text(TWO_MAIN.replace("n * ", "(size_t)n * (size_t)"))
    objs = []
    for src in ("a/model.c", "a/mn_inputs.c", "b/model.c", "b/mn_inputs.c", "a/mn_engine.c"):
        obj = root / (src.replace("/", "_") + ".o")
        subprocess.run(["gcc", *STRICT, "-O2", "-c", str(root / src), "-o", str(obj)], check=True)
        objs.append(str(obj))
    exe = root / "two"
    cxx = ["g++", "-std=c++11", "-Wall", "-Wextra", "-Werror", "-pedantic", "-O2"]
    subprocess.run(
        [*cxx, "-I", str(root), str(root / "two.cpp"), *objs, "-o", str(exe)], check=True
    )
    return exe


@needs_gcc
def test_two_prefixed_models_link_into_one_host_program_bit_exact(pair, cpp_two):
    """Item 13: cat_* and dog_* symbols, macros and guards; one mn_engine.c for both."""
    res = subprocess.run([str(cpp_two)], capture_output=True, text=True, check=True)
    _check_pair(res.stdout, pair)
    header = (pair[0] / "b" / "model.h").read_text()
    assert "#ifndef DOG_MODEL_H" in header and "int dog_infer(" in header
    assert not re.search(r"\bMN_|\bmn_", header)


@needs_gcc
def test_model_header_is_usable_from_cpp(pair, cpp_two):
    """Item 14: model.h declares its API extern "C" (the C++ program above links)."""
    text = (pair[0] / "a" / "model.h").read_text()
    assert '#ifdef __cplusplus\nextern "C" {' in text
    assert cpp_two.is_file()


@needs_gcc
def test_input_buffer_runs_in_place_bit_exact(pair, cpp_two):
    """Item 16: the caller writes the image into cat_input_buffer(); no copy, same outputs."""
    res = subprocess.run([str(cpp_two), "in-place"], capture_output=True, text=True, check=True)
    _check_pair(res.stdout, pair)
    readme = (pair[0] / "a" / "README.md").read_text()
    assert "cat_infer(cat_input_buffer(), output)" in readme
    assert "int8_t *cat_input_buffer(void);" in (pair[0] / "a" / "model.h").read_text()


@needs_arm
def test_two_prefixed_models_in_one_cortex_m7_program_bit_exact(pair):
    """Item 13 on the M7 under QEMU: both models, one engine, outputs equal the reference."""
    root = pair[0]
    # startup.c calls main() without arguments: argc/argv would be whatever the registers hold
    text = TWO_MAIN.replace("n * ", "(size_t)n * (size_t)").replace(
        "int main(int argc, char **argv)\n{",
        "int main(void)\n{\n    int argc = 1;\n    char **argv = 0;",
    )
    (root / "two_mcu.c").write_text(text)
    srcs = ["two_mcu.c", "a/model.c", "b/model.c", "a/mn_inputs.c", "b/mn_inputs.c"]
    srcs += ["a/mn_engine.c", "a/startup.c"]
    elf = root / "two.elf"
    cmd = ["arm-none-eabi-gcc", *M7, "-O2", *STRICT, "-I", str(root), "-nostartfiles"]
    cmd += ["--specs=rdimon.specs", "-T", str(root / "a" / "mps2-an500.ld"), "-Wl,--gc-sections"]
    subprocess.run([*cmd, *(str(root / s) for s in srcs), "-o", str(elf)], check=True)
    qemu = ["qemu-system-arm", "-machine", "mps2-an500", "-cpu", "cortex-m7", "-nographic"]
    qemu += ["-monitor", "none", "-serial", "none", "-semihosting-config"]
    qemu += ["enable=on,target=native", "-kernel", str(elf)]
    res = subprocess.run(qemu, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    _check_pair(res.stdout, pair)


@needs_arm
def test_make_run_cortex_m55_uses_mps3_an547(pair):
    """Item 17: `make run-cortex-m55` builds with mps3-an547.ld and runs on that board."""
    _, (a, xa), _ = pair
    out = pair[0] / "a"
    assert "MACHINE_cortex-m55 = mps3-an547" in (out / "Makefile").read_text()
    subprocess.run(["make", "-s", "-C", str(out), "cortex-m55"], check=True, capture_output=True)
    res = subprocess.run(
        ["make", "-s", "-C", str(out), "run-cortex-m55"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    got = _outputs(res.stdout, "out ")
    assert np.array_equal(got, run_int8(a, xa).astype(np.int64))


def _compile(cmd: list[str], src: Path) -> None:
    res = subprocess.run([*cmd, "-c", str(src), "-o", "/dev/null"], capture_output=True, text=True)
    assert res.returncode == 0, f"{cmd[0]} {src.name}:\n{res.stderr[-3000:]}"


def test_generated_c_compiles_clean_with_strict_warnings(pair):
    """Item 15: -std=c99 -Wall -Wextra -Werror -Wpedantic -Wconversion -Wshadow -Wcast-align
    with gcc, clang (when installed) and arm-none-eabi-gcc; the Makefile uses the same flags."""
    out = pair[0] / "a"
    assert " ".join(STRICT) in (out / "Makefile").read_text()
    host = ["mn_engine.c", "model.c", "main_host.c", "mn_inputs.c"]
    compilers = [[c, *STRICT, "-O2"] for c in ("gcc", "clang") if HAVE[c]]
    if not compilers:
        pytest.skip("no host C compiler")
    for cmd in compilers:
        for name in host:
            _compile(cmd, out / name)
    if shutil.which("arm-none-eabi-gcc"):
        for name in ("mn_engine.c", "model.c", "main_mcu.c", "mn_inputs.c", "startup.c"):
            _compile(["arm-none-eabi-gcc", *M7, *STRICT, "-O2"], out / name)


@pytest.fixture(scope="module")
def host_a(pair):
    if not (HAVE["gcc"] and HAVE["make"]):
        pytest.skip("no gcc or make")
    out = pair[0] / "a"
    subprocess.run(["make", "-s", "-C", str(out), "host"], check=True, capture_output=True)
    return out / "mn_host"


def test_mn_host_reports_partial_input_short_stdin_and_write_errors(pair, host_a):
    """Item 8: leftover bytes, no input, a full disk and a bad --bench N exit non-zero."""
    _, (a, xa), _ = pair
    n_in = a.input_tensor.nbytes
    ok = subprocess.run([str(host_a)], input=xa.tobytes(), capture_output=True, check=True)
    assert len(ok.stdout) == len(xa) * a.output_tensor.nbytes
    part = subprocess.run([str(host_a)], input=xa.tobytes() + b"\1\2\3", capture_output=True)
    assert part.returncode != 0 and b"3 trailing bytes after 3 inputs" in part.stderr
    assert len(part.stdout) == len(xa) * a.output_tensor.nbytes
    short = subprocess.run([str(host_a)], input=b"\0" * (n_in - 1), capture_output=True)
    assert short.returncode != 0 and b"trailing bytes" in short.stderr
    empty = subprocess.run([str(host_a)], input=b"", capture_output=True)
    assert empty.returncode != 0 and b"no input" in empty.stderr
    with open("/dev/full", "wb") as full:
        res = subprocess.run([str(host_a)], input=xa.tobytes(), stdout=full, stderr=subprocess.PIPE)
    assert res.returncode != 0 and b"write error" in res.stderr
    for bad in ("-5", "0", "abc", "5x"):
        res = subprocess.run([str(host_a), "--bench", bad], capture_output=True, text=True)
        assert res.returncode == 2 and "--bench N needs a whole number" in res.stderr, bad
    res = subprocess.run([str(host_a), "--bench", "2"], capture_output=True, text=True)
    assert res.returncode == 0 and "us per inference" in res.stdout


def test_hostile_class_names_compile_to_equal_strings_and_no_code(pair, tmp_path):
    """Item 1: names with trigraphs, quotes, backslashes, control bytes and emoji, read from a
    .tflite, become octal-escaped literals: -trigraphs adds no symbol and reads them back."""
    if not (HAVE["gcc"] and HAVE["nm"]):
        pytest.skip("needs gcc and nm")
    a = pair[1][0]
    a.class_names = list(HOSTILE)
    try:
        qm, _ = read_tflite(write_tflite(a, tmp_path / "h.tflite"))
    finally:
        a.class_names = None
    assert qm.class_names == HOSTILE
    out = tmp_path / "lib"
    generate_c(qm, out, prefix="cat_")
    obj = tmp_path / "model.o"
    flags = ["-std=c99", "-trigraphs", "-Wall", "-Werror", "-I", str(out)]
    subprocess.run(["gcc", *flags, "-c", str(out / "model.c"), "-o", str(obj)], check=True)
    nm = subprocess.run(["nm", "--defined-only", "-g", str(obj)], capture_output=True, text=True)
    assert {line.split()[-1] for line in nm.stdout.splitlines()} == {
        "cat_infer",
        "cat_input_buffer",
        "cat_class_names",
    }
    (tmp_path / "names.c").write_text(
        '#include <stdio.h>\n#include "model.h"\nint main(void) {\n  int i; const char *p;\n'
        "  for (i = 0; i < CAT_NUM_CLASSES; ++i) {\n"
        '    for (p = cat_class_names[i]; *p; ++p) printf("%02x", (unsigned char)*p);\n'
        '    printf("\\n");\n  }\n  return 0;\n}\n'
    )
    exe = tmp_path / "names"
    subprocess.run(
        [
            "gcc",
            *flags,
            str(tmp_path / "names.c"),
            str(obj),
            str(out / "mn_engine.c"),
            "-o",
            str(exe),
        ],
        check=True,
    )
    lines = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    assert lines.split("\n")[: len(HOSTILE)] == [n.encode().hex() for n in HOSTILE]
    with pytest.raises(GraphError, match="class name 1 is not valid Unicode"):
        qm.class_names = ["a", "\ud800", *HOSTILE[2:]]
        generate_c(qm, tmp_path / "lib2")


def test_regenerating_never_deletes_the_users_files(pair, host_a, tmp_path, capsys):
    """Item 4: only files the marker lists (and the Makefile's build outputs) are replaced."""
    _, (a, xa), _ = pair
    out = tmp_path / "lib"
    generate_c(a, out, test_inputs=xa)
    subprocess.run(["make", "-s", "-C", str(out), "host"], check=True, capture_output=True)
    generate_c(a, out, test_inputs=xa)  # over its own output and build products: fine
    (out / "my_app.c").write_text("int main(void) { return 0; }\n")
    with pytest.raises(UsageError, match="my_app.c was not written by mobilenets codegen"):
        generate_c(a, out, test_inputs=xa)
    assert (out / "my_app.c").is_file() and (out / "model.c").is_file()
    path = write_tflite(a, tmp_path / "a.tflite")
    capsys.readouterr()
    assert main(["codegen", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "my_app.c" in err
    assert (out / "my_app.c").read_text().startswith("int main")


def test_generate_c_rejects_bad_arguments_naming_them(pair, tmp_path):
    """Item 10: TypeError/ValueError naming the argument and what it accepts."""
    _, (a, xa), _ = pair
    model = create_model("mobilenet_v1", 0.25, 32, num_classes=2, in_chans=1)
    cases = [
        (("x", tmp_path / "o"), {}, TypeError, "qmodel must be a QuantizedModel"),
        ((None, tmp_path / "o"), {}, TypeError, "qmodel must be a QuantizedModel"),
        ((model, tmp_path / "o"), {}, TypeError, "quantize it first"),
        ((a, tmp_path / "o"), {"max_sram": "abc"}, TypeError, "max_sram must be None or an int"),
        ((a, tmp_path / "o"), {"max_sram": -1}, ValueError, "--max-sram must be >= 1"),
        ((a, tmp_path / "o"), {"test_inputs": xa.astype(np.float32)}, TypeError, "test_inputs"),
        ((a, tmp_path / "o"), {"test_inputs": xa[:, :3]}, ValueError, "whole number"),
        ((a, tmp_path / "o"), {"prefix": "9lives"}, ValueError, "--prefix must be a C identifier"),
        ((a, None), {}, TypeError, "out_dir must be a str or a Path"),
    ]
    for args, kwargs, exc, needle in cases:
        with pytest.raises(exc, match=re.escape(needle)):
            generate_c(*args, **kwargs)
    assert not (tmp_path / "o").exists()


def test_cli_codegen_refuses_options_that_do_not_apply(pair, tmp_path, capsys):
    """Item 11: --calib-data with a .tflite, --sample-images out of 0..256, a bad --prefix."""
    path = write_tflite(pair[1][0], tmp_path / "a.tflite")
    base = ["codegen", str(path), "--out", str(tmp_path / "o")]
    for extra, needle in (
        (["--calib-data", "random"], "--calib-data applies to a checkpoint only"),
        (["--sample-images", "-5"], "--sample-images must be 0..256, got -5"),
        (["--sample-images", "100000"], "--sample-images must be 0..256, got 100000"),
        (["--prefix", "a-b"], "--prefix must be a C identifier"),
    ):
        capsys.readouterr()
        assert main([*base, *extra]) == 2, extra
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and needle in err, err
    assert not (tmp_path / "o").exists()


def test_layer_by_layer_bytes_is_the_generated_layer_by_layer_arena(pair, tmp_path):
    """Item 18: the figure is the arena the generator needs with streaming off."""
    b = pair[2][0]
    plan = plan_memory(b)
    rep = generate_c(b, tmp_path / "lbl", streaming=False)
    assert plan.layer_by_layer_bytes == rep["arena_bytes"] == rep["layer_by_layer_bytes"]
    assert plan.layer_by_layer_bytes != naive_peak_bytes(b)  # not the tensors-only sum
    assert f"#define MN_ARENA_BYTES {rep['arena_bytes']}" in (tmp_path / "lbl/model.h").read_text()
