"""The run folder: where a run lives, when it may be replaced, and what `--resume` keeps.

A run folder holds ``config.json`` (the resolved configuration and the data the run is tied to),
``metrics.jsonl``, ``loss.png``, ``checkpoints/step-*.pt`` and ``best.pt``, ``samples/step-*.png``,
``summary.json`` and ``.lock``.

One trainer at a time: `RunLock` holds an exclusive ``flock`` on ``RUN/.lock`` while training, so
a second ``ddpm-train`` on the same folder fails at once naming the holder's pid and host; the OS
drops the lock when the holder exits, however it exits.

Resuming takes the saved configuration. The user may rerun the original command with
``--resume`` appended: every option typed again is compared with the saved run. Options that do
not change what was learned so far (learning rate, duration, intervals, precision, ...) replace
the saved values; the architecture, the data options, the batch size, the seed and the quality
score's rule (`--quality-classifier`) are fixed for a run, and a different value is refused naming each option and both values. The shards are
checked against the classes and content identity saved at the start (`check_data`): other
classes are refused; new images of the same classes need ``--allow-new-data``.

A folder whose run never saved a checkpoint (a failed start) holds nothing worth keeping: a new
run may reuse it without ``--overwrite``, and ``--resume`` starts it again from step 0.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import os
import shutil
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ddpm_data.manifest import Manifest, load_manifest

from . import checkpoint as ckpt
from .codec import CodecError, from_jsonable, to_jsonable
from .config import RunConfig, TrainConfig

try:
    import fcntl
except ImportError:  # not POSIX: runs are not locked
    fcntl = None

CONFIG_NAME = "config.json"
LOCK_NAME = ".lock"
DURATION_FIELDS = ("epochs", "max_steps", "max_images")
# TrainConfig fields the data position or the initial weights depend on.
# quality_classifier: a run's quality scores must be comparable, or best-quality.pt keeps a stale pick.
FIXED_TRAIN_FIELDS = ("batch_size", "seed", "quality_classifier")
# RunConfig fields that only say where and how this process runs.
PROCESS_FIELDS = ("shards", "img_size", "out", "resume", "allow_new_data", "overwrite", "dry_run", "device",
                  "progress")
# Filesystems without flock support answer with one of these; the run then goes unlocked.
NO_LOCKING = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


class RunError(ValueError):
    """The run cannot start; the message names the flag or folder and the fix."""


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def default_run_dir(shards: Path | str) -> Path:
    from ddpm_data.remote import name_of

    return Path("runs") / f"{name_of(shards)}-{time.strftime('%Y%m%d-%H%M%S')}"


def absolute_shards(shards: Path | str) -> Path | str:
    """A local shard folder made absolute (so --resume works from any working directory); a URL
    as given (remote.as_location refuses one holding a password: config.json would keep it)."""
    from ddpm_data.remote import as_location

    location = as_location(shards)
    return location.resolve() if isinstance(location, Path) else location


def read_document(run_dir: Path) -> dict[str, Any]:
    """config.json of a run folder, as written by `write_document`."""
    path = run_dir / CONFIG_NAME
    if not path.is_file():
        raise RunError(f"{path}: missing; --out is not a run folder written by ddpm-train")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RunError(f"{path}: unreadable ({error}); start a new run with another --out") from None
    if not isinstance(document, dict) or not isinstance(document.get("run"), dict):
        raise RunError(f"{path}: not a ddpm-train config (no 'run' object); start a new run with another --out")
    return document


def run_config_from(document: dict[str, Any], path: Path) -> RunConfig:
    """The RunConfig saved in a config.json document."""
    from ddpm_data.config import AugmentConfig
    from ddpm_data.stream import ReaderConfig

    namespace = {"ReaderConfig": ReaderConfig, "AugmentConfig": AugmentConfig}
    try:
        return from_jsonable(RunConfig, document["run"], "run", namespace)
    except CodecError as error:
        raise RunError(f"{path}: {error}; fix the value or start a new run with another --out") from None


def write_document(run_dir: Path, document: dict[str, Any]) -> Path:
    """config.json, written whole to a temporary file and renamed over the old one."""
    path = run_dir / CONFIG_NAME
    temporary = path.with_name(f".{CONFIG_NAME}.tmp")
    from ddpm_data.redact import scrub

    temporary.write_text(json.dumps(scrub(document), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    temporary.replace(path)
    return path


def check_apart(run_dir: Path, shards: Path | str) -> None:
    """RunError when the run folder and a local shard folder lie one inside the other: a shard set
    holds only a build's files (a rebuild replaces the folder whole), and a run folder only a run's."""
    from ddpm_data.remote import is_url

    if is_url(shards):
        return
    shards = Path(shards).resolve()
    if run_dir == shards or shards in run_dir.parents:
        raise RunError(f"--out {run_dir}: lies inside the shard folder {shards}; a rebuild would delete it. "
                       f"Choose an --out outside it, e.g. runs/{run_dir.name}")
    if run_dir in shards.parents:
        raise RunError(f"--out {run_dir}: holds the shard folder {shards}; choose an --out apart from it")


def check_new_run_dir(run_dir: Path, overwrite: bool) -> None:
    """A new run may use an empty or missing folder or one whose run never saved a checkpoint,
    and replaces a run folder only with --overwrite; never a folder a trainer holds."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunError(f"--out {run_dir}: is a file; choose a folder")
    if not run_dir.exists():
        return
    check_unlocked(run_dir)
    if never_checkpointed(run_dir) or all(path.name == LOCK_NAME for path in run_dir.iterdir()):
        return  # a failed start, or an empty folder: nothing trained to lose
    if not overwrite:
        raise RunError(f"{run_dir}: exists; pass --resume to continue it or --overwrite to start over")
    if not (run_dir / CONFIG_NAME).is_file():
        raise RunError(f"{run_dir}: --overwrite refuses to delete a folder that is not a run "
                       f"folder (no {CONFIG_NAME}); choose another --out")


def never_checkpointed(run_dir: Path) -> bool:
    """A run folder whose start failed: config.json, but no checkpoint and no summary.json (which
    every run that trained writes at its end)."""
    return ((run_dir / CONFIG_NAME).is_file() and not ckpt.candidates(run_dir)
            and not (run_dir / "summary.json").exists())


def clear_run_dir(run_dir: Path) -> None:
    """Empty a run folder for a new run, keeping the lock file its new owner holds."""
    for path in run_dir.iterdir():
        if path.name == LOCK_NAME:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


@contextlib.contextmanager
def claim_run_dir(run_dir: Path, fresh: bool, document: dict[str, Any]) -> Iterator[None]:
    """The run folder, created if needed and locked for as long as the block runs; `fresh` empties
    it first (a new run); then config.json is written with `document` (on resume too, so the next
    --resume continues with the options in force now). When the block fails before the run saved
    any checkpoint, a folder created here is removed again: a failed start leaves nothing behind."""
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    with RunLock(run_dir):
        if fresh:
            clear_run_dir(run_dir)
        try:
            write_document(run_dir, document)
            yield
        except BaseException:
            if created and not ckpt.candidates(run_dir):
                shutil.rmtree(run_dir, ignore_errors=True)
            raise


@dataclass(frozen=True)
class Resolved:
    """A `ddpm-train` command resolved and checked against its run folder and shards, once."""

    config: RunConfig          # the options in force (the saved ones, on --resume), paths absolute
    run_dir: Path
    resume_from: Path | None   # the checkpoint to continue from; None for a new run (or one with none yet)
    manifest: Manifest         # the shards', loaded once
    data: dict[str, Any]       # data_record(manifest): what config.json and the checkpoints keep of the shards
    new_data: str | None       # --allow-new-data continuing on changed shards: what changed


def resolve(given: RunConfig) -> Resolved:
    """The run folder, the options, the checkpoint to continue from and the shards, each checked:
    the folder may be used (new) or continued (--resume: the typed options against the saved run,
    the shards against the data it started on), --img-size against the shards. Paths come back
    absolute, so a later `--resume` works from any working directory. Reads but never writes."""
    config, run_dir, resume_from, document = _resume_run(given) if given.resume else _new_run(given)
    manifest = load_manifest(config.shards)
    if config.img_size is not None and config.img_size != manifest.size:
        raise RunError(f"--img-size {config.img_size}: {config.shards} holds {manifest.size} px shards; "
                       f"pass --shards shards/{config.img_size} (build it with 'ddpm-data build --size "
                       f"{config.img_size}') or drop --img-size")
    new_data = check_data(document, manifest, run_dir, config.allow_new_data) if document is not None else None
    return Resolved(config, run_dir, resume_from, manifest, data_record(manifest), new_data)


def _resume_run(given: RunConfig) -> tuple[RunConfig, Path, Path | None, dict[str, Any]]:
    if given.out is None:
        raise RunError("--resume: needs --out RUN_DIR, the run folder to continue")
    run_dir = given.out.resolve()
    document = read_document(run_dir)
    saved = run_config_from(document, run_dir / CONFIG_NAME)
    config = resume_config(saved, document, dataclasses.replace(given, out=run_dir))
    if not given.dry_run:
        check_unlocked(run_dir)
    found = ckpt.candidates(run_dir)
    if not found and not never_checkpointed(run_dir):
        raise RunError(f"{run_dir}: no checkpoint to resume from in {ckpt.checkpoint_dir(run_dir)}; "
                       f"start over with --overwrite")
    return config, run_dir, found[0] if found else None, document


def _new_run(given: RunConfig) -> tuple[RunConfig, Path, None, None]:
    shards = shards_folder(given.shards, given.img_size)
    run_dir = (given.out or default_run_dir(shards)).resolve()
    check_apart(run_dir, shards)
    if not given.dry_run:
        check_new_run_dir(run_dir, given.overwrite)
    return dataclasses.replace(given, out=run_dir, shards=absolute_shards(shards)), run_dir, None, None


def shards_folder(shards: Path | str | None, img_size: int | None) -> Path | str:
    """--shards, or shards/<img_size> for `--img-size N` alone (the size is checked against the
    manifest when it is loaded)."""
    if shards is not None:
        return shards
    if img_size is None:
        raise RunError("--shards: required (a folder written by 'ddpm-data build'), or --img-size N "
                       "for shards/N, unless --resume")
    folder = Path("shards") / str(img_size)
    if not (folder / "manifest.json").is_file():
        raise RunError(f"--img-size {img_size}: {folder}/manifest.json missing; build it first with "
                       f"'ddpm-data build --src DATA --size {img_size}', or pass --shards FOLDER")
    return folder


def resume_config(saved: RunConfig, document: dict[str, Any], given: RunConfig) -> RunConfig:
    """The saved run, with the options typed now that may change; RunError listing every typed
    option that would change what the run is."""
    from ddpm_data.redact import is_hidden

    typed = set(given.given)
    conflicts = (_train_conflicts(saved.train, given.train, typed)
                 + _group_conflicts(saved.reader, given.reader, typed)
                 + _augment_conflicts(saved.augment, given.augment, typed)
                 + _model_conflicts(document, saved, given, typed)
                 + _size_conflicts(document, saved, given, typed))
    if conflicts:
        raise RunError(f"--resume: {given.out} was started with other options: {'; '.join(conflicts)}. "
                       f"Drop these options to continue the run, or start a new run with another --out")
    changed = {n for n in typed if n in _field_names(TrainConfig) and n not in FIXED_TRAIN_FIELDS}
    if changed & set(DURATION_FIELDS):
        changed |= set(DURATION_FIELDS)  # a new duration replaces the old one, whichever unit it used
    train = dataclasses.replace(saved.train, **{n: getattr(given.train, n) for n in changed})
    process = {n: getattr(given, n) for n in PROCESS_FIELDS if n not in ("shards", "img_size", "overwrite")}
    if given.shards is None and is_hidden(saved.shards):
        raise RunError(f"--resume: {given.out / CONFIG_NAME} keeps the shards' pipe: command without its secret "
                       f"parts ({saved.shards}); pass the command again with --shards")
    shards = absolute_shards(given.shards if given.shards is not None else saved.shards)
    return dataclasses.replace(saved, **process, overwrite=False, shards=shards, train=train,
                               given=tuple(sorted(typed)))


def _field_names(kind: Any) -> set[str]:
    return {f.name for f in dataclasses.fields(kind)}


def _mapping(value: Any) -> dict[str, Any]:
    """`value` when it is a JSON object, else {} (a hand-edited config.json may hold anything)."""
    return value if isinstance(value, dict) else {}


def _differs(name: str, now: Any, before: Any) -> str | None:
    if to_jsonable(now) == to_jsonable(before):
        return None
    if isinstance(now, bool):  # an on/off flag, as typed: --no-quality-classifier (the run has --quality-classifier)
        return f"{_switch(name, now)} (the run has {_switch(name, before)})"
    return f"{flag(name)} {_show(now)} (the run has {_show(before)})"


def _switch(name: str, on: bool) -> str:
    return flag(name) if on else "--no-" + flag(name)[2:]


def _show(value: Any) -> str:
    """As the user would type it: 0,0,1,1 for flags, `Balance`'s own text, enum values."""
    if dataclasses.is_dataclass(value) and type(value).__str__ is not object.__str__:
        return str(value)
    value = to_jsonable(value)
    if isinstance(value, list):
        return ",".join(str(int(v) if isinstance(v, bool) else v) for v in value)
    return str(value)


def _train_conflicts(saved: TrainConfig, given: TrainConfig, typed: set[str]) -> list[str]:
    return [message for name in FIXED_TRAIN_FIELDS if name in typed
            if (message := _differs(name, getattr(given, name), getattr(saved, name)))]


def _group_conflicts(saved: Any, given: Any, typed: set[str]) -> list[str]:
    """Typed fields of a config group (the reader's) that differ from the saved run."""
    if saved is None or given is None:
        return []
    own = typed & _field_names(given) - _field_names(TrainConfig) - set(PROCESS_FIELDS)
    return [message for name in sorted(own)
            if (message := _differs(name, getattr(given, name), getattr(saved, name)))]


def _augment_conflicts(saved: Any, given: Any, typed: set[str]) -> list[str]:
    """Augmentation is one recipe: when any of its options is typed, compare the whole of it."""
    if saved is None or given is None or not typed & (_field_names(given) | {"augment"}):
        return []
    return [message for name in sorted(_field_names(given))
            if (message := _differs(name, getattr(given, name), getattr(saved, name)))]


def _size_conflicts(document: dict[str, Any], saved: RunConfig, given: RunConfig, typed: set[str]) -> list[str]:
    """A typed --img-size against the size of the images the run trains on."""
    if "img_size" not in typed or given.img_size is None:
        return []
    size = _mapping(document.get("data")).get("size", saved.img_size)
    message = _differs("img_size", given.img_size, size) if size is not None else None
    return [message] if message else []


def _model_conflicts(document: dict[str, Any], saved: RunConfig, given: RunConfig,
                     typed: set[str]) -> list[str]:
    """Typed architecture options against the architecture the run resolved and trains."""
    model = _mapping(document.get("model"))
    resolved = {**_mapping(model.get("unet")), **_mapping(model.get("diffusion"))} if "unet" in model else model
    conflicts = []
    if "preset" in typed and given.model.preset != document.get("preset"):
        conflicts.append(f"--preset {given.model.preset} (the run has {document.get('preset')})")
    for name in ("aug_conditioning", "data_normalization"):
        if name in typed and (message := _differs(name, getattr(given.model, name), getattr(saved.model, name))):
            conflicts.append(message)
    for name, value in sorted(given.model.overrides.items()):
        if name in resolved and (message := _differs(name, value, resolved[name])):
            conflicts.append(message)
    return conflicts


# -- the lock -------------------------------------------------------------------------------------

class RunLock:
    """An exclusive ``flock`` on RUN/.lock while a trainer uses the folder.

    A second trainer fails at once naming the holder (pid, host); the OS drops the lock when the
    holder exits, however it exits (crash, ``kill -9``), so a leftover file never blocks a retry.
    On a filesystem without locks the run goes unlocked, with a warning.
    """

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: int | None = None

    def __enter__(self) -> "RunLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _flock(fd, self.path)
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor releases the flock
            self._fd = None


def check_unlocked(run_dir: Path) -> None:
    """RunError when a trainer holds `run_dir` now (a probe: takes and drops the lock)."""
    path = Path(run_dir) / LOCK_NAME
    if not path.is_file():
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        _flock(fd, path)
    finally:
        os.close(fd)


def _flock(fd: int, path: Path) -> None:
    if fcntl is None:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise RunError(f"{path.parent}: in use by {_holder(path)} (lock {path}); wait for that run to end "
                       f"or stop it, or choose another --out") from None
    except OSError as error:
        if error.errno not in NO_LOCKING:
            raise
        print(f"warning: {path}: the filesystem does not support locks ({error.strerror}); "
              f"make sure no other ddpm-train uses {path.parent}", file=sys.stderr, flush=True)


def _holder(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        text = ""
    return text or "another process"


# -- the data a run is tied to ----------------------------------------------------------------------

IDENTITY_FIELDS = ("size", "channels", "classes", "counts", "shards", "hdf5")


def data_record(manifest: Any) -> dict[str, Any]:
    """What config.json and every checkpoint store about the shards: folder, classes, size,
    channels, counts, and `id`, the sha256 of the manifest's content (shard list with checksums)."""
    document = manifest.to_dict()
    content = json.dumps({name: document[name] for name in IDENTITY_FIELDS}, sort_keys=True)
    return {"shards": str(manifest.root), "classes": list(manifest.classes), "size": manifest.size,
            "channels": manifest.channels, "counts": document["counts"],
            "id": hashlib.sha256(content.encode()).hexdigest()}


def check_data(document: dict[str, Any], manifest: Any, run_dir: Path, allow_new_data: bool) -> str | None:
    """RunError when the shards are not what the run in `document` (its config.json) trained on:
    other classes or image shape always; other images of the same classes unless
    `allow_new_data`. Returns a note to print when continuing on new data."""
    where = run_dir / CONFIG_NAME
    saved_classes = document.get("classes")
    if not isinstance(saved_classes, list) or not all(isinstance(c, str) for c in saved_classes):
        raise RunError(f"{where}: 'classes' must be a list of class names, got {saved_classes!r}; "
                       f"fix it or start a new run with another --out")
    now = data_record(manifest)
    if saved_classes != now["classes"]:
        raise RunError(_classes_changed(saved_classes, now["classes"], manifest.root, run_dir))
    saved = document.get("data")
    if not isinstance(saved, dict):
        return None  # a run from before data records: the classes are all that can be checked
    shape, saved_shape = (now["size"], now["channels"]), (saved.get("size"), saved.get("channels"))
    if saved_shape != shape:
        raise RunError(f"--resume: {manifest.root} holds {shape[0]} px images with {shape[1]} channel(s); "
                       f"{run_dir} trained on {saved_shape[0]} px with {saved_shape[1]}; pass the run's "
                       f"shard folder with --shards, or start a new run with another --out")
    if saved.get("id") == now["id"]:
        return None
    change = _counts_changed(saved.get("counts"), now["counts"])
    if not allow_new_data:
        raise RunError(f"--resume: {manifest.root} is not the data {run_dir} started on ({change}); pass "
                       f"the run's shard folder with --shards, or --allow-new-data to continue on these "
                       f"shards (same classes)")
    return f"continuing on new data in {manifest.root} ({change}); the data order starts afresh"


def _classes_changed(before: list[str], after: list[str], shards: Path, run_dir: Path) -> str:
    added, removed = sorted(set(after) - set(before)), sorted(set(before) - set(after))
    parts = ([f"added {', '.join(added)}"] if added else []) + ([f"removed {', '.join(removed)}"] if removed else [])
    change = "; ".join(parts) or f"order {', '.join(before)} -> {', '.join(after)}"
    return (f"--resume: the classes of {shards} changed since {run_dir} started ({change}); the run's labels "
            f"mean {', '.join(before)}, so it cannot continue on these shards (--allow-new-data takes new "
            f"images of the same classes only); rebuild the shards with the run's classes, or start a new "
            f"run with another --out")


def _counts_changed(before: Any, after: dict[str, dict[str, int]]) -> str:
    """'train 22 -> 25 images, val 2 -> 3' or, with equal counts, 'same counts, other images'."""
    changes = []
    for split in sorted(after):
        old, new = _total(before, split), sum(after[split].values())
        if old != new:
            changes.append(f"{split} {old} -> {new} images")
    return ", ".join(changes) or "same counts, other images"


def _total(counts: Any, split: str) -> int | str:
    per_class = counts.get(split) if isinstance(counts, dict) else None
    if not isinstance(per_class, dict) or not all(isinstance(n, int) for n in per_class.values()):
        return "?"
    return sum(per_class.values())
