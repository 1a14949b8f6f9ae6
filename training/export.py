"""Checkpoint → frozen TorchScript + parity check → torch-model-archiver → ``<out>/<model-name>.mar``, and
beside it an ExportedProgram (torch.export) + the same parity check → ``<out>/oip/<model-name>/model.pt2``.

    python -m training.export --arch deeplabv3_resnet101 --weights auto --out model_store

The TorchScript module takes a float32 ``[N,3,H,W]`` tensor, already ImageNet-normalised, and returns the
``out`` logits ``[N,num_classes,H,W]`` (no aux head). It loads with plain ``torch.jit.load``, no torchvision.
The archive carries ``model-meta.json`` (arch, weights provenance, class names, input size, TorchScript
sha256) that the handler reads from its model dir.

TorchServe loads the TorchScript from the ``.mar``; the Open Inference Protocol server (seg_handler/oip) loads
the ``.pt2`` from ``<out>/oip/<model-name>/`` with its own ``model-meta.json``: the same module, height, width
and batch dynamic, loadable with ``torch.export.load`` alone. Both carry one identity (``archive_sha256``, the
TorchScript's hash), so moving between the two servers does not make labels stale; ``program_sha256`` names
the ``.pt2`` file itself. ``--class-names-file`` (a JSON array of strings, index 0
first) names the classes: for ``random`` and ``imagenet-backbone`` weights it also sets how many there are;
for other weights it renames the model's classes and must name exactly as many.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from training.model import (
    ARCHS,
    DEFAULT_ARCH,
    WEIGHT_CHOICES,
    BuiltModel,
    SegmentationLogits,
    WeightsError,
    build_model,
)

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_HANDLER = REPO_ROOT / "seg_handler" / "handler.py"
# Modules the handler imports from the archive root (torch-model-archiver flattens extra files there).
HANDLER_MODULES = (REPO_ROOT / "seg_handler" / "image_policy.py",)
DEFAULT_CONFIG_FILE = REPO_ROOT / "seg_handler" / "model-config.yaml"
METADATA_NAME = "model-meta.json"
PROGRAM_NAME = "model.pt2"
OIP_FOLDER = "oip"
# The largest side the ExportedProgram's dynamic height and width take (to_tensor caps sides far below).
MAX_PROGRAM_SIDE = 8192
MODEL_VERSION = "1.0"
DEFAULT_INPUT_SIZE = 520
DEFAULT_SEED = 0

# Issue 4's parity bar: the scripted model must match the eager one to this.
MAX_ABS_LOGIT_DIFF = 1e-4
MIN_ARGMAX_AGREEMENT = 0.9999


class ExportError(RuntimeError):
    """The export cannot go on (parity failed, handler missing, archiver failed); the message says why."""


@dataclass(frozen=True)
class ParityReport:
    """Scripted vs eager outputs on fixed inputs."""

    shapes: tuple[tuple[int, int, int, int], ...]
    max_abs_diff: float
    argmax_agreement: float  # fraction of pixels whose argmax class agrees, 0..1

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= MAX_ABS_LOGIT_DIFF and self.argmax_agreement >= MIN_ARGMAX_AGREEMENT


@dataclass(frozen=True)
class ProgramExport:
    """The ExportedProgram of an export: where it is, its file's hash, and its parity check."""

    path: Path
    sha256: str
    parity: ParityReport


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote and how it checked out."""

    mar_path: Path
    torchscript_path: Path | None  # only when asked to keep it outside the archive
    torchscript_sha256: str
    metadata: dict[str, Any]
    parity: ParityReport
    seconds: float
    # The ExportedProgram, in <out>/oip/<model-name>/ with its model-meta.json; None with program=False.
    program: ProgramExport | None


def default_parity_shapes(input_size: int) -> tuple[tuple[int, int, int, int], ...]:
    """A square input at the serving size, a batch of two at an odd size, a small non-square one."""
    return ((1, 3, input_size, input_size), (2, 3, 241, 319), (1, 3, 97, 130))


def to_torchscript(model: nn.Module) -> torch.jit.ScriptModule:
    """Script the eval-mode ``out``-only wrapper of ``model`` and freeze it (the aux head is dropped)."""
    model = model.eval()
    if getattr(model, "aux_classifier", None) is not None:
        model.aux_classifier = None  # type: ignore[assignment]
    wrapper = SegmentationLogits(model).eval()
    with warnings.catch_warnings():
        # torch.jit is deprecated for torch.export, but TorchServe's TorchScript path is the contract.
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.script(wrapper)
        # optimize_numerics=False: conv-BN folding moved ResNet-50 logits by 2.5e-4, past the 1e-4 parity bar,
        # for no measurable CPU speed-up; without it the frozen graph computes exactly what eager does.
        frozen: torch.jit.ScriptModule = torch.jit.freeze(scripted.eval(), optimize_numerics=False)
        return frozen


def to_exported_program(model: nn.Module, example_size: int) -> torch.export.ExportedProgram:
    """torch.export of the eval-mode ``out``-only wrapper of ``model`` (the aux head dropped), with batch,
    height and width dynamic.

    ``backed_size_oblivious``: without it export specializes feature maps of size 1, and inputs under 17
    pixels a side (a 4000x8 strip resized for the network is 2 pixels high) would fail its guards.
    """
    import torch.fx.experimental._config as fx_config

    model = model.eval()
    if getattr(model, "aux_classifier", None) is not None:
        model.aux_classifier = None  # type: ignore[assignment]
    wrapper = SegmentationLogits(model).eval()
    side = torch.export.Dim("height", min=1, max=MAX_PROGRAM_SIDE)
    dims = {
        0: torch.export.Dim("batch", min=1, max=64),
        2: side,
        3: torch.export.Dim("width", min=1, max=MAX_PROGRAM_SIDE),
    }
    # A batch of two at the serving size: a batch of one would make export specialize the batch to 1.
    example = torch.randn(2, 3, example_size, example_size, generator=torch.Generator().manual_seed(0))
    with fx_config.patch(backed_size_oblivious=True):  # type: ignore[attr-defined]
        return torch.export.export(wrapper, (example,), dynamic_shapes=(dims,))


def check_parity(
    eager: nn.Module,
    scripted: Callable[[torch.Tensor], torch.Tensor],
    shapes: Sequence[tuple[int, int, int, int]],
    seed: int = DEFAULT_SEED,
) -> ParityReport:
    """Compare ``scripted`` (a TorchScript module, an ExportedProgram's module) with ``eager`` (``out``
    logits) on seeded N(0,1) inputs of ``shapes``."""
    generator = torch.Generator().manual_seed(seed)
    max_diff = 0.0
    agree = 0
    total = 0
    wrapper = SegmentationLogits(eager).eval()
    with torch.inference_mode():
        for shape in shapes:
            x = torch.randn(shape, generator=generator)
            expected = wrapper(x)
            actual = scripted(x)
            if actual.shape != expected.shape:
                raise ExportError(
                    f"scripted output shape {tuple(actual.shape)} != eager {tuple(expected.shape)}"
                )
            max_diff = max(max_diff, float((actual - expected).abs().max()))
            agree += int((actual.argmax(1) == expected.argmax(1)).sum())
            total += expected.shape[0] * expected.shape[2] * expected.shape[3]
    return ParityReport(tuple(tuple(s) for s in shapes), max_diff, agree / total)  # type: ignore[misc]


def build_metadata(built: BuiltModel, input_size: int, torchscript_sha256: str) -> dict[str, Any]:
    """The ``model-meta.json`` contents the handler reads."""
    return {
        "arch": built.arch,
        "weights": built.provenance.source,
        "weights_file": built.provenance.weights_file,
        "sha256": built.provenance.sha256,
        "untrained": built.provenance.untrained,
        "class_names": list(built.class_names),
        "num_classes": built.num_classes,
        "input_size": input_size,
        "torchscript_sha256": torchscript_sha256,
        # The served model's identity: every answer carries it, and re-tagging compares it.
        "archive_sha256": torchscript_sha256,
    }


def read_class_names(path: Path) -> tuple[str, ...]:
    """The class names in ``path``: a JSON array of distinct, non-empty strings, index 0 first.

    JSON, not one name a line, so that a name may hold any character. Raises ExportError naming the problem.
    """
    try:
        names = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ExportError(f"cannot read class names from {path}: {exc}") from exc
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise ExportError(f"{path} must hold a JSON array of non-empty strings, one per class")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ExportError(f"{path} names a class more than once: {', '.join(map(repr, repeated))}")
    return tuple(names)


def _build(arch: str, weights: str | Path, class_names: Sequence[str] | None) -> BuiltModel:
    if class_names is None:
        return build_model(arch, weights=weights, aux_loss=False)
    names = tuple(class_names)
    if str(weights) in ("random", "imagenet-backbone"):  # a new head: as many classes as names
        return build_model(arch, len(names), weights, aux_loss=False, class_names=names)
    built = build_model(arch, weights=weights, aux_loss=False)
    if built.num_classes != len(names):
        raise ExportError(
            f"{len(names)} class names for a model of {built.num_classes} classes (weights {weights}); "
            "only random or imagenet-backbone weights take a new number of classes"
        )
    return replace(built, class_names=names)


def _save_torchscript(module: torch.jit.ScriptModule, path: Path) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(module, str(path))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _load_torchscript(path: Path) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module: torch.jit.ScriptModule = torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]
    return module


def _save_program(program: torch.export.ExportedProgram, path: Path) -> str:
    torch.export.save(program, str(path))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _check_passed(
    kind: str, arch: str, parity: ParityReport, shapes: Sequence[tuple[int, int, int, int]]
) -> None:
    logger.info(
        "%s parity %s vs eager on %s: max |Δlogit| = %.3g (limit %g), argmax agreement %.4f%% (min %.2f%%)",
        kind,
        arch,
        ", ".join("x".join(map(str, shape)) for shape in shapes),
        parity.max_abs_diff,
        MAX_ABS_LOGIT_DIFF,
        100 * parity.argmax_agreement,
        100 * MIN_ARGMAX_AGREEMENT,
    )
    if not parity.passed:
        raise ExportError(
            f"{kind} parity failed for {arch}: max |Δlogit| {parity.max_abs_diff:.3g} "
            f"(limit {MAX_ABS_LOGIT_DIFF:g}), argmax agreement {parity.argmax_agreement:.6f} "
            f"(min {MIN_ARGMAX_AGREEMENT})"
        )


def _write_program(
    eager: nn.Module,
    work: Path,
    *,
    input_size: int,
    shapes: Sequence[tuple[int, int, int, int]],
    seed: int,
    arch: str,
) -> ProgramExport:
    """The ExportedProgram saved in ``work``, checked as loaded back; raises ExportError when parity fails."""
    path = work / PROGRAM_NAME
    sha = _save_program(to_exported_program(eager, input_size), path)
    parity = check_parity(eager, torch.export.load(str(path)).module(), shapes, seed=seed)
    _check_passed("ExportedProgram", arch, parity, shapes)
    return ProgramExport(path, sha, parity)


def _publish_program(folder: Path, program: Path, metadata: dict[str, Any]) -> Path:
    """``folder`` with model.pt2 and model-meta.json, replacing an old one as whole as a rename allows."""
    staging = folder.with_name(f".{folder.name}.new")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    shutil.copyfile(program, staging / PROGRAM_NAME)
    (staging / METADATA_NAME).write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
    old = folder.with_name(f".{folder.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    os.replace(staging, folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder / PROGRAM_NAME


def _run_archiver(
    *,
    model_name: str,
    serialized_file: Path,
    handler: Path,
    metadata_file: Path,
    config_file: Path | None,
    export_dir: Path,
    scratch: Path,
) -> Path:
    command = [
        sys.executable,
        "-m",
        "model_archiver.model_packaging",
        "--model-name",
        model_name,
        "--version",
        MODEL_VERSION,
        "--serialized-file",
        str(serialized_file),
        "--handler",
        str(handler),
        "--extra-files",
        ",".join([str(metadata_file), *(str(m) for m in HANDLER_MODULES)]),
        "--export-path",
        str(export_dir),
        "--force",
    ]
    if config_file is not None:
        command += ["--config-file", str(config_file)]
    # The archiver stages files in $TMPDIR/<model-name>; a private TMPDIR keeps concurrent exports apart.
    env = {**os.environ, "TMPDIR": str(scratch)}
    proc = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    mar = export_dir / f"{model_name}.mar"
    if proc.returncode != 0 or not mar.is_file():
        raise ExportError(
            f"torch-model-archiver failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}".rstrip()
        )
    return mar


def export_archive(
    arch: str = DEFAULT_ARCH,
    weights: str | Path = "auto",
    out_dir: Path = Path("model_store"),
    *,
    model_name: str = "deeplabv3",
    input_size: int = DEFAULT_INPUT_SIZE,
    handler: Path = DEFAULT_HANDLER,
    config_file: Path | None = DEFAULT_CONFIG_FILE,
    torchscript_out: Path | None = None,
    parity_shapes: Sequence[tuple[int, int, int, int]] | None = None,
    seed: int = DEFAULT_SEED,
    class_names: Sequence[str] | None = None,
    program: bool = True,
) -> ExportResult:
    """Export ``arch`` with ``weights`` to ``out_dir/<model_name>.mar``, atomically replacing an old one, and
    (``program``) the ExportedProgram to ``out_dir/oip/<model_name>/``; without it, the ExportedProgram of an
    earlier export there is removed, so that ``out_dir`` never holds the artifacts of two exports.

    ``class_names`` (None: the model's own) name the classes in ``model-meta.json``; with ``random`` or
    ``imagenet-backbone`` weights they also set the number of classes, otherwise they must match it.

    Raises:
        ValueError: unknown ``arch``.
        WeightsError: the weights cannot be loaded.
        ExportError: handler/config missing, class names that do not fit the model, the TorchScript or the
            ExportedProgram parity check failed, or torch-model-archiver failed.
    """
    started = time.perf_counter()
    handler = Path(handler)
    if not handler.is_file():
        raise ExportError(f"handler not found: {handler} (pass --handler PATH)")
    missing = [str(m) for m in HANDLER_MODULES if not m.is_file()]
    if missing:
        raise ExportError(f"handler modules not found: {', '.join(missing)}")
    if config_file is not None and not Path(config_file).is_file():
        raise ExportError(f"model config not found: {config_file} (pass --config-file PATH)")

    # Seed before building so `random` weights, and hence the TorchScript file, are reproducible: from one
    # fresh process to the next (TorchScript numbers a class name it compiled before in this process).
    torch.manual_seed(seed)
    built = _build(arch, weights, class_names)
    eager = built.model.eval()
    scripted = to_torchscript(eager)
    shapes = tuple(parity_shapes or default_parity_shapes(input_size))

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=f".{model_name}-export-") as tmp:
        work = Path(tmp)
        (work / "scratch").mkdir()
        (work / "archive").mkdir()
        pt_path = work / f"{model_name}.pt"
        # Saved before it ever runs (running leaves executor state behind that changed the file's hash),
        # and the parity check runs on the file as loaded back: what ships is what is checked.
        ts_sha = _save_torchscript(scripted, pt_path)
        parity = check_parity(eager, _load_torchscript(pt_path), shapes, seed=seed)
        _check_passed("TorchScript", arch, parity, shapes)
        exported = (
            _write_program(eager, work, input_size=input_size, shapes=shapes, seed=seed, arch=arch)
            if program
            else None
        )
        metadata = build_metadata(built, input_size, ts_sha)
        meta_path = work / METADATA_NAME
        meta_path.write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
        built_mar = _run_archiver(
            model_name=model_name,
            serialized_file=pt_path,
            handler=handler,
            metadata_file=meta_path,
            config_file=Path(config_file) if config_file is not None else None,
            export_dir=work / "archive",
            scratch=work / "scratch",
        )
        mar_path = out_dir / f"{model_name}.mar"
        os.replace(built_mar, mar_path)  # same folder tree: a reader never sees half an archive
        program_folder = out_dir / OIP_FOLDER / model_name
        if exported is not None:
            program_meta = {**metadata, "program_sha256": exported.sha256}
            exported = replace(exported, path=_publish_program(program_folder, exported.path, program_meta))
        elif program_folder.exists():
            shutil.rmtree(program_folder)
            logger.warning("removed %s: the ExportedProgram of an earlier export", program_folder)
        if torchscript_out is not None:
            torchscript_out = Path(torchscript_out)
            torchscript_out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(pt_path, torchscript_out)
    seconds = time.perf_counter() - started
    logger.info(
        "wrote %s (TorchScript sha256 %s) and %s in %.1f s",
        mar_path,
        ts_sha,
        exported.path if exported is not None else "no .pt2",
        seconds,
    )
    return ExportResult(
        mar_path,
        torchscript_out,
        ts_sha,
        metadata,
        parity,
        seconds,
        exported,
    )


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Export DeepLabv3 to TorchScript + a TorchServe .mar, and an ExportedProgram (.pt2) "
        "for the OIP server",
        add_help=add_help,
    )
    parser.add_argument("--arch", default=DEFAULT_ARCH, choices=ARCHS)
    parser.add_argument(
        "--weights",
        default="auto",
        help=f"{' | '.join(WEIGHT_CHOICES)} | path to a training checkpoint or state_dict (default: auto)",
    )
    parser.add_argument("--out", type=Path, default=Path("model_store"), help="folder for <model-name>.mar")
    parser.add_argument("--model-name", default="deeplabv3")
    parser.add_argument(
        "--input-size", type=int, default=DEFAULT_INPUT_SIZE, help="shorter-side resize for serving"
    )
    parser.add_argument("--handler", type=Path, default=DEFAULT_HANDLER)
    parser.add_argument("--config-file", type=Path, default=DEFAULT_CONFIG_FILE)
    parser.add_argument("--torchscript-out", type=Path, default=None, help="also keep the .pt here")
    parser.add_argument(
        "--seed",
        type=int,
        default=DEFAULT_SEED,
        help="seeds random weights and the parity inputs: archives with different seeds differ (and so do "
        "their archive_sha256)",
    )
    parser.add_argument(
        "--class-names-file",
        type=Path,
        default=None,
        help="JSON array of class names, index 0 first (default: the model's own); with random or "
        "imagenet-backbone weights it also sets the number of classes",
    )
    parser.add_argument(
        "--parity-shapes",
        type=_parse_shapes,
        default=None,
        help="Nx3xHxW,... parity inputs (default: 1x3xSxS,2x3x241x319,1x3x97x130; S = input size)",
    )
    parser.add_argument(
        "--no-program",
        dest="program",
        action="store_false",
        help="TorchServe's archive only, no ExportedProgram (.pt2) for the OIP server: its export and check "
        "take about twice the TorchScript's time. A .pt2 an earlier export left in OUT is removed",
    )
    return parser


def _parse_shapes(text: str) -> tuple[tuple[int, int, int, int], ...]:
    shapes = []
    for item in text.split(","):
        dims = tuple(int(dim) for dim in item.lower().split("x"))
        if len(dims) != 4 or dims[1] != 3 or min(dims) < 1:
            raise argparse.ArgumentTypeError(f"bad shape {item!r}: want Nx3xHxW")
        shapes.append((dims[0], dims[1], dims[2], dims[3]))
    return tuple(shapes)


def main(args: argparse.Namespace) -> int:
    try:
        class_names = read_class_names(args.class_names_file) if args.class_names_file else None
        result = export_archive(
            args.arch,
            args.weights,
            args.out,
            model_name=args.model_name,
            input_size=args.input_size,
            handler=args.handler,
            config_file=args.config_file,
            torchscript_out=args.torchscript_out,
            parity_shapes=args.parity_shapes,
            seed=args.seed,
            class_names=class_names,
            program=args.program,
        )
    except (WeightsError, ExportError) as exc:
        logger.error("%s", exc)
        return 1
    meta = result.metadata
    print(f"archive:      {result.mar_path}")
    program = result.program
    if program is not None:
        print(f"program:      {program.path}  (ExportedProgram for the OIP server)")
    if result.torchscript_path is not None:
        print(f"torchscript:  {result.torchscript_path}")
    print(f"arch:         {meta['arch']}")
    print(f"weights:      {meta['weights']}{'  (UNTRAINED)' if meta['untrained'] else ''}")
    print(
        f"sha256:       weights {meta['sha256']}, torchscript {result.torchscript_sha256}, "
        f"program {program.sha256 if program is not None else 'not exported (--no-program)'}"
    )
    parities = [("torchscript", result.parity)]
    if program is not None:
        parities.append(("program", program.parity))
    for kind, parity in parities:
        print(
            f"parity:       {kind} max |Δlogit| {parity.max_abs_diff:.3g}, "
            f"argmax agreement {100 * parity.argmax_agreement:.4f}%"
        )
    print(f"export time:  {result.seconds:.1f} s")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(main(get_args_parser().parse_args()))
