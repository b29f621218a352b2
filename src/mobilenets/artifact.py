"""The one owner of the metadata every model file carries: :class:`ArtifactMeta`.

A checkpoint's ``config.json``, an ``.onnx`` file's ``metadata_props`` and a ``.tflite`` file's
metadata buffers each store the same three things: the model config (:class:`ModelConfig`), the
class names and the preprocessing record (:class:`Preprocess`), plus an optional
``quantization`` record. Each format only decodes its container into plain JSON values; the
checks live here, once, so the same damaged field gives the same one-line error whatever the
file (``<file>: <field>: <what is wrong>``). :class:`ModelConfig` and :class:`Preprocess` own
their own field checks (including the resolution bound that keeps a damaged file from asking
for a huge allocation); this module adds what ties them together.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .config import ModelConfig, min_resolution
from .errors import MobilenetsError, UsageError
from .preprocess import Preprocess

__all__ = ["ArtifactMeta", "default_preprocess"]

MAX_NAME_CHARS = 1000  # one class name; longer is a damaged or hostile file


def default_preprocess(cfg: ModelConfig) -> Preprocess:
    """Identity normalization at the model's resolution (mean 0, std 1, whole image)."""
    return Preprocess(cfg.resolution, cfg.in_chans, [0.0] * cfg.in_chans, [1.0] * cfg.in_chans)


def _config(raw: Any) -> ModelConfig:
    """The model config of a stored entry (a dict, or an already built ModelConfig)."""
    if isinstance(raw, ModelConfig):
        return raw
    try:
        return ModelConfig.from_dict(raw)
    except (UsageError, TypeError, ValueError) as e:
        raise UsageError(f"model config: {_first_line(e)}") from None


def _class_names(raw: Any, n: int) -> tuple[str, ...]:
    """``n`` class names (class indices when ``raw`` is None or empty)."""
    if raw is None:
        return tuple(str(i) for i in range(n))
    ok = (
        isinstance(raw, (list, tuple))
        and len(raw) == n
        and all(isinstance(c, str) and len(c) <= MAX_NAME_CHARS for c in raw)
    )
    if not ok:
        got = (
            f"{len(raw)} items"
            if isinstance(raw, (list, tuple)) and len(raw) != n
            else repr(raw)[:80]
        )
        raise UsageError(
            f"class_names: needs a list of {n} strings (num_classes, at most "
            f"{MAX_NAME_CHARS} characters each), got {got}"
        )
    return tuple(raw)


def _preprocess(raw: Any, cfg: ModelConfig) -> Preprocess:
    """The preprocess record (the identity record at the model's resolution when None)."""
    if raw is None:
        prep = default_preprocess(cfg)
    elif isinstance(raw, Preprocess):
        prep = raw
    else:
        try:
            prep = Preprocess.from_dict(raw)
        except (UsageError, TypeError, ValueError) as e:
            raise UsageError(_first_line(e)) from None
    if (prep.resolution, prep.in_chans) != (cfg.resolution, cfg.in_chans):
        raise UsageError(
            f"preprocess is for {prep.resolution} px x {prep.in_chans} channels, "
            f"the model takes {cfg.resolution} px x {cfg.in_chans}"
        )
    return prep


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


@dataclass(frozen=True)
class ArtifactMeta:
    """What every model file stores beside its weights, validated as a whole.

    Build one with :meth:`create` (writing: UsageError for the caller's mistake) or
    :meth:`parse` (reading: MobilenetsError naming the file and the field).
    """

    config: ModelConfig
    class_names: tuple[str, ...]
    preprocess: Preprocess
    quantization: dict[str, Any] | None = None
    assumed: str = ""  # files without mobilenets metadata: what was assumed (one line)

    @property
    def num_classes(self) -> int:
        """The number of model outputs."""
        return self.config.num_classes

    @classmethod
    def create(
        cls,
        config: ModelConfig | dict[str, Any],
        class_names: Sequence[str] | None = None,
        preprocess: Preprocess | dict[str, Any] | None = None,
        quantization: dict[str, Any] | None = None,
    ) -> ArtifactMeta:
        """Validate what is about to be written; defaults: class indices, identity
        preprocessing at the model's resolution. UsageError naming the field."""
        return cls._build(
            config, list(class_names) if class_names else None, preprocess, quantization
        )

    @classmethod
    def _build(cls, config: Any, names: Any, preprocess: Any, quantization: Any) -> ArtifactMeta:
        cfg = _config(config)
        checked = _class_names(names, cfg.num_classes)
        prep = _preprocess(preprocess, cfg)
        if quantization is not None and not isinstance(quantization, dict):
            raise UsageError(f"quantization: must be a JSON object, got {quantization!r}"[:200])
        return cls(cfg, checked, prep, quantization)

    @classmethod
    def foreign(
        cls,
        where: str,
        num_classes: int,
        preprocess: Preprocess,
        class_names: Sequence[str] | None = None,
        assumed: str = "",
    ) -> ArtifactMeta:
        """The metadata of a file without ours (a converter's ``.tflite``): only its I/O is
        known. ``config`` is a stand-in carrying the channels, resolution and number of classes
        (its architecture fields mean nothing); class names default to ``class_0..``;
        ``assumed`` says in one line what was not read from the file. MobilenetsError naming
        ``where`` when they do not fit together."""
        res = preprocess.resolution
        try:
            cfg = ModelConfig(
                "mobilenet_v1", resolution=res, num_classes=num_classes,
                in_chans=preprocess.in_chans, small_input=res < min_resolution(False),
            )  # fmt: skip
            names = list(class_names) if class_names else [f"class_{i}" for i in range(num_classes)]
            meta = cls._build(cfg, names, preprocess, None)
        except UsageError as e:
            raise MobilenetsError(f"{where}: {e}") from None
        return dataclasses.replace(meta, assumed=assumed)

    @classmethod
    def parse(cls, fields: dict[str, Any], where: str) -> ArtifactMeta:
        """The one reader: ``fields`` are the decoded JSON entries ``config``, ``class_names``,
        ``preprocess`` (None: identity) and ``quantization`` of the file ``where``.

        Raises MobilenetsError ``"<where>: <field>: <why>"`` for the first damaged field.
        """
        if fields.get("config") is None:
            raise MobilenetsError(f"{where}: no mobilenets model config in its metadata")
        try:
            return cls._build(
                fields["config"],
                fields.get("class_names"),
                fields.get("preprocess"),
                fields.get("quantization"),
            )
        except UsageError as e:
            raise MobilenetsError(f"{where}: {e}") from None

    def check_io(self, in_chans: int, resolution: tuple[int, int], outputs: int, where: str):
        """MobilenetsError unless the file's input (channels, (H, W)) and number of outputs
        are what the config says (a damaged config must not describe another network)."""
        cfg = self.config
        if in_chans != cfg.in_chans or tuple(resolution) != (cfg.resolution, cfg.resolution):
            raise MobilenetsError(
                f"{where}: model config: says {cfg.resolution} px x {cfg.in_chans} channels, "
                f"the graph's input is {resolution[0]}x{resolution[1]} x {in_chans}"
            )
        if outputs != cfg.num_classes:
            raise MobilenetsError(
                f"{where}: class_names: the model config says {cfg.num_classes} classes, "
                f"the graph has {outputs} outputs"
            )

    def to_fields(self) -> dict[str, Any]:
        """The JSON values each format stores (config and preprocess as dicts)."""
        return {
            "config": self.config.to_dict(),
            "class_names": list(self.class_names),
            "preprocess": self.preprocess.to_dict(),
            "quantization": self.quantization,
        }
