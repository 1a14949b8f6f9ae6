"""Export: frozen TorchScript loadable with plain torch, parity, reproducible hash, the .mar's contents."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import textwrap
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from seg_handler.image_policy import VOC_CLASSES
from seg_handler.launcher import archive_metadata
from tests.support import REPO_ROOT
from training.export import (
    METADATA_NAME,
    ExportError,
    ExportResult,
    export_archive,
    get_args_parser,
    main,
    read_class_names,
)
from training.model import BuiltModel, Provenance, SegmentationLogits, build_model

ARCH = "deeplabv3_mobilenet_v3_large"
SMALL_SHAPES = ((1, 3, 64, 64), (2, 3, 48, 72))
META_KEYS = {
    "arch",
    "weights",
    "weights_file",
    "sha256",
    "untrained",
    "class_names",
    "num_classes",
    "input_size",
    "torchscript_sha256",
    "archive_sha256",
}


@dataclass(frozen=True)
class Exported:
    result: ExportResult
    handler: Path
    config: Path
    tmp: Path


def _write_handler(folder: Path) -> Path:
    # The serving room owns seg_handler/handler.py; the archive only needs a file to pack.
    folder.mkdir(parents=True, exist_ok=True)
    handler = folder / "handler.py"
    handler.write_text("def handle(data, context):\n    return data\n")
    return handler


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    tmp = tmp_path_factory.mktemp("export")
    handler = _write_handler(tmp / "handler")
    config = REPO_ROOT / "seg_handler" / "model-config.yaml"
    result = export_archive(
        ARCH,
        "random",
        tmp / "model_store",
        handler=handler,
        config_file=config,
        torchscript_out=tmp / "deeplabv3.pt",
        parity_shapes=SMALL_SHAPES,
    )
    return Exported(result, handler, config, tmp)


def test_archive_manifest_names_model_handler_and_files(exported: Exported) -> None:
    mar = exported.result.mar_path
    assert mar == exported.tmp / "model_store" / "deeplabv3.mar"

    with zipfile.ZipFile(mar) as archive:
        names = set(archive.namelist())
        manifest = json.loads(archive.read("MAR-INF/MANIFEST.json"))
        handler = archive.read("handler.py")
        config = archive.read("model-config.yaml")

    assert names == {
        "MAR-INF/MANIFEST.json",
        "deeplabv3.pt",
        "handler.py",
        "image_policy.py",  # imported by the real handler from the archive root
        METADATA_NAME,
        "model-config.yaml",
    }
    assert manifest["model"] == {
        "modelName": "deeplabv3",
        "serializedFile": "deeplabv3.pt",
        "handler": "handler.py",
        "modelVersion": "1.0",
        "configFile": "model-config.yaml",
    }
    assert handler == exported.handler.read_bytes()
    assert config == exported.config.read_bytes()
    with zipfile.ZipFile(mar) as archive:
        assert archive.read("image_policy.py") == (REPO_ROOT / "seg_handler" / "image_policy.py").read_bytes()
    # The archive, and the OIP server's folder beside it (TorchServe loads only the archive its config names).
    assert sorted(p.name for p in mar.parent.iterdir()) == ["deeplabv3.mar", "oip"]


def test_metadata_records_untrained_random_weights(exported: Exported) -> None:
    with zipfile.ZipFile(exported.result.mar_path) as archive:
        meta = json.loads(archive.read(METADATA_NAME))
        torchscript = archive.read("deeplabv3.pt")

    assert set(meta) == META_KEYS
    assert meta["arch"] == ARCH
    assert meta["weights"] == "random" and meta["untrained"] is True
    assert meta["weights_file"] is None and meta["sha256"] is None
    assert meta["class_names"] == list(VOC_CLASSES) and meta["num_classes"] == 21
    assert meta["input_size"] == 520
    assert meta["torchscript_sha256"] == hashlib.sha256(torchscript).hexdigest()
    assert meta["archive_sha256"] == meta["torchscript_sha256"]  # the identity every answer carries
    assert meta == exported.result.metadata
    assert torchscript == (exported.tmp / "deeplabv3.pt").read_bytes()


def test_parity_is_reported_and_within_limits(exported: Exported) -> None:
    parity = exported.result.parity

    assert parity.shapes == SMALL_SHAPES
    assert parity.max_abs_diff <= 1e-4
    assert parity.argmax_agreement >= 0.9999
    assert parity.passed


@pytest.mark.slow
def test_torchscript_runs_in_a_fresh_process_without_torchvision(exported: Exported, tmp_path: Path) -> None:
    x = torch.randn(2, 3, 57, 83, generator=torch.Generator().manual_seed(7))
    torch.save(x, tmp_path / "input.pt")
    script = textwrap.dedent(
        """
        import sys, torch
        module = torch.jit.load(sys.argv[1])
        with torch.inference_mode():
            out = module(torch.load(sys.argv[2]))
        assert "torchvision" not in sys.modules, "loading the TorchScript imported torchvision"
        torch.save(out, sys.argv[3])
        """
    )
    subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            str(exported.tmp / "deeplabv3.pt"),
            str(tmp_path / "input.pt"),
            str(tmp_path / "out.pt"),
        ],
        check=True,
        timeout=120,
    )
    scripted_out = torch.load(tmp_path / "out.pt")

    torch.manual_seed(0)  # export_archive's default seed, so this is the exported model
    eager = SegmentationLogits(build_model(ARCH, weights="random").model.eval()).eval()
    with torch.inference_mode():
        eager_out = eager(x)

    assert scripted_out.shape == (2, 21, 57, 83)
    assert float((scripted_out - eager_out).abs().max()) <= 1e-4
    assert torch.equal(scripted_out.argmax(1), eager_out.argmax(1))


@pytest.mark.slow
def test_cli_rerun_overwrites_the_archive_with_the_same_torchscript_hash(
    exported: Exported, e2e_model_store: Path, tmp_path: Path
) -> None:
    # A copy of the module's store: the module's other tests read what the in-process export wrote there.
    out_dir = shutil.copytree(exported.tmp / "model_store", tmp_path / "model_store")
    mar = out_dir / "deeplabv3.mar"
    before = mar.stat().st_mtime_ns

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "training.export",
            "--arch",
            ARCH,
            "--weights",
            "random",
            "--out",
            str(out_dir),
            "--handler",
            str(exported.handler),
            "--config-file",
            str(exported.config),
            "--parity-shapes",
            "1x3x40x40",  # other parity inputs than the first export: the model's hash must not care
            "--no-program",  # and the .pt2 of the first export goes: OUT never mixes two exports
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )

    assert proc.returncode == 0, proc.stderr
    assert mar.stat().st_mtime_ns != before
    with zipfile.ZipFile(mar) as archive:
        meta = json.loads(archive.read(METADATA_NAME))
    # The same model (arch, random weights, seed) exported by another fresh process, the run's test archive
    # (other input size, parity inputs and handler): byte-identical TorchScript. Not ``exported``: it was
    # scripted in this process, whose earlier scripting (another test's) numbers its classes differently.
    same_model = archive_metadata(e2e_model_store / "deeplabv3.mar")
    assert meta["torchscript_sha256"] == same_model["torchscript_sha256"]
    assert meta["archive_sha256"] == meta["torchscript_sha256"]
    assert f"archive:      {mar}" in proc.stdout
    assert "max |Δlogit|" in proc.stdout and "argmax agreement" in proc.stdout
    assert not (out_dir / "oip" / "deeplabv3").exists()
    assert "program:" not in proc.stdout and "not exported (--no-program)" in proc.stdout


@pytest.mark.slow
def test_failed_parity_stops_before_the_archive(
    exported: Exported, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import training.export as export_module

    original = export_module.to_torchscript

    def script_another_model(model: torch.nn.Module) -> torch.jit.ScriptModule:
        torch.manual_seed(123)
        return original(build_model(ARCH, weights="random").model)

    monkeypatch.setattr(export_module, "to_torchscript", script_another_model)

    with pytest.raises(ExportError, match="parity failed"):
        export_archive(
            ARCH, "random", tmp_path / "store", handler=exported.handler, parity_shapes=SMALL_SHAPES
        )
    assert not (tmp_path / "store" / "deeplabv3.mar").exists()


# --- the parity gate, one criterion at a time ---------------------------------------------------------------

is_scripting = torch.jit.is_scripting  # type: ignore[attr-defined]  # (not in torch.jit's __all__)
PARITY_SHAPE = (1, 3, 100, 100)  # 10,000 pixels: one pixel is exactly the 0.01 % the argmax bar allows


class ScriptedDiffers(torch.nn.Module):
    """Two-class logits that its TorchScript computes differently from its eager self.

    Eager: class 1 wins every pixel by 1.0, except the first ``flips`` pixels of the first row, where it wins
    by 1e-5. Scripted: every logit moved by ``shift``; class 0 wins those ``flips`` pixels by 1e-5 (a change
    of 2e-5, far under the logit bar); ``crop`` rows fewer.
    """

    def __init__(self, *, shift: float = 0.0, flips: int = 0, crop: int = 0) -> None:
        super().__init__()
        self.shift = shift
        self.flips = flips
        self.crop = crop

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = torch.zeros(x.size(0), 2, x.size(2), x.size(3))
        logits[:, 1] = 1.0
        logits[0, 1, 0, : self.flips] = 1e-5
        if is_scripting():  # the exported file, not the checkpoint
            logits = logits + self.shift
            logits[0, 0, 0, : self.flips] = self.shift + 2e-5
            logits = logits[:, :, : x.size(2) - self.crop]
        return {"out": logits}


def export_differing(
    model: ScriptedDiffers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Path, Callable[[], ExportResult]]:
    """The model store, and an export of ``model`` (as if its checkpoint held it) into it."""
    import training.export as export_module

    built = BuiltModel(model, ARCH, ("sky", "sea"), Provenance("random", None, None, untrained=True))
    monkeypatch.setattr(export_module, "_build", lambda *_: built)
    store, handler = tmp_path / "store", _write_handler(tmp_path / "handler")
    return store, lambda: export_archive(
        ARCH, "random", store, handler=handler, parity_shapes=[PARITY_SHAPE], program=False
    )


@pytest.mark.integration
def test_parity_within_both_limits_is_exported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Logits 7e-5 apart (limit 1e-4) and one pixel of 10,000 with another class (the most allowed).
    store, export = export_differing(ScriptedDiffers(shift=5e-5, flips=1), tmp_path, monkeypatch)
    parity = export().parity
    assert parity.max_abs_diff == pytest.approx(7e-5, rel=1e-3)
    assert parity.argmax_agreement == 0.9999 and parity.passed
    assert (store / "deeplabv3.mar").is_file()


PARITY_FAILED = f"TorchScript parity failed for {ARCH}: "


@pytest.mark.parametrize(
    ("differs", "refusal"),
    [
        # Every pixel keeps its class: only the logit criterion fails.
        pytest.param(
            ScriptedDiffers(shift=2e-4),
            PARITY_FAILED + "max |Δlogit| 0.0002 (limit 0.0001), argmax agreement 1.000000 (min 0.9999)",
            id="logits-past-the-limit",
        ),
        # Logits 2e-5 apart, within the limit: only the argmax criterion fails (2 pixels of 10,000 differ).
        pytest.param(
            ScriptedDiffers(flips=2),
            PARITY_FAILED + "max |Δlogit| 2e-05 (limit 0.0001), argmax agreement 0.999800 (min 0.9999)",
            id="argmax-under-the-bar",
        ),
        pytest.param(
            ScriptedDiffers(crop=1),
            "scripted output shape (1, 2, 99, 100) != eager (1, 2, 100, 100)",
            id="another-output-shape",
        ),
    ],
)
def test_each_parity_criterion_alone_refuses_the_export(
    differs: ScriptedDiffers, refusal: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, export = export_differing(differs, tmp_path, monkeypatch)
    with pytest.raises(ExportError, match=re.escape(refusal)):
        export()
    assert not (store / "deeplabv3.mar").exists()


def test_missing_handler_is_named(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"handler not found: .*nope\.py"):
        export_archive(ARCH, "random", tmp_path, handler=tmp_path / "nope.py")


@pytest.mark.slow
def test_random_archives_with_different_seeds_have_different_identities(exported: Exported) -> None:
    other = export_archive(
        ARCH,
        "random",
        exported.tmp / "seed-1",
        handler=exported.handler,
        config_file=exported.config,
        parity_shapes=SMALL_SHAPES,
        seed=1,
        program=False,  # the identity is the TorchScript's
    )
    assert other.metadata["archive_sha256"] != exported.result.metadata["archive_sha256"]
    assert other.metadata["weights"] == "random" and other.metadata["untrained"] is True


@pytest.mark.slow
def test_class_names_file_names_and_counts_the_classes_of_random_weights(
    exported: Exported, tmp_path: Path
) -> None:
    names = ["sky", "[bold]x[/] \x1b[31mred\x1b[0m", "ok\rEVIL", "🐕‍🦺 שלום"]  # any text, even line breaks
    names_file = tmp_path / "classes.json"
    names_file.write_text(json.dumps(names), encoding="utf-8")
    args = get_args_parser().parse_args(
        [
            "--arch", ARCH, "--weights", "random", "--out", str(tmp_path / "store"),
            "--handler", str(exported.handler), "--config-file", str(exported.config),
            "--torchscript-out", str(tmp_path / "named.pt"), "--parity-shapes", "1x3x40x40",
            "--class-names-file", str(names_file), "--no-program",
        ]
    )  # fmt: skip
    assert main(args) == 0
    with zipfile.ZipFile(tmp_path / "store" / "deeplabv3.mar") as archive:
        meta = json.loads(archive.read(METADATA_NAME))
    assert meta["class_names"] == names and meta["num_classes"] == 4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated; TorchServe still runs it
        module = torch.jit.load(str(tmp_path / "named.pt"))  # type: ignore[no-untyped-call]
    with torch.inference_mode():
        assert module(torch.zeros(1, 3, 40, 40)).shape == (1, 4, 40, 40)  # a head of four classes


@pytest.mark.parametrize(
    ("content", "error"),
    [
        ('{"0": "sky"}', "JSON array of non-empty strings"),
        ("[]", "JSON array of non-empty strings"),
        ('["sky", ""]', "JSON array of non-empty strings"),
        ('["sky", 3]', "JSON array of non-empty strings"),
        ('["sky", "sea", "sky"]', "names a class more than once: 'sky'"),
        ("sky\nsea\n", "cannot read class names"),
    ],
)
def test_a_bad_class_names_file_is_refused(tmp_path: Path, content: str, error: str) -> None:
    names_file = tmp_path / "classes.json"
    names_file.write_text(content, encoding="utf-8")
    with pytest.raises(ExportError, match=error):
        read_class_names(names_file)


@pytest.mark.slow
def test_class_names_rename_the_classes_of_a_state_dict_and_must_match_them(
    exported: Exported, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    state_dict = tmp_path / "weights.pth"
    torch.save(build_model(ARCH, num_classes=3, weights="random").model.state_dict(), state_dict)
    store = tmp_path / "store"
    with pytest.raises(ExportError, match="2 class names for a model of 3 classes"):
        export_archive(ARCH, state_dict, store, handler=exported.handler, class_names=["a", "b"])
    assert not (store / "deeplabv3.mar").exists()

    renamed = export_archive(
        ARCH,
        state_dict,
        store,
        handler=exported.handler,
        config_file=exported.config,
        parity_shapes=SMALL_SHAPES[:1],
        class_names=["sky", "sea", "sand"],
        program=False,
    )
    assert renamed.metadata["class_names"] == ["sky", "sea", "sand"]  # not class_0..class_2
    assert renamed.metadata["weights"] == "state_dict"


def test_the_exported_program_sits_in_the_oip_folder_with_the_same_identity(exported: Exported) -> None:
    assert exported.result.program is not None
    program = exported.result.program.path
    folder = exported.tmp / "model_store" / "oip" / "deeplabv3"
    meta = json.loads((folder / METADATA_NAME).read_text())

    assert program == folder / "model.pt2"
    assert sorted(p.name for p in folder.iterdir()) == [METADATA_NAME, "model.pt2"]
    assert meta["program_sha256"] == hashlib.sha256(program.read_bytes()).hexdigest()
    assert meta["program_sha256"] == exported.result.program.sha256
    # One identity for both artifacts of one export: moving between servers leaves labels current.
    assert {k: v for k, v in meta.items() if k != "program_sha256"} == exported.result.metadata


def test_exported_program_parity_is_reported_and_within_limits(exported: Exported) -> None:
    assert exported.result.program is not None
    parity = exported.result.program.parity

    assert parity.shapes == SMALL_SHAPES
    assert parity.max_abs_diff <= 1e-4
    assert parity.argmax_agreement >= 0.9999


@pytest.mark.slow
def test_exported_program_runs_any_height_and_width_in_a_fresh_process_without_torchvision(
    exported: Exported, tmp_path: Path
) -> None:
    # A 4000x8 strip reaches the network as 2 rows; a batch of two as the OIP server may one day send.
    shapes = [(1, 3, 2, 128), (2, 3, 57, 83), (1, 3, 1, 1)]
    generator = torch.Generator().manual_seed(7)
    inputs = [torch.randn(shape, generator=generator) for shape in shapes]
    torch.save(inputs, tmp_path / "inputs.pt")
    script = textwrap.dedent(
        """
        import sys, torch
        module = torch.export.load(sys.argv[1]).module()
        with torch.inference_mode():
            outs = [module(x) for x in torch.load(sys.argv[2])]
        assert "torchvision" not in sys.modules, "loading the ExportedProgram imported torchvision"
        torch.save(outs, sys.argv[3])
        """
    )
    assert exported.result.program is not None
    program = exported.result.program.path
    command = [sys.executable, "-c", script, str(program), str(tmp_path / "inputs.pt")]
    subprocess.run([*command, str(tmp_path / "outs.pt")], check=True, timeout=300)
    outs = torch.load(tmp_path / "outs.pt")

    torch.manual_seed(0)  # export_archive's default seed, so this is the exported model
    eager = SegmentationLogits(build_model(ARCH, weights="random").model.eval()).eval()
    with torch.inference_mode():
        for x, out in zip(inputs, outs, strict=True):
            expected = eager(x)
            assert out.shape == expected.shape
            assert float((out - expected).abs().max()) <= 1e-4
            assert torch.equal(out.argmax(1), expected.argmax(1))
