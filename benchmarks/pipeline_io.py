"""Bytes a training run moves through KFP's artifact store and reads from the DVC remote, per step and per run.

Two sources, each named in the output:

- **artifact store** (computed from the compiled IR): every `system.Dataset` a task outputs is uploaded
  once and every task that takes one downloads it, so those bytes are the data version's size times
  (1 + consumers). The pipeline as it is now is read from a fresh compile; the pipeline before data by
  reference from `--before-ir` (an IR compiled from the earlier commit). Parameters (the reference,
  about 300 bytes) travel in KFP's metadata store, not the artifact store.
- **DVC remote** (measured): a synthetic version of `--images` files of `--image-kb` KB each (80 %
  train/, 20 % val/) is pushed to a local DVC remote, and each step that reads data materialises the
  folders the IR gives it (its `*_subdir` inputs) through dino_model.versioning.mirror, whose counters
  report the bytes and files it read. Each step starts with its own empty pod-local cache ("pod-local")
  or all steps share one claim ("shared claim"), the two cache modes of docs/pipelines.md. The numbers
  are then scaled linearly to `--target` images (file counts and bytes scale with the image count; the
  md5 listing is read once per step and is counted).

Within a step, training reads each image of its local copy once per epoch (DistributedSampler: every
index once per epoch across ranks) and an evaluation extracts features once per image; those local
reads are not remote reads and are not counted here.

    .venv/bin/python benchmarks/pipeline_io.py --before-ir /tmp/main-ir.yaml     # 20,000-image version
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

logger = logging.getLogger("pipeline_io")

READERS_OF_SUBDIR = ("train_subdir", "val_subdir", "image_subdir")


@dataclass
class StepIO:
    step: str
    artifact_store: int  # bytes of data through the artifact store (uploads + downloads)
    remote: int  # bytes read from the DVC remote
    remote_files: int


def _tasks(spec: dict, dag: dict | None = None) -> dict[str, dict]:
    found = {}
    for name, task in (dag or spec["root"]["dag"])["tasks"].items():
        component = spec["components"][task["componentRef"]["name"]]
        if "dag" in component:
            found |= _tasks(spec, component["dag"])
        else:
            found[name] = task
    return found


def dataset_traffic(spec: dict, size: int) -> dict[str, int]:
    """Per task: bytes of Dataset artifacts it uploads plus those it downloads (each Dataset = the version)."""
    traffic = {}
    for name, task in _tasks(spec).items():
        component = spec["components"][task["componentRef"]["name"]]
        outs = component.get("outputDefinitions", {}).get("artifacts", {})
        ins = component.get("inputDefinitions", {}).get("artifacts", {})
        n = sum(a["artifactType"]["schemaTitle"] == "system.Dataset" for a in [*outs.values(), *ins.values()])
        traffic[name] = n * size
    return traffic


def data_readers(spec: dict) -> dict[str, list[str]]:
    """Tasks that take the data reference, with the folders they read (their *_subdir inputs' defaults)."""
    defaults = {k: v.get("defaultValue") for k, v in spec["root"]["inputDefinitions"]["parameters"].items()}
    readers = {}
    for name, task in _tasks(spec).items():
        params = task.get("inputs", {}).get("parameters", {})
        if "data_ref" not in params:
            continue
        folders = []
        for key in READERS_OF_SUBDIR:
            if key in params:
                source = params[key].get("componentInputParameter", "").removeprefix("pipelinechannel--")
                folders.append(defaults.get(source) or params[key].get("runtimeValue", {}).get("constant"))
        readers[name] = sorted(set(folders))
    return dict(sorted(readers.items(), key=lambda item: (_artifact_inputs(_tasks(spec)[item[0]]), item[0])))


def _artifact_inputs(task: dict) -> int:
    """How late a task runs, roughly: pretraining takes no artifact, evaluations the model, export also reports."""
    return len(task.get("inputs", {}).get("artifacts", {}))


def repeated_run(spec: dict) -> set[str]:
    """Tasks a second run with the same data, config and image reuses from the cache (pipelines/cache_keys.py)."""
    from pipelines.cache_keys import Run, reused

    outputs = {"resolve-data-version": {"md5": "0" * 32 + ".dir", "git_rev": "r", "reference": "{}"},
               "quality-gate": {"Output": "deploy"}}
    hits = reused(spec, Run("run-1", {}, outputs), Run("run-2", {}, outputs))
    return {path.rsplit("/", 1)[-1] for path, hit in hits.items() if hit}


def make_version(root: Path, images: int, image_kb: int) -> tuple[Any, int]:
    """A DVC project (no git) whose data/ holds train/ and val/ of random files, pushed to a local remote."""
    from dino_model.versioning.repo import init_repo
    from dino_model.versioning.sync import snapshot

    rng = __import__("numpy").random.default_rng(0)
    n_train = images * 4 // 5
    for i in range(images):
        folder = root / "data" / ("train" if i < n_train else "val") / f"class{i % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:06d}.jpg").write_bytes(rng.bytes(image_kb * 1024))
    init_repo(root)
    version = snapshot(root)
    return version, version.size or 0


def measure(spec: dict, images: int, image_kb: int, work: Path) -> tuple[dict[str, StepIO], dict[str, StepIO], int]:
    """(pod-local per step, shared claim per step, version bytes) on the small synthetic version."""
    from dino_model.versioning.mirror import materialize
    from dino_model.versioning.reference import reference_of

    version, size = make_version(work / "repo", images, image_kb)
    ref = reference_of(version.md5, remote_url=str(work / "repo" / ".dvc-remote"), nfiles=version.nfiles,
                       size=version.size)
    pod_local, shared = {}, {}
    for step, folders in data_readers(spec).items():
        got = materialize(ref, subdirs=folders, root=work / "pods" / step)
        pod_local[step] = StepIO(step, 0, got.bytes_read, got.files_read)
        claimed = materialize(ref, subdirs=folders, root=work / "claim")
        shared[step] = StepIO(step, 0, claimed.bytes_read, claimed.files_read)
    return pod_local, shared, size


def _scaled(steps: dict[str, StepIO], factor: float) -> dict[str, StepIO]:
    return {k: StepIO(k, int(v.artifact_store * factor), int(v.remote * factor), round(v.remote_files * factor))
            for k, v in steps.items()}


def before(spec: dict, size: int, nfiles: int) -> dict[str, StepIO]:
    """The pipeline that copied the version into a Dataset: the data step pulls all of it, once."""
    steps = {name: StepIO(name, traffic, 0, 0) for name, traffic in dataset_traffic(spec, size).items() if traffic}
    data = steps.setdefault("resolve-data-version", StepIO("resolve-data-version", 0, 0, 0))
    data.remote, data.remote_files = size, nfiles
    return steps


def table(title: str, steps: dict[str, StepIO]) -> str:
    gb = 1e9
    rows = [f"{title}", f"{'step':<24}{'artifact store GB':>20}{'remote GB':>12}{'remote files':>14}"]
    for s in sorted(steps.values(), key=lambda s: s.step):
        rows.append(f"{s.step:<24}{s.artifact_store / gb:>20.2f}{s.remote / gb:>12.2f}{s.remote_files:>14,}")
    total = StepIO("run", sum(s.artifact_store for s in steps.values()), sum(s.remote for s in steps.values()),
                   sum(s.remote_files for s in steps.values()))
    rows.append(f"{'per run':<24}{total.artifact_store / gb:>20.2f}{total.remote / gb:>12.2f}"
                f"{total.remote_files:>14,}")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=400, help="images in the measured synthetic version")
    parser.add_argument("--image-kb", type=int, default=110, help="bytes per image, KB (ImageNet JPEGs: ~110)")
    parser.add_argument("--target", type=int, default=20_000, help="images of the version the table is scaled to")
    parser.add_argument("--before-ir", type=Path, help="compiled IR of the pipeline before data by reference")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from pipelines.submit import compile_pipeline

    with tempfile.TemporaryDirectory(prefix="pipeline-io-") as tmp:
        work = Path(tmp)
        os.environ.setdefault("DVC_SITE_CACHE_DIR", str(work / "dvc-site"))
        spec = next(yaml.safe_load_all(compile_pipeline(work / "ir.yaml").read_text()))
        pod_local, shared, size = measure(spec, args.images, args.image_kb, work)
    factor = args.target / args.images
    target_size = int(size * factor)
    print(f"data version: {args.target:,} images, {target_size / 1e9:.2f} GB (scaled x{factor:g} from "
          f"{args.images} measured files of {args.image_kb} KB)")
    if args.before_ir:
        old = next(yaml.safe_load_all(args.before_ir.read_text()))
        print(table("\nbefore (Dataset artifact; computed from the IR)", before(old, target_size, args.target)))
    after_store = dataset_traffic(spec, target_size)
    for steps in (pod_local, shared):
        for name, step in steps.items():
            step.artifact_store = int(after_store.get(name, 0) / factor)
    print(table("\nafter, pod-local caches (reference; remote reads measured and scaled)", _scaled(pod_local, factor)))
    print(table("\nafter, shared cache claim (reference; remote reads measured and scaled)", _scaled(shared, factor)))
    skipped = repeated_run(spec)
    again = {k: StepIO(k, 0, 0, 0) if k in skipped else v for k, v in _scaled(pod_local, factor).items()}
    print(table("\nafter, a repeated run with the same data, config and image (cache hits from the IR analysis)",
                again))
    print(f"\nartifact store bytes of data after: {sum(after_store.values())} (no Dataset artifact in the IR)")


if __name__ == "__main__":
    main()
